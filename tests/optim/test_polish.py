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
from marquardt.optim import polish as polish_module
from marquardt.optim.polish import POLISH_MAX_PARAMETERS, polish_applies, run_polish

from .mgh import (
    BrownAlmostLinear,
    FreudensteinRoth,
    Gaussian,
    HelicalValley,
    Osborne2,
    PenaltyI,
    Trigonometric,
    minpack,
)

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


def _residual_rounding(problem: nn.Module) -> torch.Tensor:
    """|r(x + p) − r(x) − J p| for 16-ulp probes p (all signs positive, and alternating), the larger of the
    two residual by residual: what is left of so small a change is the residuals' rounding."""
    theta = problem.x.detach().clone()
    J = torch.func.jacrev(problem.residuals)(theta)
    r = problem.residuals(theta).detach()
    ulps = 16 * torch.finfo(theta.dtype).eps * theta.abs()
    signs = torch.tensor([(-1.0) ** j for j in range(theta.numel())], dtype=theta.dtype)
    return torch.maximum(*[(problem.residuals(theta + p).detach() - r - J @ p).abs() for p in (ulps, ulps * signs)])


def _cost_rounding(problem: nn.Module, measured: bool = True) -> float:
    """The polish's allowance for the cost's rounding at the problem's current x (see optim/polish.py); without
    the residuals' measured rounding when ``measured`` is False."""
    theta = problem.x.detach().clone()
    J = torch.func.jacrev(problem.residuals)(theta)
    r = problem.residuals(theta).detach()
    eps = torch.finfo(theta.dtype).eps
    allowance = eps * (64 * 0.5 * float(r @ r) + 4 * float(r.abs() @ (J.abs() @ theta.abs())))
    return allowance + (4 * float(r.abs() @ _residual_rounding(problem)) if measured else 0.0)


def _minpack_gradient(problem_type, x0) -> tuple[float, np.ndarray]:
    """‖Jᵀr‖∞ where MINPACK (scipy's lm) stops from x0, and its x."""
    reference = problem_type(x0)
    solution = minpack(reference)
    with torch.no_grad():
        reference.x.copy_(torch.tensor(solution.x))
    return _gradient(reference), solution.x


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
    assert extra == after.njev - before.njev + 2  # (the two rounding probes evaluate r alone)
    assert after.njev - before.njev >= after.polish_steps + 1


def test_newton_steps_take_over_where_gauss_newton_raises_the_gradient(monkeypatch):
    """Penalty I from 10·x₀ ends where the residual's curvature, which JᵀJ leaves out, makes the Gauss-Newton
    step raise the gradient. Without Newton steps the point stays exactly where the fit stopped; with them the
    gradient falls below MINPACK's from the same start, and the point is the minimiser to 1e-11: by symmetry
    every xᵢ = c, with c the root of ∂(½Σr²)/∂xᵢ = 10⁻⁵(c − 1) + 2c(10c² − 1/4) = 20c³ − (1/2 − 10⁻⁵)c − 10⁻⁵
    near 0.158 (MINPACK's x is 1e-8 away, relatively)."""
    x0 = [10.0 * v for v in PenaltyI.x0]
    plain, gauss_newton_only, polished = PenaltyI(x0), PenaltyI(x0), PenaltyI(x0)
    before = _fit(plain, False)
    with monkeypatch.context() as patch:
        patch.setattr(polish_module, "NEWTON_MAX_PARAMETERS", 0)
        alone = _fit(gauss_newton_only, "auto")
    assert alone.polish_steps == 0
    torch.testing.assert_close(gauss_newton_only.x, plain.x, rtol=0, atol=0)
    assert alone.nfev == before.nfev + 4  # (r and J where the fit stopped, two rounding probes, one trial)
    after = _fit(polished, "auto")
    assert after.polish_steps >= 1
    n = len(x0)
    assert after.nfev - before.nfev >= 4 + 2 * n + 1  # (a Newton step's Hessian: 2n gradients)
    minpack_gradient, _ = _minpack_gradient(PenaltyI, x0)
    assert _gradient(polished) < minpack_gradient < _gradient(plain)
    assert after.cost <= before.cost + _cost_rounding(plain)
    roots = np.roots([20.0, 0.0, -(0.5 - 1e-5), -1e-5])
    c = float(min(roots[np.isreal(roots)].real, key=lambda root: abs(root - 0.158)))
    np.testing.assert_allclose(polished.x.detach().numpy(), np.full(n, c), rtol=1e-11)


