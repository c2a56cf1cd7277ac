"""Preconditioned CG against the textbook iteration (Saad, Iterative Methods for Sparse Linear Systems, Alg. 9.1),
field by field: the iterate, whether it converged, the iteration count and the relative residual."""

from __future__ import annotations

import pytest
import torch

from marquardt.solve.pcg import preconditioned_cg


def textbook_pcg(A, M_inv, b, tol, max_iter):
    """x_k after k = 1..max_iter steps, stopping at the first k with ‖r_k‖ ≤ tol‖b‖ (recursive residual)."""
    x, r = torch.zeros_like(b), b.clone()
    z = M_inv @ r
    p, rz = z.clone(), r @ z
    rel = 1.0
    for k in range(1, max_iter + 1):
        alpha = rz / (p @ A @ p)
        x, r = x + alpha * p, r - alpha * (A @ p)
        rel = float(r.norm() / b.norm())
        if rel <= tol:
            return x, True, k, rel
        z = M_inv @ r
        p, rz = z + (r @ z) / rz * p, r @ z
    return x, False, max_iter, rel


def spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    # eigenvalues spread over [1, 50] and a non-uniform diagonal: a few dozen well-separated CG steps, with the
    # Jacobi preconditioner changing the path; conditioned well enough that both codes round alike
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    D = torch.diag(torch.linspace(1.0, 50.0, n, dtype=torch.float64))
    S = torch.diag(torch.linspace(1.0, 3.0, n, dtype=torch.float64))
    return S @ Q @ D @ Q.T @ S, torch.randn(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("max_iter, tol", [(1, 1e-12), (3, 1e-12), (40, 1e-6), (40, 1e-3)])
@pytest.mark.parametrize("jacobi", [False, True])
def test_matches_the_textbook_iteration(max_iter, tol, jacobi):
    A, b = spd(30, max_iter)
    M_inv = torch.diag(1 / A.diagonal()) if jacobi else torch.eye(30, dtype=torch.float64)
    out = preconditioned_cg(lambda v: A @ v, lambda v: M_inv @ v, b, tol, max_iter)
    x, converged, iterations, rel = textbook_pcg(A, M_inv, b, tol, max_iter)
    assert (out.converged, out.iterations) == (converged, iterations)
    # rounding differs between the two codes and CG amplifies it over tens of steps (a few percent in the
    # residual at 20 steps; 1.6× at 3e-7 on one Xeon), so the values are compared to that precision and the
    # counts exactly
    assert rel / 2 <= out.relative_residual <= 2 * rel
    assert out.relative_residual == pytest.approx(float((b - A @ out.x).norm() / b.norm()), rel=0.1)
    torch.testing.assert_close(out.x, x, rtol=1e-6, atol=1e-9)
    if converged:
        assert rel <= tol
        torch.testing.assert_close(out.x, torch.linalg.solve(A, b), rtol=1e-6 if tol < 1e-6 else 1e-1, atol=1e-8)


def test_one_step_solves_a_scalar_system():
    out = preconditioned_cg(lambda v: 4.0 * v, lambda v: v, torch.tensor([2.0], dtype=torch.float64), 1e-12, 5)
    assert (out.converged, out.iterations, out.relative_residual) == (True, 1, 0.0)
    assert out.x.tolist() == [0.5]


def test_a_zero_right_hand_side():
    out = preconditioned_cg(lambda v: v, lambda v: v, torch.zeros(3, dtype=torch.float64), 1e-8, 10)
    assert (out.converged, out.iterations, out.relative_residual, out.x.tolist()) == (True, 0, 0.0, [0.0] * 3)


@pytest.mark.parametrize("scale", [-1.0, 0.0, float("nan")])
def test_no_positive_curvature_gives_up_at_once(scale):
    """pᵀAp ≤ 0 (or NaN) in the first iteration: not converged, x untouched, the residual still ‖b‖."""
    out = preconditioned_cg(lambda v: scale * v, lambda v: v, torch.ones(3, dtype=torch.float64), 1e-8, 10)
    assert (out.converged, out.iterations, out.relative_residual, out.x.tolist()) == (False, 1, 1.0, [0.0] * 3)
