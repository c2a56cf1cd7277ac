"""The Gauss-Newton polish after convergence (optim/polish.py), through ``marquardt.fit``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import marquardt
from marquardt.optim.polish import POLISH_MAX_PARAMETERS, polish_applies, run_polish

from .mgh import Gaussian, Osborne2, PenaltyI

TOLERANCES = {"max_iterations": 3000, "ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15}
NO_INPUT = torch.zeros(1, dtype=torch.float64)


def _gradient(problem: nn.Module) -> float:
    """‖Jᵀr‖∞ by autograd, independent of the optimizer's engine."""
    theta = problem.x.detach().clone()
    J = torch.func.jacrev(problem.residuals)(theta)
    return float((J.T @ problem.residuals(theta)).abs().max())


def _fit(problem: nn.Module, polish, **options):
    opt = marquardt.LevenbergMarquardt(problem, lambda r, _t: r, **options)
    return marquardt.fit(opt, NO_INPUT, polish=polish, **TOLERANCES)


def _cost_rounding(problem: nn.Module) -> float:
    """The polish's allowance for the cost's rounding at the problem's current x (see optim/polish.py)."""
    theta = problem.x.detach().clone()
    J = torch.func.jacrev(problem.residuals)(theta)
    r = problem.residuals(theta).detach()
    eps = torch.finfo(theta.dtype).eps
    return eps * (64 * 0.5 * float(r @ r) + 4 * float(r.abs() @ (J.abs() @ theta.abs())))


def test_the_polish_takes_osborne2s_gradient_below_minpacks():
    """Osborne 2 (11 parameters, 65 residuals) stops on ftol with ‖Jᵀr‖∞ ≈ 1e-10; Gauss-Newton steps take it
    to the rounding level, below what MINPACK (scipy's lm) reports from the same start."""
    plain, polished = Osborne2(Osborne2.x0), Osborne2(Osborne2.x0)
    before = _fit(plain, False)
    after = _fit(polished, "auto")
    assert before.reason == after.reason and before.iterations == after.iterations
    assert after.polish_steps >= 1 and before.polish_steps == 0
    assert _gradient(polished) < 1e-3 * _gradient(plain)
    assert after.cost <= before.cost + _cost_rounding(plain)
    reference = Osborne2(Osborne2.x0)
    solution = scipy.optimize.least_squares(
        lambda x: reference.residuals(torch.tensor(x)).detach().numpy(), Osborne2.x0, method="lm",
        jac=lambda x: torch.func.jacrev(reference.residuals)(torch.tensor(x)).numpy(),
        ftol=1e-15, xtol=1e-15, gtol=1e-15)
    with torch.no_grad():
        reference.x.copy_(torch.tensor(solution.x))
    assert _gradient(polished) <= _gradient(reference)
    np.testing.assert_allclose(polished.x.detach().numpy(), solution.x, rtol=1e-9)


def test_the_result_describes_the_polished_point():
    problem = Osborne2(Osborne2.x0)
    before = _fit(Osborne2(Osborne2.x0), False)
    after = _fit(problem, "auto")
    r = problem.residuals(problem.x).detach()
    assert after.cost == pytest.approx(0.5 * float(r @ r), rel=1e-14)
    assert after.loss == pytest.approx(after.cost / r.numel(), rel=1e-12)  # (a residual callable's loss: the mean)
    torch.testing.assert_close(after.x["x"], problem.x.detach())
    extra = after.nfev - before.nfev
    assert extra == after.njev - before.njev and extra >= after.polish_steps + 1


def test_no_step_is_kept_where_gauss_newton_raises_the_gradient():
    """Penalty I from 10·x₀ ends where the residual's curvature, which JᵀJ leaves out, makes the Gauss-Newton
    step raise the gradient: the point stays exactly where the fit stopped."""
    plain, polished = PenaltyI([10.0 * v for v in PenaltyI.x0]), PenaltyI([10.0 * v for v in PenaltyI.x0])
    before, after = _fit(plain, False), _fit(polished, "auto")
    assert after.polish_steps == 0
    torch.testing.assert_close(polished.x, plain.x, rtol=0, atol=0)
    assert after.nfev == before.nfev + 2  # (r and J where the fit stopped, and at one trial)


class _Exponentials(nn.Module):
    """y = a e^{−b t} + c e^{−d t} on noisy data: a fit that stops on ftol or xtol, not on the gradient."""

    def __init__(self, t: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        self.t, self.y = t, y
        self.x = nn.Parameter(torch.tensor([1.0, 0.5, 0.5, 3.0], dtype=torch.float64))

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        return x[0] * torch.exp(-x[1] * self.t) + x[2] * torch.exp(-x[3] * self.t) - self.y

    def forward(self, _inputs):
        return self.residuals(self.x)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), noise=st.sampled_from([0.0, 1e-6, 1e-3, 1e-1]),
       points=st.integers(8, 40))
def test_the_polish_never_raises_the_gradient_and_the_cost_only_by_its_rounding(seed, noise, points):
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, 4.0, points, dtype=torch.float64)
    y = 2.0 * torch.exp(-1.3 * t) + 0.7 * torch.exp(-0.2 * t)
    y = y + noise * torch.randn(points, generator=generator, dtype=torch.float64)
    plain, polished = _Exponentials(t, y), _Exponentials(t, y)
    before, after = _fit(plain, False), _fit(polished, "auto")
    assert before.reason == after.reason
    if not after.converged:
        assert after.polish_steps == 0
        return
    assert _gradient(polished) <= _gradient(plain)
    assert after.cost <= before.cost + _cost_rounding(plain)
    assert (after.polish_steps == 0) == bool(torch.equal(polished.x, plain.x))