@pytest.mark.parametrize("x0", [FreudensteinRoth.x0, [10.0 * v for v in FreudensteinRoth.x0]], ids=["x0", "10x0"])
def test_newton_steps_converge_where_the_gauss_newton_iteration_crawls(x0):
    """Freudenstein-Roth's local minimum (Σr² = 48.98) has a large residual; the fit stops with ‖Jᵀr‖∞ near
    1e-7, as MINPACK does; the Newton polish takes it to the rounding level."""
    plain, polished = FreudensteinRoth(x0), FreudensteinRoth(x0)
    before, after = _fit(plain, False), _fit(polished, "auto")
    minpack_gradient, minpack_x = _minpack_gradient(FreudensteinRoth, x0)
    assert after.polish_steps >= 1
    assert _gradient(polished) < 1e-3 * min(minpack_gradient, _gradient(plain))
    assert after.cost <= before.cost + _cost_rounding(plain)
    np.testing.assert_allclose(polished.x.detach().numpy(), minpack_x, rtol=1e-6)


def test_the_newton_step_is_minus_the_inverse_hessian_times_the_gradient():
    """The central-difference Hessian of the exact gradient against autograd's Hessian of ½‖r‖² (Osborne 2
    near its minimiser, 11 parameters, positive definite there): the steps agree to the difference's truncation
    error."""
    problem = Osborne2(Osborne2.x0)
    _fit(problem, False)
    with torch.no_grad():
        problem.x.mul_(1.0 + 1e-3 * torch.linspace(-1.0, 1.0, 11, dtype=torch.float64))  # (a gradient to step on)
    theta = problem.x.detach().clone()

    def gradient(t: torch.Tensor) -> torch.Tensor:
        return torch.func.jacrev(problem.residuals)(t).T @ problem.residuals(t)

    H = torch.func.hessian(lambda t: 0.5 * (problem.residuals(t) ** 2).sum())(theta)
    assert float(torch.linalg.eigvalsh(H).min()) > 0
    exact = -torch.linalg.solve(H, gradient(theta))
    step = polish_module._newton_step(gradient, theta, gradient(theta))
    torch.testing.assert_close(step, exact, rtol=1e-6, atol=1e-6 * float(exact.abs().max()))


def test_a_newton_step_leaves_directions_of_negative_curvature_alone():
    """½(x₀² − x₁²) at (1, 1): the saddle's Newton step would go to (0, 0); without the negative-curvature
    direction it is (−1, 0)."""
    theta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    step = polish_module._newton_step(lambda t: t * torch.tensor([1.0, -1.0], dtype=t.dtype), theta,
                                      theta * torch.tensor([1.0, -1.0], dtype=theta.dtype))
    torch.testing.assert_close(step, torch.tensor([-1.0, 0.0], dtype=torch.float64))


