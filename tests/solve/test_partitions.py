"""Block partitions (layer, unit, fixed groups): each is a partition of the parameters, and the unit blocks
pair each weight row with its own bias entry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from marquardt.solve.block import fit_to_budget, make_blocks
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


class KernelAndBias(nn.Module):
    """A 2-D parameter not named 'weight' next to a top-level bias: they are not a layer's rows and bias."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(2, 3))
        self.bias = nn.Parameter(torch.zeros(2))


def test_only_a_weight_is_paired_with_its_bias():
    assert as_sets(make_blocks("unit", ParameterLayout.of(KernelAndBias()))) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_layer_blocks_follow_the_innermost_module():
    model = nn.Sequential(nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1)), nn.Linear(1, 1))
    # 0.0.weight 0, 0.0.bias 1, 0.1.weight 2, 0.1.bias 3, 1.weight 4, 1.bias 5
    assert as_sets(make_blocks("layer", ParameterLayout.of(model))) == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize("kind, words", [
    (0, "blocks: a group size must be >= 1, got 0"),
    ("rows", "blocks: expected 'layer', 'unit' or a group size (int), got 'rows'"),
])
def test_unknown_partitions_are_refused(kind, words):
    with pytest.raises(ValueError) as refused:
        make_blocks(kind, ParameterLayout.of(nn.Linear(2, 2)))
    assert str(refused.value) == words


def test_fitting_to_a_budget():
    """Σ n_b² · elt against the budget: layers that fit exactly stay whole; otherwise the largest is split into
    its units until it fits; a layer of units that still does not fit is refused with both figures."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))  # layers of 16 and 5 parameters
    layout = ParameterLayout.of(model)
    layers = make_blocks("layer", layout)
    exact = (16**2 + 5**2) * 8
    assert as_sets(fit_to_budget(layers, layout, exact, 8)) == as_sets(layers)
    split = fit_to_budget(layers, layout, exact - 8, 8)  # the 16-parameter layer becomes 4 units of 4
    assert sorted(len(b) for b in split) == [4, 4, 4, 4, 5]
    with pytest.raises(ValueError) as refused:
        fit_to_budget(layers, layout, 2**20 // 1000, 2**20 // 100)
    assert str(refused.value) == (
        f"block-diagonal curvature needs {(4 * 16 + 25) * (2**20 // 100) / 2**20:.1f} MiB (largest block 5 "
        f"parameters) but memory_budget is {(2**20 // 1000) / 2**20:.1f} MiB; raise memory_budget or use "
        "blocks=<group size>")
