"""damped_cholesky_solve against float64 torch.linalg.solve of (A + lam diag(d)) X = B."""

from __future__ import annotations

import pytest
import torch

from marquardt import ops
from tests.conftest import HAS_CUDA, requires_cuda

# Every test here runs once per CPU kernel this machine has: with the AVX-512 SYRK, the CPU factorisation is
# blocked (192-row steps, trailing updates on our SYRK); with the GEMM kernel it is LAPACK's potrf.
pytestmark = pytest.mark.usefixtures("cpu_kernel")


def random_problem(n, k, dtype, device, rank=None):
    rank = n if rank is None else rank
    M = torch.randn(n, rank, dtype=torch.float64)
    A = M @ M.T / rank  # PSD, possibly singular
    d = torch.rand(n, dtype=torch.float64) + 0.5
    B = torch.randn(n, dtype=torch.float64) if k is None else torch.randn(n, k, dtype=torch.float64)
    return A.to(device=device, dtype=dtype), d.to(device=device, dtype=dtype), B.to(device=device, dtype=dtype)


def reference(A, d, lam, B):
    return torch.linalg.solve(A.double().cpu() + lam * torch.diag(d.double().cpu()), B.double().cpu())


@pytest.mark.parametrize("n", [1, 2, 31, 64, 129, 193, 300, 385, 700])
@pytest.mark.parametrize("k", [None, 1, 3])
@pytest.mark.parametrize("lam", [1e-3, 1.0, 1e4])
def test_matches_reference(device, dtype, n, k, lam):
    A, d, B = random_problem(n, k, dtype, device, rank=max(1, n // 2))
    A_before = A.clone()
    X, info = ops.damped_cholesky_solve(A, d, lam, B)
    assert int(info) == 0
    assert X.shape == B.shape and X.dtype == dtype and X.device == A.device
    assert info.dtype == torch.int32 and info.device == A.device
    assert torch.equal(A, A_before), "A must not be modified"
    X_ref = reference(A, d, lam, B)
    # Compare residuals relative to the scale of the problem (robust to conditioning).
    Ad = A.double().cpu() + lam * torch.diag(d.double().cpu())
    res = (Ad @ X.double().cpu() - B.double().cpu()).abs().max() / (Ad.abs().max() * X_ref.abs().max() + 1e-300)
    assert res < (1e-12 if dtype == torch.float64 else 1e-4)
    if dtype == torch.float64:
        torch.testing.assert_close(X.cpu(), X_ref, rtol=1e-8, atol=1e-10)


def test_reads_only_upper_triangle(device, dtype):
    A, d, B = random_problem(20, 2, dtype, device)
    A_garbage_lower = A.triu() + torch.tril(torch.full_like(A, 1e9), -1)
    X1, _ = ops.damped_cholesky_solve(A, d, 0.1, B)
    X2, _ = ops.damped_cholesky_solve(A_garbage_lower, d, 0.1, B)
    torch.testing.assert_close(X1, X2)


def test_indefinite_returns_info_and_leaves_A(device, dtype):
    n = 6
    A = -torch.eye(n, dtype=dtype, device=device)
    A[0, 0] = 2.0
    d = torch.ones(n, dtype=dtype, device=device)
    A_before = A.clone()
    _, info = ops.damped_cholesky_solve(A, d, 0.5, torch.ones(n, dtype=dtype, device=device))
    assert int(info) == 2  # the leading 2x2 minor is the first one that is not positive definite
    assert torch.equal(A, A_before)
    # Raising lam past the most negative eigenvalue makes it solvable: the optimizer's retry path.
    X, info = ops.damped_cholesky_solve(A, d, 3.0, torch.ones(n, dtype=dtype, device=device))
    assert int(info) == 0
    torch.testing.assert_close(X.cpu().double(), reference(A, d, 3.0, torch.ones(n, dtype=dtype)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, 191, 192, 400, 599])
def test_info_names_the_first_failed_minor_in_any_block(device, dtype, bad):
    # SPD everywhere except one negative pivot: the leading minor of order bad + 1 is the first to fail,
    # whichever step of the blocked factorisation (192 rows each) it falls in.
    n = 600
    M = torch.randn(n, n, dtype=torch.float64) / n**0.5
    A = (M @ M.T + torch.eye(n, dtype=torch.float64)).to(device=device, dtype=dtype)
    A[bad, :] = 0.0
    A[:, bad] = 0.0
    A[bad, bad] = -1.0
    d = torch.ones(n, dtype=dtype, device=device)
    _, info = ops.damped_cholesky_solve(A, d, 1e-3, torch.ones(n, dtype=dtype, device=device))
    assert int(info) == bad + 1
    _, info = ops.damped_cholesky_factor(A, d, 1e-3)
    assert int(info) == bad + 1


def test_nan_in_a_later_block_is_not_positive_definite(device, dtype):
    A = torch.eye(500, dtype=dtype, device=device)
    A[450, 3] = A[3, 450] = float("nan")
    _, info = ops.damped_cholesky_solve(A, torch.ones(500, dtype=dtype, device=device), 0.1, torch.ones(500, dtype=dtype, device=device))
    assert int(info) > 0


def test_nan_matrix_is_not_positive_definite(device, dtype):
    A = torch.eye(3, dtype=dtype, device=device)
    A[1, 1] = float("nan")
    _, info = ops.damped_cholesky_solve(A, torch.ones(3, dtype=dtype, device=device), 0.1, torch.ones(3, dtype=dtype, device=device))
    assert int(info) > 0


def test_opcheck(device, dtype):
    A, d, B = random_problem(9, 2, dtype, device)
    torch.library.opcheck(torch.ops.marquardt.damped_cholesky_solve.default, (A, d, 0.3, B))
    A, d, B = random_problem(9, None, dtype, device)
    torch.library.opcheck(torch.ops.marquardt.damped_cholesky_solve.default, (A, d, 0.3, B))


class TestErrors:
    def test_shapes(self):
        A, d, B = random_problem(4, 1, torch.float64, "cpu")
        with pytest.raises(RuntimeError, match=r"damped_cholesky_solve: d must have shape \[4\]"):
            ops.damped_cholesky_solve(A, d[:3], 1.0, B)
        with pytest.raises(RuntimeError, match=r"B must have shape \[4\] or \[4, k\]"):
            ops.damped_cholesky_solve(A, d, 1.0, B[:3])
        with pytest.raises(RuntimeError, match=r"A must be a square matrix"):
            ops.damped_cholesky_solve(A[:3], d, 1.0, B)

    def test_dtypes(self):
        A, d, B = random_problem(4, 1, torch.float64, "cpu")
        with pytest.raises(RuntimeError, match=r"B and A must have the same dtype"):
            ops.damped_cholesky_solve(A, d, 1.0, B.float())
        with pytest.raises(RuntimeError, match=r"A must be float32 or float64"):
            ops.damped_cholesky_solve(A.long(), d.long(), 1.0, B.long())

    @pytest.mark.parametrize("lam", [-1.0, float("nan"), float("inf")])
    def test_bad_lam(self, lam):
        A, d, B = random_problem(4, 1, torch.float64, "cpu")
        with pytest.raises(RuntimeError, match=r"lam must be finite and >= 0"):
            ops.damped_cholesky_solve(A, d, lam, B)

    @pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
    def test_mismatched_devices(self):
        A, d, B = random_problem(4, 1, torch.float64, "cpu")
        with pytest.raises(RuntimeError, match=r"must be on the same device"):
            ops.damped_cholesky_solve(A.cuda(), d, 1.0, B)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("n", [1, 100, 1025])
def test_cuda_matches_cpu(dtype, n):
    A, d, B = random_problem(n, 4, dtype, "cpu", rank=n // 2 + 1)
    X_cpu, info_cpu = ops.damped_cholesky_solve(A, d, 0.01, B)
    X_gpu, info_gpu = ops.damped_cholesky_solve(A.cuda(), d.cuda(), 0.01, B.cuda())
    assert int(info_cpu) == int(info_gpu) == 0
    tol = dict(rtol=1e-8, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(X_gpu.cpu(), X_cpu, **tol)


@pytest.mark.parametrize("k", [None, 1])
def test_does_not_modify_B(device, dtype, k):
    A, d, B = random_problem(5, k, dtype, device)
    B_before = B.clone()
    X, _ = ops.damped_cholesky_solve(A, d, 1.0, B)
    assert torch.equal(B, B_before)
    assert X.data_ptr() != B.data_ptr()


class TestFactor:
    """damped_cholesky_factor: the factor behind the solve, for solving right-hand sides one after another."""

    @pytest.mark.parametrize("n", [1, 7, 130, 450])
    def test_factor_reproduces_damped_matrix(self, device, dtype, n):
        A, d, B = random_problem(n, 2, dtype, device, rank=max(1, n // 3))
        A_before = A.clone()
        U, info = ops.damped_cholesky_factor(A, d, 0.2)
        assert int(info) == 0 and info.dtype == torch.int32
        assert torch.equal(U, U.triu()), "U must be upper triangular with zeros below the diagonal"
        assert torch.equal(A, A_before)
        damped = A.double().cpu() + 0.2 * torch.diag(d.double().cpu())
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(U.double().cpu().T @ U.double().cpu(), damped, **tol)
        X, _ = ops.damped_cholesky_solve(A, d, 0.2, B)
        torch.testing.assert_close(torch.cholesky_solve(B, U, upper=True), X, **tol)

    def test_indefinite(self, device, dtype):
        A = -torch.eye(4, dtype=dtype, device=device)
        _, info = ops.damped_cholesky_factor(A, torch.ones(4, dtype=dtype, device=device), 0.5)
        assert int(info) == 1

    def test_opcheck_and_errors(self, device, dtype):
        A, d, _ = random_problem(6, 1, dtype, device)
        torch.library.opcheck(torch.ops.marquardt.damped_cholesky_factor.default, (A, d, 0.3))
        with pytest.raises(RuntimeError, match=r"damped_cholesky_factor: d must have shape \[6\]"):
            ops.damped_cholesky_factor(A, d[:5], 0.3)
        with pytest.raises(RuntimeError, match=r"damped_cholesky_factor: lam must be finite and >= 0"):
            ops.damped_cholesky_factor(A, d, -1.0)