def test_the_cost_allowance_includes_the_residuals_measured_rounding(monkeypatch):
    """The trigonometric function from 10·x₀ stops at its local minimum (Σr² = 2.8e-5) with ‖Jᵀr‖∞ ≈ 5e-10.
    Each residual is n − Σ cos xⱼ + ..., a difference of terms near 10, so it carries rounding near 1e-15:
    the Newton step that takes the gradient to the rounding level moves the cost by more than its last digits
    and the θ-rounding term allow, but by less than the residuals' rounding does. It is kept; without the
    measured term it is not."""
    x0 = [10.0 * v for v in Trigonometric.x0]
    plain, polished, unmeasured = Trigonometric(x0), Trigonometric(x0), Trigonometric(x0)
    before, after = _fit(plain, False), _fit(polished, "auto")
    assert after.polish_steps >= 1
    assert after.cost - before.cost > _cost_rounding(plain, measured=False)
    assert after.cost <= before.cost + _cost_rounding(plain)
    minpack_gradient, _ = _minpack_gradient(Trigonometric, x0)
    assert _gradient(polished) < minpack_gradient < _gradient(plain)
    with monkeypatch.context() as patch:
        patch.setattr(polish_module, "RESIDUAL_NOISE_FACTOR", 0)
        assert _fit(unmeasured, "auto").polish_steps == 0


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
    The cost test rejects it. The Newton step that follows finds negative curvature (cos 2x < 0) and so no
    step: the point stays."""

    class Sine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.x = nn.Parameter(torch.tensor([1.2], dtype=torch.float64))

        def forward(self, _inputs):
            return torch.sin(self.x)

    problem = Sine()
    opt = marquardt.LevenbergMarquardt(problem, lambda r, _t: r)
    done = run_polish(opt, (NO_INPUT,), None, max_steps=5)
    assert done.steps == 0 and done.cost_ratio == 1.0
    assert done.evaluations == 1 + 2 + 1 + 2 + 1  # (start, probes, Gauss-Newton trial, Hessian, Newton trial)
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


def test_a_gradient_at_its_rounding_level_ends_the_polish_before_any_trial():
    """Osborne 2, polished until a polish keeps no step: there ‖Jᵀr‖∞ is within maxⱼ Σᵢ |Jᵢⱼ|(ε|rᵢ| + νᵢ), and the
    polish evaluates r and J where it stands and r at the two probes, tries no step and leaves the point."""
    problem = Osborne2(Osborne2.x0)
    assert _fit(problem, "auto").polish_steps >= 1
    for _ in range(3):
        polished_x = problem.x.detach().clone()
        again = run_polish(marquardt.LevenbergMarquardt(problem, lambda r, _t: r), (NO_INPUT,), None, max_steps=10)
        if again.steps == 0:
            break
    assert (again.steps, again.evaluations, again.jacobian_evaluations) == (0, 3, 1)
    assert torch.equal(problem.x.detach(), polished_x)
    theta = problem.x.detach().clone()
    J = torch.func.jacrev(problem.residuals)(theta)
    r = problem.residuals(theta).detach()
    level = J.abs().T @ (torch.finfo(theta.dtype).eps * r.abs() + _residual_rounding(problem))
    assert _gradient(problem) <= float(level.max())


def test_a_zero_residual_is_polished_with_the_rounding_of_each_point_it_reaches(monkeypatch):
    """The helical valley from 100·x₀ ends its fit at Σr² ≈ 6e-85. Each Gauss-Newton step then cuts ‖r‖ by about
    ε, and the residuals' rounding with it: measured again at each such point (compared as norms: Σr² underflows
    to 0 from the 8th step on), ν lets the polish go on until r is exactly 0, as MINPACK ends. Such steps do not
    count against the ten of ``max_steps``, so it takes more than ten. With ν kept from where the fit stopped (the
    ratio mutated to 0), the rounding-level stop ends it after one step, at ‖Jᵀr‖∞ above 1e-60; with every step
    counted (the mutation SHRINKING_MAX_STEPS = 10), it stops short of 0."""
    def polished(ratio: float = 0.5, most: int = polish_module.SHRINKING_MAX_STEPS) -> tuple[float, int]:
        monkeypatch.setattr(polish_module, "REMEASURE_COST_RATIO", ratio)
        monkeypatch.setattr(polish_module, "SHRINKING_MAX_STEPS", most)
        problem = HelicalValley(HelicalValley.x0)
        with torch.no_grad():
            problem.x.mul_(100)
        result = _fit(problem, "auto")
        return _gradient(problem), result.polish_steps

    gradient, steps = polished()
    stale_gradient, stale_steps = polished(ratio=0.0)
    capped_gradient, capped_steps = polished(most=10)
    minpack_gradient, _ = _minpack_gradient(HelicalValley, [100.0 * v for v in HelicalValley.x0])
    assert gradient == 0.0 <= minpack_gradient and steps > 10
    assert stale_gradient > 1e-60 and stale_steps < steps
    assert capped_gradient > 0.0 and capped_steps == 10


def test_a_gradient_at_its_rounding_level_is_polished_on_where_the_model_removes_the_residual(monkeypatch):
    """Brown's almost-linear function from x₀ stops a few ulps from its zero at (1, …, 1), with ‖Jᵀr‖∞ below its
    rounding level. The Gauss-Newton model there predicts a zero residual, and its step lands exactly on the
    zero (r = 0, below MINPACK's Σr² of about 2e-29 from the same start). With the model's prediction mutated
    away, the rounding-level stop keeps the point, its gradient not 0."""
    problem, unpredicted = BrownAlmostLinear(BrownAlmostLinear.x0), BrownAlmostLinear(BrownAlmostLinear.x0)
    assert _fit(problem, "auto").polish_steps >= 1
    assert float((problem.residuals(problem.x) ** 2).sum()) == 0.0 and _gradient(problem) == 0.0
    monkeypatch.setattr(polish_module._Point, "model_halves_the_cost", lambda self, step: False)
    assert _fit(unpredicted, "auto").polish_steps == 0
    assert _gradient(unpredicted) > 0.0
    minpack_gradient, _ = _minpack_gradient(BrownAlmostLinear, BrownAlmostLinear.x0)
    assert minpack_gradient > 0.0  # (so the polish takes this start from above MINPACK's gradient to below it)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=1.0, max_value=10.0), min_size=1, max_size=8),
       st.integers(min_value=-300, max_value=300))
def test_the_residual_norm_does_not_underflow(mantissas, exponent):
    """The polish compares ‖r‖ where Σr² underflows (below about 1e-154 per entry): its norm equals math.hypot's,
    which scales, on vectors from 1e-300 to 1e301."""
    values = [m * 10.0 ** exponent for m in mantissas]
    assert polish_module._scaled_norm(torch.tensor(values, dtype=torch.float64)) == pytest.approx(
        math.hypot(*values), rel=1e-13, abs=0.0)
