"""The scaled trust-region λ rule against Moré (1978) / MINPACK lmpar: the step it picks has the radius's length,
the radius moves as the gain ratio says, and the hard MGH starts it was built for are solved as MINPACK does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import marquardt
from marquardt.policy.lam import LambdaBounds, TrustRegionRule
from marquardt.solve.primal import PrimalSystem
from tests.optim.mgh import Meyer, Osborne1, minpack

DEFAULT = LambdaBounds()


def _system(seed: int, m: int, n: int, column_scale: float) -> PrimalSystem:
    """A primal system ½‖Jδ + r‖² with columns of very different sizes, d = diag(JᵀJ)."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(m, n, generator=g, dtype=torch.float64) * torch.logspace(0, column_scale, n, dtype=torch.float64)
    r = torch.randn(m, generator=g, dtype=torch.float64)
    system = PrimalSystem(n, 1.0, torch.float64, torch.device("cpu"))
    system.add(J, r)
    system.finalize()
    system.set_damping(system.diagonal().clone())
    return system


def _scaled_norm(system: PrimalSystem, lam: float) -> float:
    delta, ok = system.lm_step(lam)
    assert ok
    return float(torch.linalg.vector_norm(delta * system.d.sqrt()))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 8), extra=st.integers(0, 12),
       column_scale=st.floats(0.0, 4.0), fraction=st.floats(1e-4, 3.0))
def test_the_chosen_step_has_the_radius_length_or_is_the_gauss_newton_step(seed, n, extra, column_scale, fraction):
    system = _system(seed, n + extra, n, column_scale)
    gauss_newton = _scaled_norm(system, 0.0)
    radius = fraction * gauss_newton
    rule = TrustRegionRule()
    lam, nu = rule.choose(1.0, radius, system, torch.zeros(n, dtype=torch.float64), first=False)
    assert nu == radius
    if gauss_newton <= 1.1 * radius:
        assert lam == 0.0
    else:
        assert lam > 0.0
        assert abs(_scaled_norm(system, lam) - radius) <= 0.1 * radius * (1 + 1e-9)
    assert rule.step_norm == pytest.approx(_scaled_norm(system, lam), rel=1e-9)


def test_the_first_radius_is_factor_times_the_scaled_start_then_at_most_the_first_step():
    system = _system(0, 12, 3, 1.0)
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    scaled_theta = float(torch.linalg.vector_norm(system.d.sqrt() * theta))
    gauss_newton = _scaled_norm(system, 0.0)
    small = TrustRegionRule(factor=1e-3 * gauss_newton / scaled_theta)
    lam, nu = small.choose(1.0, 2.0, system, theta, first=True)
    assert lam > 0 and nu == pytest.approx(min(1e-3 * gauss_newton, small.step_norm), rel=1e-12)
    large = TrustRegionRule(factor=100.0)
    lam, nu = large.choose(1.0, 2.0, system, theta, first=True)
    assert lam == 0.0 and nu == pytest.approx(gauss_newton, rel=1e-12)  # min(100‖Dθ₀‖, ‖Dδ_GN‖)
    at_origin = TrustRegionRule(factor=1e-6)
    _, nu = at_origin.choose(1.0, 2.0, system, torch.zeros(3, dtype=torch.float64), first=True)
    assert nu <= 1e-6 * (1 + 1e-9)  # ‖Dθ₀‖ = 0: Δ₀ = factor


