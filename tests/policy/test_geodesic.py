"""Geodesic acceleration: the second directional derivative against central differences, T&S's test."""

from __future__ import annotations

import torch

from marquardt.curvature.second_order import second_directional_derivative
from marquardt.policy.geodesic import acceptable
from marquardt.types.layout import ParameterLayout


def test_geodesic_second_derivative_matches_central_differences():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ELU(), torch.nn.Linear(8, 3)).double()
    layout = ParameterLayout.of(model)
    x = torch.randn(5, 2, dtype=torch.float64)
    theta = layout.get_flat()
    v = torch.randn_like(theta)
    f = lambda t: torch.func.functional_call(model, layout.as_dict(t), (x,))  # noqa: E731
    z_vv = second_directional_derivative(f, theta, v)
    h = 1e-4
    fd = (f(theta + h * v) - 2 * f(theta) + f(theta - h * v)) / h**2
    torch.testing.assert_close(z_vv, fd, rtol=1e-5, atol=1e-5)


def test_acceptance_ratio():
    assert acceptable(torch.ones(4), 0.1 * torch.ones(4), 0.75)
    assert not acceptable(torch.ones(4), 0.5 * torch.ones(4), 0.75)
    assert not acceptable(torch.zeros(4), torch.zeros(4), 0.75)
    assert not acceptable(torch.ones(4), torch.full((4,), float("nan")), 0.75)


def test_the_acceptance_ratio_is_inclusive():
    v = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert acceptable(v, torch.tensor([0.375, 0.0], dtype=torch.float64), alpha=0.75)  # 2‖a‖/‖v‖ = α exactly
    assert not acceptable(v, torch.tensor([0.376, 0.0], dtype=torch.float64), alpha=0.75)
