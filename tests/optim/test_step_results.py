"""Every field of the StepResult that step() returns, compared whole on steps whose outcome is known in advance."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from marquardt import LevenbergMarquardt
from tests.models import Exponential, exponential_data, residuals


def _zero_model() -> nn.Linear:
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    return model


def _fields(result) -> dict:
    return dataclasses.asdict(result)


def test_a_step_at_an_exact_minimum_does_no_work_and_says_so():
    model = _zero_model()
    x = torch.randn(5, 3, dtype=torch.float64)
    opt = LevenbergMarquardt(model, "mse", lambda_init=0.25)
    result = opt.step(x, torch.zeros(5, 2, dtype=torch.float64))
    assert _fields(result) == dict(
        loss_before=0.0, loss_after=0.0, accepted=False, reason="zero_gradient", lam=0.25, multiplier=0.0,
        attempts=0, forward_passes=1, jacobian_passes=1, solves=0, form="primal", engine=opt.objective.engine.name,
        momentum_used=False, geodesic_used=False, grad_norm_inf=0.0, step_norm=0.0, theta_norm=0.0,
        predicted_reduction=None, model_reduction_bound=None, step_bound=None, gradient_cosine=None, curvature_samples=5,
        cg_iterations=None,
        converged=None,
        notes=[])
    state = opt.state_dict()["state"][0]
    assert (state["step"], state["solves"], state["lam"]) == (1, 0, 0.25)


def test_a_step_from_a_non_finite_loss_does_no_work_and_keeps_lambda():
    t, y = exponential_data(20)
    model = Exponential(a=1e308, b=-5.0)  # the loss overflows to inf
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    opt = LevenbergMarquardt(model, residuals, lambda_init=0.5)
    result = opt.step(t, y)
    fields = _fields(result)
    assert not math.isfinite(fields.pop("grad_norm_inf"))
    assert fields == dict(
        loss_before=float("inf"), loss_after=float("inf"), accepted=False, reason="not_finite", lam=0.5,
        multiplier=0.0, attempts=0, forward_passes=1, jacobian_passes=1, solves=0, form="primal",
        engine=opt.objective.engine.name, momentum_used=False, geodesic_used=False, step_norm=0.0,
        theta_norm=float(torch.linalg.vector_norm(theta, dtype=torch.float64)), predicted_reduction=None,
        model_reduction_bound=None, step_bound=None, gradient_cosine=None, curvature_samples=None,  # a residual callable: no batch samples to count
        cg_iterations=None, converged=None,
        notes=["loss or gradient not finite at the current parameters; no step taken"])
    assert opt.state_dict()["state"][0]["lam"] == 0.5


def test_theta_norm_is_taken_in_float64():
    model = nn.Linear(1, 1)  # float32 parameters whose norm float32 cannot hold
    with torch.no_grad():
        model.weight.fill_(3e38)
        model.bias.fill_(3e38)
    opt = LevenbergMarquardt(model, "mse")
    result = opt.step(torch.zeros(4, 1), torch.full((4, 1), 3e38))
    assert result.reason == "zero_gradient" and result.theta_norm > 4e38
    assert result.theta_norm == float(torch.linalg.vector_norm(torch.tensor([3e38, 3e38]), dtype=torch.float64))


def test_an_accepted_step_counts_its_work():
    t, y = exponential_data(30)
    opt = LevenbergMarquardt(Exponential(), residuals, momentum=None)
    result = opt.step(t, y)
    assert (result.accepted, result.reason, result.attempts, result.solves, result.jacobian_passes) == (
        True, "downhill", 1, 1, 1)
    assert result.multiplier == 1.0 and result.loss_after < result.loss_before
    assert result.step_norm > 0.0 and result.cg_iterations is None and result.curvature_samples is None


def test_new_targets_on_the_same_inputs_are_a_new_batch():
    """Mini-batch detection looks at the targets too: the λ floor for changing batches applies."""
    x = torch.randn(40, 3, dtype=torch.float64)
    opt = LevenbergMarquardt(nn.Linear(3, 1).double(), "mse", lambda_init=1e-3, lambda_min_minibatch=0.5)
    first = opt.step(x, torch.randn(40, 1, dtype=torch.float64))
    assert first.lam < 0.5 and not opt.state_dict()["state"][0]["minibatch"]
    second = opt.step(x, torch.randn(40, 1, dtype=torch.float64))
    assert second.lam >= 0.5 and opt.state_dict()["state"][0]["minibatch"]


def test_the_step_norm_is_that_of_the_stored_step_in_float64():
    from tests.models import sine_data, sine_mlp

    x, y = sine_data(60)  # float32: a norm accumulated in float32 would differ in its last bits
    opt = LevenbergMarquardt(sine_mlp(12), "mse")
    for _ in range(3):
        info = opt.step(x, y)
        step = opt.state_dict()["state"][0]["s_prev"]
        assert info.accepted and step.dtype == torch.float32
        assert info.step_norm == float(torch.linalg.vector_norm(step, dtype=torch.float64))
        assert info.step_norm != float(torch.linalg.vector_norm(step)) or info.step_norm == 0.0


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()
        self.unused = nn.Parameter(torch.ones(2, dtype=torch.float64))

    def forward(self, x):
        return self.body(x)


def test_subsampled_steps_count_the_gradient_pass_and_leave_unused_parameters_alone():
    from tests.models import sine_data

    x, y = sine_data(40, dtype=torch.float64)
    full = LevenbergMarquardt(WithUnused(), "mse", geodesic=False, engine="functorch", max_attempts=1)
    sub = LevenbergMarquardt(WithUnused(), "mse", geodesic=False, engine="functorch", max_attempts=1,
                             curvature_samples=10)
    a, b = full.step(x, y), sub.step(x, y)
    assert b.curvature_samples == 10 and b.forward_passes == a.forward_passes + 1  # + the gradient pass
    assert torch.equal(sub.model.unused, torch.ones(2, dtype=torch.float64))
    assert b.loss_before == pytest.approx(a.loss_before, rel=1e-12)