@pytest.mark.parametrize("rho,lam,expected", [
    (0.1, 1.0, (2.0, 0.5 * min(3.0, 10 * 1.5))),  # poor: shrink to half of min(Δ, 10‖Dδ‖)
    (0.5, 1.0, (1.0, 3.0)),  # fair: unchanged
    (0.8, 1.0, (0.5, 2 * 1.5)),  # good: twice the step's length
    (0.5, 0.0, (0.0, 2 * 1.5)),  # a Gauss-Newton step inside the region: twice its length
])
def test_the_radius_follows_the_gain_ratio(rho, lam, expected):
    rule = TrustRegionRule()
    rule.step_norm = 1.5
    assert rule.accepted(lam, 3.0, rho, DEFAULT) == pytest.approx(expected)
    assert rule.rejected(lam, 3.0, DEFAULT) == pytest.approx((2 * lam, 0.5 * min(3.0, 15.0)))
    rule.step_norm = 0.01
    assert rule.rejected(1.0, 3.0, DEFAULT)[1] == pytest.approx(0.05)  # a short step shrinks Δ to ½·10‖Dδ‖


def test_a_bad_factor_is_refused_by_name():
    with pytest.raises(ValueError, match="trust_region_factor"):
        marquardt.LevenbergMarquardt(Meyer(Meyer.x0), lambda r, _t: r, lambda_rule="trust_region",
                                     trust_region_factor=-1.0)


def _osborne1_canonical(x: np.ndarray) -> np.ndarray:
    """Osborne 1's two exponential terms (x₂, x₄) and (x₃, x₅) may swap: ordered by their rates."""
    terms = sorted([(x[3], x[1]), (x[4], x[2])])
    return np.array([x[0], terms[0][1], terms[1][1], terms[0][0], terms[1][0]])


@pytest.mark.parametrize("make,scale,canonical", [(Meyer, 1.0, np.asarray), (Osborne1, 100.0, _osborne1_canonical)],
                         ids=["meyer", "osborne1_100x0"])
def test_the_hard_starts_reach_minpacks_minimiser(make, scale, canonical):
    problem = make([scale * v for v in make.x0])
    reference = minpack(make([scale * v for v in make.x0]))
    opt = marquardt.LevenbergMarquardt(problem, lambda r, _t: r, lambda_rule="trust_region", momentum=None)
    with np.errstate(all="ignore"):
        result = marquardt.fit(opt, torch.zeros(1, dtype=torch.float64), max_iterations=3000, ftol=1e-15,
                               xtol=1e-15, gtol=1e-20)
    with torch.no_grad():
        f = float((problem.residuals(problem.x) ** 2).sum())
    assert f == pytest.approx(problem.f_star[0], rel=1e-8), result.reason
    np.testing.assert_allclose(canonical(problem.x.detach().numpy()), canonical(reference.x), rtol=1e-6)
    assert math.isfinite(result.loss)


class _SingularBelow:
    """A system whose solves fail below λ = ``edge`` (A + λD² singular to working precision there, as for a
    rank-deficient J and a tiny λ), counting the λ the search asks about."""

    def __init__(self, system: PrimalSystem, edge: float) -> None:
        self.system, self.edge, self.asked = system, edge, []
        self.g, self.d = system.g, system.d

    def scaled_step_norm(self, lam: float) -> float | None:
        self.asked.append(lam)
        return None if lam < self.edge else self.system.scaled_step_norm(lam)

    def scaled_step_slope(self, lam: float) -> float:
        return self.system.scaled_step_slope(lam)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6), edge_exponent=st.floats(-30.0, 2.0),
       beyond=st.floats(1.2, 1e6), previous=st.floats(-3.0, 3.0))
