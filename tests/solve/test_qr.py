"""The QR form (solve/qr.py): every solve against the float64 normal equations where they are well conditioned, the
Gauss-Newton step against an SVD least-squares solution where they are not, the Cholesky system that turns to QR
when its factor says the normal equations lose accuracy, and a fit that 'auto' rescues that way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import marquardt
from marquardt.solve.choose import SolverChooser, SolverSettings
from marquardt.solve.primal import PrimalSystem
from marquardt.solve.qr import QR_MAX_PARAMETERS, GuardedPrimalSystem, QRSystem
from marquardt.solve.system import Problem
from marquardt.types.layout import ParameterLayout

CPU = torch.device("cpu")


def filled(cls, J, rho, alpha=0.5, d=None, chunks=2):
    n = J.shape[1]
    system = cls(n, alpha, torch.float64, CPU)
    for rows, residuals in zip(J.tensor_split(chunks), rho.tensor_split(chunks)):
        system.add(rows, residuals)
    system.finalize()
    system.set_damping(d if d is not None else torch.ones(n, dtype=torch.float64))
    return system


def ill_conditioned(m, n, condition, seed=0):
    """J = U diag(σ) Vᵀ with σ from 1 down to 1/condition, and residuals not in J's range."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    sigma = torch.logspace(0, -np.log10(condition), n, dtype=torch.float64)
    return U @ torch.diag(sigma) @ V.T, torch.randn(m, generator=g, dtype=torch.float64)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 9), lam=st.floats(1e-6, 1e3), alpha=st.floats(0.01, 10),
       chunks=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_every_solve_is_the_normal_equations_solution(m, n, lam, alpha, chunks, seed):
    """With λ > 0 and any shape (fewer rows than parameters too), each solve equals (αJᵀJ + λD²)⁻¹ of its
    right-hand side computed in float64 directly."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(m, n, generator=g, dtype=torch.float64)
    rho = torch.randn(m, generator=g, dtype=torch.float64)
    d = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    system = filled(QRSystem, J, rho, alpha, d, chunks=min(chunks, m))
    H = alpha * J.T @ J + lam * torch.diag(d)
    rhs = torch.randn(n, generator=g, dtype=torch.float64)
    r = torch.randn(m, generator=g, dtype=torch.float64)
    step, ok = system.lm_step(lam)
    assert ok
    torch.testing.assert_close(step, torch.linalg.solve(H, -alpha * J.T @ rho), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(system.solve(lam, rhs)[0], torch.linalg.solve(H, rhs), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(system.solve_rows(lam, r)[0], torch.linalg.solve(H, alpha * J.T @ r), rtol=1e-9,
                               atol=1e-11)
    torch.testing.assert_close(system.g, alpha * J.T @ rho)
    torch.testing.assert_close(system.diagonal(), alpha * (J * J).sum(0))
    torch.testing.assert_close(system.quadratic(rhs), float(alpha * (J @ rhs) @ (J @ rhs)))


def test_an_external_gradient_is_solved_with_the_same_factor():
    J, rho = ill_conditioned(9, 4, 10.0)
    system = filled(QRSystem, J, rho)
    g = torch.arange(1.0, 5.0, dtype=torch.float64)
    system.set_gradient(g)
    H = 0.5 * J.T @ J + 0.2 * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(system.lm_step(0.2)[0], torch.linalg.solve(H, -g))


@pytest.mark.parametrize("condition", [1e4, 1e9, 1e11])
def test_the_gauss_newton_step_keeps_its_accuracy_where_cholesky_loses_it(condition):
    """At λ = 0 the step is J's least-squares solution; QR's error grows like κ(J)·ε, the normal equations' like
    κ(J)²·ε (at 1e9 and beyond they fail or lose every digit)."""
    J, rho = ill_conditioned(30, 6, condition)
    reference = torch.from_numpy(np.linalg.lstsq(J.numpy(), -rho.numpy(), rcond=None)[0])
    qr_step, ok = filled(QRSystem, J, rho, alpha=1.0).lm_step(0.0)
    assert ok
    error = float((qr_step - reference).norm() / reference.norm())
    assert error <= 100 * condition * torch.finfo(torch.float64).eps
    if condition >= 1e9:
        primal_step, primal_ok = filled(PrimalSystem, J, rho, alpha=1.0).lm_step(0.0)
        assert not primal_ok or float((primal_step - reference).norm() / reference.norm()) > 1e3 * error


def test_a_rank_deficient_gauss_newton_step_is_reported_failed():
    J = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]], dtype=torch.float64)
    system = filled(QRSystem, J, torch.ones(3, dtype=torch.float64))
    assert not system.lm_step(0.0)[1]
    assert system.lm_step(1e-3)[1]  # (damped, the same system is regular)


def test_the_guarded_system_stays_cholesky_while_the_factor_is_accurate():
    J, rho = ill_conditioned(20, 5, 1e3)
    guarded, plain = filled(GuardedPrimalSystem, J, rho), filled(PrimalSystem, J, rho)
    for lam in (0.0, 1e-3, 1.0):
        assert torch.equal(guarded.lm_step(lam)[0], plain.lm_step(lam, keep_factor=True)[0])
    assert guarded.form == "primal"


def test_the_guarded_verdict_is_estimated_once_per_factor_and_follows_the_damping(monkeypatch):
    """The trust region solves twice at each λ: the condition estimate runs once per factor. A new damping
    vector at the same λ is a new matrix, judged again: κ(J) = 1e7 with d = 1 at λ = 1 is well conditioned;
    with d = 1e-20 it is κ(JᵀJ) = 1e14 again, and the system turns to QR."""
    J, rho = ill_conditioned(20, 5, 1e7)
    guarded = filled(GuardedPrimalSystem, J, rho)
    estimates = []
    norm = torch.linalg.matrix_norm
    monkeypatch.setattr(torch.linalg, "matrix_norm", lambda *a, **k: estimates.append(1) or norm(*a, **k))
    guarded.scaled_step_norm(1.0)
    guarded.scaled_step_slope(1.0)
    assert guarded.form == "primal" and len(estimates) == 2  # (‖U‖_F and ‖U⁻¹‖_F, once)
    guarded.set_damping(torch.full((5,), 1e-20, dtype=torch.float64))
    guarded.lm_step(1.0)
    assert guarded.form == "qr"


@pytest.mark.parametrize("condition", [1e7, 1e10])
def test_the_guarded_system_turns_to_qr_past_the_condition_limit(condition):
    """κ(J) = 1e7 is κ(JᵀJ) = 1e14, past the 1e12 limit: the step is the QR system's from then on."""
    J, rho = ill_conditioned(20, 5, condition)
    guarded, qr = filled(GuardedPrimalSystem, J, rho), filled(QRSystem, J, rho)
    step, ok = guarded.lm_step(0.0)
    assert ok and guarded.form == "qr"
    assert torch.equal(step, qr.lm_step(0.0)[0])
    rhs = torch.ones(5, dtype=torch.float64)
    assert torch.equal(guarded.solve(1.0, rhs)[0], qr.solve(1.0, rhs)[0])


