"""Bounds: the solution equals scipy's bounded least_squares, every iterate is feasible, the active set and the
projection follow their definitions, and bad bounds are refused by name."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import marquardt
from marquardt import LevenbergMarquardt
from marquardt.policy.bounds import Box
from tests.models import Exponential, exponential_data, residuals, sine_data, sine_mlp

optimize = pytest.importorskip("scipy.optimize")
TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-14, max_iterations=300)


def _scipy_bounded(t, y, x0, lower, upper):
    def f(p):
        return p[0] * np.exp(-p[1] * t.numpy()) + p[2] - y.numpy()

    return optimize.least_squares(f, x0, bounds=(lower, upper), method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15)


@pytest.mark.parametrize("bounds,start", [
    ({"c": (0.6, None)}, (1.0, 0.5, 0.6)),                              # c held at its lower bound
    ({"a": (None, 2.0), "b": (0.0, 0.9)}, (1.0, 0.5, 0.0)),             # two upper bounds active
    ({"b": (1.5, 3.0)}, (1.0, 1.5, 0.0)),                               # started on the bound
    ({"a": (0.0, 10.0), "b": (0.0, 10.0), "c": (-1.0, 1.0)}, (1.0, 0.5, 0.0)),  # none active at the solution
    ({"c": (torch.tensor(0.55, dtype=torch.float64), torch.tensor(2.0))}, (1.0, 0.5, 0.6)),  # tensor ends
])
def test_the_solution_equals_scipys_bounded_least_squares(bounds, start):
    t, y = exponential_data(60)
    result = marquardt.fit(LevenbergMarquardt(Exponential(*start), residuals, bounds=bounds), t, y, **TIGHT)
    lower = [float(bounds[k][0]) if k in bounds and bounds[k][0] is not None else -np.inf for k in "abc"]
    upper = [float(bounds[k][1]) if k in bounds and bounds[k][1] is not None else np.inf for k in "abc"]
    reference = _scipy_bounded(t, y, list(start), lower, upper)
    ours = np.array([float(result.x[k]) for k in "abc"])
    np.testing.assert_allclose(ours, reference.x, rtol=1e-6, atol=1e-9)
    assert result.cost == pytest.approx(reference.cost, rel=1e-9)
    assert result.converged


def test_every_iterate_is_feasible_with_momentum_line_search_and_geodesic():
    x, y = sine_data(80, dtype=torch.float64)
    model = sine_mlp(6).double()
    with torch.no_grad():
        model[0].weight.clamp_(-0.3, 0.3)
    bounds = {"0.weight": (-0.3, 0.3), "2.bias": (None, torch.tensor([0.05], dtype=torch.float64))}
    with torch.no_grad():
        model[2].bias.clamp_(max=0.05)
    opt = LevenbergMarquardt(model, "mse", bounds=bounds, geodesic=True, line_search="log")
    held, first = 0, None
    for _ in range(25):
        info = opt.step(x, y)
        first = info.loss_before if first is None else first
        assert float(model[0].weight.abs().max()) <= 0.3 and float(model[2].bias.max()) <= 0.05
        held += int(float(model[0].weight.abs().max()) == 0.3)
    assert held > 0  # the bounds were reached and held
    assert info.loss_after < 0.5 * first  # and it still trains


def test_the_projected_gradient_is_what_gtol_tests():
    """At a bounded solution the full gradient does not vanish, the free part does: gtol fires."""
    t, y = exponential_data(60)
    # (gtol above the rounding floor of the free cosine, which is CPU-dependent: 6e-9 on one Xeon)
    result = marquardt.fit(LevenbergMarquardt(Exponential(1.0, 0.5, 0.6), residuals, bounds={"c": (0.6, None)}), t,
                           y, ftol=0.0, xtol=0.0, gtol=1e-7, max_iterations=200)
    assert result.reason == "gtol" and float(result.x["c"]) == 0.6
    assert abs(float(result.grad[2])) > 1e-3  # the held parameter's gradient points out of the box


def test_the_active_set_and_the_projection_follow_their_definitions():
    class System:
        def __init__(self, g):
            self.g = g

        def set_gradient(self, g):
            self.g = g

    lower = torch.tensor([0.0, 0.0, -1.0, -torch.inf], dtype=torch.float64)
    upper = torch.tensor([1.0, 1.0, 1.0, torch.inf], dtype=torch.float64)
    box = Box(lower, upper)
    theta = torch.tensor([0.0, 1.0, 1.0, 5.0], dtype=torch.float64)
    system = System(torch.tensor([2.0, 3.0, -1.0, 4.0], dtype=torch.float64))
    box.hold_active(system, theta)
    # θ₀ at its lower bound with g > 0: held; θ₁ at its upper bound with g > 0: descent moves it inside, free;
    # θ₂ at its upper bound with g < 0: held; θ₃ unbounded
    assert box.held.tolist() == [True, False, True, False]
    assert system.g.tolist() == [0.0, 3.0, 0.0, 4.0]
    d = box.damping(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert d.tolist() == [4e12, 2.0, 4e12, 4.0]
    step = box.clip(theta, torch.tensor([-1.0, 0.5, 0.5, -9.0], dtype=torch.float64))
    assert step.tolist() == [0.0, 0.0, 0.0, -9.0]  # held: 0; θ₁ + 0.5 clipped to 1; θ₃ unbounded
    assert box.clip(theta, torch.tensor([0.0, -0.25, 0.0, 1.0], dtype=torch.float64)).tolist() == [0, -0.25, 0, 1]


def test_without_active_bounds_the_steps_are_the_unbounded_ones():
    t, y = exponential_data(40)
    bounded = LevenbergMarquardt(Exponential(), residuals, bounds={"a": (-100.0, 100.0)})
    free = LevenbergMarquardt(Exponential(), residuals)
    for _ in range(5):
        assert bounded.step(t, y).loss_after == free.step(t, y).loss_after


@pytest.mark.parametrize("bounds,error,message", [
    ({"d": (0.0, 1.0)}, ValueError, r"bounds: 'd' is not a trainable parameter of the model \(its parameters: a, "
                                    r"b, c\)"),
    ({"a": (2.0, 1.0)}, ValueError, r"bounds\['a'\]: the lower bound exceeds the upper bound"),
    ({"a": (1.5, None)}, ValueError, r"bounds\['a'\]: the parameter's start value lies outside its bounds"),
    ({"a": 1.0}, TypeError, r"bounds\['a'\]: expected \(lower, upper\), got 1.0"),
    ({"a": ("0", None)}, TypeError, r"bounds\['a'\]: each end must be a number, a tensor or None, got str"),
    ({"a": (float("nan"), None)}, ValueError, r"bounds\['a'\]: a bound is NaN"),
    ({"a": (torch.zeros(3), None)}, ValueError, r"bounds\['a'\]: shape \(3,\) does not broadcast to the "
                                                r"parameter's \(\)"),
    ([("a", (0, 1))], TypeError, r"bounds: expected a dict \{parameter name: \(lower, upper\)\}, got list"),
])
def test_bad_bounds_are_refused_by_name(bounds, error, message):
    with pytest.raises(error, match=message):
        LevenbergMarquardt(Exponential(1.0, 0.5, 0.0), residuals, bounds=bounds)


def test_bounds_on_a_network_weight_broadcast_per_entry():
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]]))
    upper = torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64)  # per input column, broadcast over rows
    opt = LevenbergMarquardt(copy.deepcopy(model), "mse", bounds={"weight": (None, upper)})
    x = torch.randn(40, 3, dtype=torch.float64)
    y = x @ torch.tensor([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64).T
    for _ in range(20):
        opt.step(x, y)
    weight = opt.layout.params[0]
    assert bool((weight <= upper).all())
    torch.testing.assert_close(weight[0], upper)  # the unconstrained optimum (2, 2, 2) lies outside
