"""The flat parameter vector: order, views, all-or-none writes, and the skipped rewrite of the same θ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from marquardt.types.layout import ParameterLayout


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    model[0].bias.requires_grad_(False)  # frozen: not part of θ
    return model


def test_layout_order_views_and_round_trip():
    model = _model()
    layout = ParameterLayout.of(model)
    assert layout.names == ["0.weight", "2.weight", "2.bias"] and layout.numel == 6 + 2 + 1
    theta = layout.get_flat()
    torch.testing.assert_close(theta, torch.cat([model[0].weight.reshape(-1), model[2].weight.reshape(-1),
                                                 model[2].bias]).detach())
    new = torch.arange(9, dtype=torch.float64)
    layout.set_flat(new)
    torch.testing.assert_close(layout.get_flat(), new)
    views = layout.as_dict(new)
    assert views["2.weight"].shape == (1, 2) and float(views["2.bias"]) == 8.0


def test_set_flat_refuses_a_wrong_shape_and_writes_nothing():
    layout = ParameterLayout.of(_model())
    before = layout.get_flat()
    with pytest.raises(ValueError, match=r"theta: expected shape \(9,\)"):
        layout.set_flat(torch.zeros(8, dtype=torch.float64))
    torch.testing.assert_close(layout.get_flat(), before)


def test_the_same_theta_is_written_again_after_the_parameters_changed():
    model = _model()
    layout = ParameterLayout.of(model)
    theta = torch.ones(9, dtype=torch.float64)
    layout.set_flat(theta)
    with torch.no_grad():
        model[2].bias.add_(5.0)  # changed in place: the version counter moves
    layout.set_flat(theta)  # so the same tensor is written again
    assert float(model[2].bias) == 1.0
    with torch.no_grad():
        model[0].weight.copy_(torch.zeros(2, 3))
    layout.set_flat(theta)
    assert bool((model[0].weight == 1.0).all())


def test_mixed_dtypes_and_no_trainable_parameters_are_refused():
    with pytest.raises(ValueError, match="no trainable parameters"):
        ParameterLayout.of(nn.Linear(2, 2).requires_grad_(False))
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="share one dtype"):
        ParameterLayout.of(mixed)
