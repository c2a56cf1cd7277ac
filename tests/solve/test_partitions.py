"""Block partitions (layer, unit, fixed groups): each is a partition of the parameters, and the unit blocks
pair each weight row with its own bias entry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from marquardt.solve.block import make_blocks
from marquardt.types.layout import ParameterLayout


class BiasOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3))


class WrongBias(nn.Module):
    """A bias that does not match the weight's rows: it must not be paired with them."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, 3))
        self.bias = nn.Parameter(torch.zeros(5))


MODELS = {
    "bare linear": lambda: nn.Linear(3, 2),
    "mlp with layer norm": lambda: nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 1, bias=False)),
    "conv": lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)),
    "bias only": lambda: nn.Sequential(nn.Linear(2, 2), BiasOnly()),
    "mismatched bias": lambda: WrongBias(),
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ["layer", "unit", 1, 3, 7])
def test_blocks_partition_the_parameters(model, kind):
    layout = ParameterLayout.of(MODELS[model]())
    blocks = make_blocks(kind, layout)
    assert all(b.numel() > 0 for b in blocks)
    assert torch.equal(torch.cat(blocks).sort().values, torch.arange(layout.numel))


def as_sets(blocks):
    return sorted(sorted(int(i) for i in b) for b in blocks)


@pytest.mark.parametrize("model, expected", [
    # weight [2, 3] at 0..5, bias at 6..7: row j with bias[j]
    ("bare linear", [[0, 1, 2, 6], [3, 4, 5, 7]]),
    # 0.weight 0..3, 0.bias 4..5, LayerNorm weight 6..7 (one block: 1-D), its bias 8..9 (alone), 2.weight 10..11
    ("mlp with layer norm", [[0, 1, 4], [2, 3, 5], [6, 7], [8, 9], [10, 11]]),
    ("bias only", [[0, 1, 4], [2, 3, 5], [6, 7, 8]]),
    ("mismatched bias", [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9, 10]]),
])
def test_unit_blocks(model, expected):
    assert as_sets(make_blocks("unit", ParameterLayout.of(MODELS[model]()))) == expected


def test_layer_and_group_blocks():
    layout = ParameterLayout.of(MODELS["bare linear"]())
    assert as_sets(make_blocks("layer", layout)) == [[0, 1, 2, 3, 4, 5], [6, 7]]
    assert as_sets(make_blocks(3, layout)) == [[0, 1, 2], [3, 4, 5], [6, 7]]