def test_auto_keeps_rows_for_small_problems_only():
    layout = ParameterLayout.of(torch.nn.Linear(3, 1))

    def planned(solver, parameters, distributed=False):
        problem = Problem(parameters=parameters, rows=500, samples=500, outputs_per_sample=1, dtype=torch.float64,
                          device=CPU, distributed=distributed)
        return SolverChooser(SolverSettings(solver=solver, memory_budget=2**30), layout).plan(problem).candidate.system

    assert planned("auto", QR_MAX_PARAMETERS) is GuardedPrimalSystem
    many_rows = Problem(parameters=5, rows=10**8, samples=10**8, outputs_per_sample=1, dtype=torch.float64,
                        device=CPU)  # (the rows would need GBs: the plain primal form, not block-diagonal)
    assert SolverChooser(SolverSettings(memory_budget=2**29), layout).plan(many_rows).candidate.system is PrimalSystem
    assert planned("auto", QR_MAX_PARAMETERS + 1) is PrimalSystem
    assert planned("auto", 5, distributed=True) is PrimalSystem
    assert planned("primal", 5) is PrimalSystem
    assert planned("qr", 5) is QRSystem


def test_qr_refuses_to_sum_over_ranks():
    class TwoRanks:
        active = True

    system = QRSystem(2, 1.0, torch.float64, CPU)
    with pytest.raises(ValueError, match="solver='qr'"):
        system.reduce(TwoRanks())


class Linear(torch.nn.Module):
    """θ ↦ Jθ for a fixed J whose columns have equal norms and κ(J) = 1e10 (column scaling cannot help)."""

    def __init__(self, J: torch.Tensor) -> None:
        super().__init__()
        self.J = J
        self.theta = torch.nn.Parameter(torch.zeros(J.shape[1], dtype=torch.float64))

    def forward(self, rows):
        return self.J[rows] @ self.theta


def linear_fit(**options):
    J, y = ill_conditioned(40, 6, 1e10, seed=3)
    J = J / J.norm(dim=0)
    model = Linear(J)
    opt = marquardt.LevenbergMarquardt(model, lambda out, target: out - target, momentum=None, **options)
    result = marquardt.fit(opt, torch.arange(40), y, max_iterations=100)
    reference = np.linalg.lstsq(J.numpy(), y.numpy(), rcond=None)[0]
    return result, float(np.abs(model.theta.detach().numpy() - reference).max() / np.abs(reference).max())


def test_auto_fits_an_ill_conditioned_linear_model_to_the_svd_solution():
    """solver='auto' ends at numpy's SVD least-squares solution and says the QR form solved the steps where the
    normal equations lost accuracy; solver='primal' (the normal equations only) ends far from it."""
    result, error = linear_fit(lambda_rule="trust_region")
    assert result.converged
    assert "qr" in {info.form for info in result.history}
    assert error < 1e-5
    _, primal_error = linear_fit(lambda_rule="trust_region", solver="primal")
    assert primal_error > 100 * error