def test_polish_true_works_beyond_the_auto_size():
    """``'auto'`` stops at POLISH_MAX_PARAMETERS; ``True`` polishes a larger linear fit to lstsq's solution."""
    n = POLISH_MAX_PARAMETERS + 6
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(3 * n, n, generator=generator, dtype=torch.float64)
    A = A * torch.logspace(0, -4, n, dtype=torch.float64)  # (columns over four decades: κ(A) ≈ 1e4)
    b = torch.randn(3 * n, generator=generator, dtype=torch.float64)

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.x = nn.Parameter(torch.zeros(n, dtype=torch.float64))

        def residuals(self, x):
            return A @ x - b

        def forward(self, _inputs):
            return self.residuals(self.x)

    auto, forced = Linear(), Linear()
    assert not polish_applies(marquardt.LevenbergMarquardt(auto, lambda r, _t: r))
    assert _fit(auto, "auto").polish_steps == 0
    result = _fit(forced, True)
    exact = torch.linalg.lstsq(A, b, driver="gelsd").solution
    assert result.converged
    assert float((forced.x.detach() - exact).norm()) <= float((auto.x.detach() - exact).norm()) + 1e-12
    assert float((forced.x.detach() - exact).norm()) <= 1e-9 * float(exact.norm())


@pytest.mark.parametrize("polish", ["yes", 1, None, "AUTO"])
def test_polish_must_be_true_false_or_auto(polish):
    problem = Osborne2(Osborne2.x0)
    before = problem.x.detach().clone()
    with pytest.raises(ValueError, match="polish"):
        _fit(problem, polish)
    assert torch.equal(problem.x.detach(), before)  # (refused before any step)


@pytest.mark.parametrize("options", [{"bounds": {"x": (-10.0, 10.0)}}, {"robust": "huber"}],
                         ids=["bounds", "robust"])
def test_polish_true_is_refused_where_the_step_would_be_wrong_and_auto_skips_it(options):
    problem = Osborne2(Osborne2.x0)
    before = problem.x.detach().clone()
    with pytest.raises(ValueError, match="polish=True"):
        _fit(problem, True, **options)
    assert torch.equal(problem.x.detach(), before)
    result = _fit(problem, "auto", **options)
    assert result.polish_steps == 0 and math.isfinite(result.cost)


def test_the_cost_allowance_follows_the_residuals_rounding_not_only_the_costs():
    """Gaussian from 100·x₀ stops where each residual is a difference of terms near 0.4 and Σr² ≈ 1e-8: the
    Gauss-Newton step lowers ‖Jᵀr‖∞ twenty-fold while the cost moves by 5e-13 relative, far beyond its
    last digits but within the rounding the residuals carry. The step is kept."""
    problem = Gaussian([100.0 * v for v in Gaussian.x0])
    plain = Gaussian([100.0 * v for v in Gaussian.x0])
    before, after = _fit(plain, False), _fit(problem, "auto")
    assert after.polish_steps >= 1
    assert _gradient(problem) < 0.1 * _gradient(plain)
    assert after.cost - before.cost > 64 * torch.finfo(torch.float64).eps * before.cost  # (beyond the last digits)
    assert after.cost <= before.cost + _cost_rounding(plain)


def test_a_step_toward_a_maximum_is_not_kept_though_the_gradient_falls():
    """r(x) = sin x from x = 1.2: the Gauss-Newton step −tan x lands at −1.372, near the maximum of ½ sin²x at
    −π/2, where |g| = |sin x cos x| is lower (0.19 against 0.34) but the cost is higher (0.480 against 0.434).
    The cost test rejects it."""

    class Sine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.x = nn.Parameter(torch.tensor([1.2], dtype=torch.float64))

        def forward(self, _inputs):
            return torch.sin(self.x)

    problem = Sine()
    opt = marquardt.LevenbergMarquardt(problem, lambda r, _t: r)
    done = run_polish(opt, (NO_INPUT,), None, max_steps=5)
    assert done.steps == 0 and done.cost_ratio == 1.0 and done.evaluations == 2
    assert float(problem.x) == 1.2
    x1 = 1.2 - math.tan(1.2)  # (the rejected trial, as the docstring says)
    assert abs(math.sin(x1) * math.cos(x1)) < abs(math.sin(1.2) * math.cos(1.2))
    assert math.sin(x1) ** 2 > math.sin(1.2) ** 2


def test_a_network_fit_on_inputs_and_targets_is_polished_too():
    """loss='mse' on (x, y) batches (10 parameters): the polish evaluates the same batch and lowers the gradient
    that ``fit`` reports, never raising the cost beyond its rounding."""
    torch.manual_seed(0)
    x = torch.linspace(-2.0, 2.0, 40, dtype=torch.float64).unsqueeze(1)
    y = torch.sin(x) + 0.05 * torch.randn(40, 1, dtype=torch.float64)

    def network() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double()

    results = {}
    for polish in (False, "auto"):
        opt = marquardt.LevenbergMarquardt(network(), "mse")
        results[polish] = marquardt.fit(opt, x, y, polish=polish, max_iterations=500)
    before, after = results[False], results["auto"]
    assert before.converged and after.converged and before.iterations == after.iterations
    assert float(after.grad.abs().max()) <= float(before.grad.abs().max())
    assert after.polish_steps == 0 or float(after.grad.abs().max()) < float(before.grad.abs().max())
    assert after.cost <= before.cost * (1 + 1e-12)