def test_a_radius_past_the_edge_of_solvable_steps_gets_the_longest_step_that_solves(seed, n, edge_exponent, beyond,
                                                                                     previous):
    """The radius asks for a step longer than any λ whose solve succeeds: the search returns a λ at or above the
    edge (its step is solved, and ``step_norm`` is its length), within a factor 2 of the edge where it found it,
    instead of stepping back and forth across the edge and returning a λ that fails (which cost a rejected attempt
    and a second search in every such iteration of Bard from 10·x₀)."""
    system = _system(seed, n + 3, n, 1.0)
    edge = 10.0 ** edge_exponent * float(system.d.max())
    radius = beyond * _scaled_norm(system, edge)
    guarded = _SingularBelow(system, edge)
    rule = TrustRegionRule()
    lam = rule._lmpar(guarded, radius, system.d.sqrt(), edge * 10.0 ** previous)
    if all(asked < edge for asked in guarded.asked):  # (the budget of solves ended below the edge: nothing solved)
        assert rule.step_norm is None and len(guarded.asked) == TrustRegionRule.ITERATIONS + 1
        return
    assert lam >= edge
    assert rule.step_norm == pytest.approx(_scaled_norm(system, lam), rel=1e-9)
    for i, asked in enumerate(guarded.asked):  # a short step solved within a factor 2 of a failure ends the search
        failed_before = [earlier for earlier in guarded.asked[:i] if earlier < edge]
        if asked >= edge and failed_before and asked <= 2.0 * max(failed_before):
            if _scaled_norm(system, asked) < 0.9 * radius:
                assert i == len(guarded.asked) - 1 and lam == asked


@pytest.mark.parametrize("seed", range(5))
def test_a_search_out_of_iterations_after_a_failed_solve_returns_the_last_lambda_it_solved(monkeypatch, seed):
    """Two solves: the first, at 4× the edge, is short of the radius; the Newton step from it lands below the edge,
    where the second solve fails. The search returns the λ it solved (with its ``step_norm``), not the next guess
    after the failure, whose solve nobody has tried."""
    monkeypatch.setattr(TrustRegionRule, "ITERATIONS", 2)
    system = _system(seed, 7, 3, 1.0)
    radius = 0.99 * _scaled_norm(system, 0.0)
    edge = float(torch.linalg.vector_norm(system.g / system.d.sqrt())) / radius / 8.0  # (4× the edge < λ's bound)
    guarded = _SingularBelow(system, edge)
    rule = TrustRegionRule()
    lam = rule._lmpar(guarded, radius, system.d.sqrt(), 4.0 * edge)
    assert guarded.asked[1] == 4.0 * edge and guarded.asked[2] < edge  # (λ = 0, the solve, the failure)
    assert lam == 4.0 * edge and rule.step_norm == pytest.approx(_scaled_norm(system, lam), rel=1e-12)


@pytest.mark.parametrize("radius", [0.0, 5e-324])
def test_a_radius_halved_to_nothing_asks_for_no_step_and_never_divides_by_zero(radius):
    """Δ = 0 (halved past the smallest float) or a subnormal Δ: a finite λ at which no step is tried or the step is
    as short as Δ allows, never a ZeroDivisionError."""
    system = _system(3, 7, 3, 1.0)
    lam, nu = TrustRegionRule().choose(1.0, radius, system, torch.zeros(3, dtype=torch.float64), first=False)
    assert math.isfinite(lam) and lam > 0
    assert nu == radius


def test_a_fit_at_the_loss_rounding_floor_stops_with_precision():
    """The trigonometric function from 10·x₀ reaches a point where no step lowers the loss at working precision,
    while tolerances of 1e-15 still ask for more: every step is accepted unchanged and the radius halves. The fit
    stops with 'precision' (MINPACK's info 6-7) once the step is below θ's rounding, with the loss MINPACK reaches."""
    from tests.optim.mgh import more_problems

    problem = dict(more_problems())["Trigonometric"]()
    with torch.no_grad():
        problem.x.mul_(10)
    reference = minpack(problem)
    opt = marquardt.LevenbergMarquardt(problem, lambda r, _t: r, solver="qr")
    result = marquardt.fit(opt, torch.zeros(1, dtype=torch.float64), max_iterations=3000, ftol=1e-15, xtol=1e-15,
                           gtol=1e-20)
    assert (result.reason, result.status, result.converged) == ("precision", 6, True)
    last = result.history[-1]
    assert last.accepted and last.step_norm <= 4 * 2.0**-52 * last.theta_norm
    assert result.cost == pytest.approx(reference.cost, rel=1e-9)
