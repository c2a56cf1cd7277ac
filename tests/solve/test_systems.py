"""The dual (Woodbury) solve equals the primal one; both build A and g as the formula says."""

from __future__ import annotations

import pytest
import torch

from marquardt.policy.damping import MaxDiagonal
from marquardt.solve.dual import DualSystem
from marquardt.solve.primal import PrimalSystem


@pytest.mark.parametrize("m,n", [(5, 30), (20, 50), (1, 3)])
def test_dual_equals_primal(m, n):
    torch.manual_seed(m)
    J = torch.randn(m, n, dtype=torch.float64)
    rho = torch.randn(m, dtype=torch.float64)
    d = torch.rand(n, dtype=torch.float64) + 0.1
    alpha = 1.0 / 7
    primal = PrimalSystem(n, alpha, torch.float64, torch.device("cpu"))
    dual = DualSystem(n, alpha, torch.float64, torch.device("cpu"))
    for part in (slice(0, m // 2), slice(m // 2, m)) if m > 1 else (slice(0, 1),):
        primal.add(J[part], rho[part])
        dual.add(J[part], rho[part])
    primal.finalize()
    dual.finalize()
    torch.testing.assert_close(primal.A, alpha * J.T @ J)
    torch.testing.assert_close(primal.g, alpha * J.T @ rho)
    torch.testing.assert_close(dual.g, primal.g)
    torch.testing.assert_close(dual.diagonal(), primal.diagonal())
    primal.set_damping(d)
    dual.set_damping(d)
    for lam in (1e-6, 0.3, 100.0):
        x_p, ok_p = primal.lm_step(lam)
        x_d, ok_d = dual.lm_step(lam)
        assert ok_p and ok_d
        expected = -torch.linalg.solve(alpha * J.T @ J + lam * torch.diag(d), alpha * J.T @ rho)
        # tiny λ on a rank-m matrix: condition number ~1/λ, so allow for rounding accordingly
        tol = dict(rtol=1e-8, atol=1e-10) if lam > 1e-3 else dict(rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(x_p, expected, **tol)
        torch.testing.assert_close(x_d, expected, **tol)
    s = torch.randn(n, dtype=torch.float64)
    assert dual.quadratic(s) == pytest.approx(primal.quadratic(s), rel=1e-10)


def test_max_diagonal_update_never_decreases():
    sys = PrimalSystem(3, 1.0, torch.float64, torch.device("cpu"))
    sys.add(torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    d = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    MaxDiagonal().update(d, sys)
    torch.testing.assert_close(d, torch.tensor([1.0, 0.5, 4.0], dtype=torch.float64))


@pytest.mark.parametrize("system_cls,m,n", [(PrimalSystem, 30, 8), (DualSystem, 6, 20)])
def test_kept_factor_gives_the_same_solves(system_cls, m, n):
    torch.manual_seed(1)
    J = torch.randn(m, n, dtype=torch.float64)
    rho = torch.randn(m, dtype=torch.float64)
    d = torch.rand(n, dtype=torch.float64) + 0.1
    results = []
    for keep in (False, True):
        system = system_cls(n, 0.5, torch.float64, torch.device("cpu"))
        system.add(J, rho)
        system.finalize()
        system.set_damping(d)
        step, ok = system.lm_step(0.7, keep_factor=keep)
        assert ok
        rho2 = torch.randn(m, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        second = system.solve_rows(0.7, rho2)[0] if system_cls is DualSystem else system.solve(0.7, 0.5 * J.T @ rho2)[0]
        assert (system._factor is not None) == keep
        results.append((step, second))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


@pytest.mark.parametrize("m,n", [(4, 25), (1, 3), (12, 40)])
def test_external_gradient_dual_equals_primal(m, n):
    """Subsampled curvature: g does not come from the rows, so the dual form needs the general Woodbury solve."""
    torch.manual_seed(10 + m)
    J = torch.randn(m, n, dtype=torch.float64)
    g = torch.randn(n, dtype=torch.float64)  # not in the row space of J
    d = torch.rand(n, dtype=torch.float64) + 0.1
    alpha = 0.25
    systems = []
    for cls in (PrimalSystem, DualSystem):
        system = cls(n, alpha, torch.float64, torch.device("cpu"))
        system.add(J, torch.randn(m, dtype=torch.float64))
        system.finalize()
        system.set_gradient(g)
        system.set_damping(d)
        systems.append(system)
    for lam in (0.05, 1.0, 30.0):
        expected = -torch.linalg.solve(alpha * J.T @ J + lam * torch.diag(d), g)
        for system in systems:
            for keep in (False, True):
                x, ok = system.lm_step(lam, keep_factor=keep)
                assert ok
                torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-10)


def test_cg_stops_on_the_relative_residual():
    """The same iterations whatever the scale of b (powers of two: exact in floating point): the stopping test
    is ‖r‖ ≤ tol ‖b‖, not an absolute one."""
    from marquardt.solve.pcg import preconditioned_cg

    torch.manual_seed(3)
    M = torch.randn(30, 30, dtype=torch.float64)
    K = M @ M.T + 0.1 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, dtype=torch.float64)
    runs = [preconditioned_cg(lambda p: K @ p, lambda r: r, b * scale, 1e-8, 500) for scale in (2.0**-30, 1.0, 2.0**30)]
    assert len({run.iterations for run in runs}) == 1 and all(run.converged for run in runs)
    for run, scale in zip(runs, (2.0**-30, 1.0, 2.0**30)):
        assert float((K @ run.x - b * scale).norm() / (b * scale).norm()) < 1e-7


@pytest.mark.parametrize("keep", [False, True])
def test_solve_rows_takes_rows_in_the_models_dtype(keep):
    """A float32 model with solves in float64: its second-order residuals come in float32, and the dual system
    solves them in its own dtype, to the same answer as float64 rows."""
    torch.manual_seed(4)
    J = torch.randn(6, 20, dtype=torch.float64)
    system = DualSystem(20, 0.5, torch.float64, torch.device("cpu"))
    system.add(J, torch.randn(6, dtype=torch.float64))
    system.finalize()
    system.set_damping(torch.rand(20, dtype=torch.float64) + 0.1)
    assert system.lm_step(0.7, keep_factor=keep)[1]
    rows = torch.randn(6, dtype=torch.float64).float()
    x32, ok32 = system.solve_rows(0.7, rows)
    x64, ok64 = system.solve_rows(0.7, rows.double())
    assert ok32 and ok64 and x32.dtype == torch.float64
    torch.testing.assert_close(x32, x64, rtol=0, atol=0)
