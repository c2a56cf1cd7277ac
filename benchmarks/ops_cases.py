"""The op benchmark cases: each native op beside its plain-torch twins, on the same inputs.

Used by both the pytest-benchmark microbenchmarks (benchmarks/micro) and the side-by-side ratio script
(benchmarks/compare_ops.py), so the two always time the same thing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from marquardt import ops


@dataclass
class Case:
    name: str
    flops: float  # useful flops of the operation (rows*n^2 for JᵀJ, n^3/3 for Cholesky)
    ours: str
    candidates: dict[str, Callable[[], object]]


def jtj_case(rows: int, n: int, dtype: torch.dtype, device: str) -> Case:
    J = torch.randn(rows, n, dtype=dtype, device=device)
    A = torch.zeros(n, n, dtype=dtype, device=device)

    def ours():
        A.zero_()
        return ops.jtj_accumulate_(A, J)

    def matmul():
        return J.T @ J

    def addmm():
        A.zero_()
        return A.addmm_(J.T, J)

    candidates = {"jtj_accumulate_": ours, "J.T @ J": matmul, "addmm_": addmm}
    _add_gemm_path(candidates, JTJ_GEMM_KERNEL, ours, device)
    return Case(
        name=f"jtj rows={rows} n={n} {str(dtype).removeprefix('torch.')}",
        flops=float(rows) * n * n,
        ours="jtj_accumulate_",
        candidates=candidates,
    )


JTJ_GEMM_KERNEL = "jtj_accumulate_ [gemm kernel]"
SOLVE_LAPACK_POTRF = "damped_cholesky_solve [LAPACK potrf]"


def _add_gemm_path(candidates: dict[str, Callable[[], object]], name: str, ours: Callable[[], object],
                   device: str) -> None:
    """Adds our op under MARQUARDT_CPU_SYRK=gemm as the candidate `name`, where the default path is another
    (the CPU with AVX-512): the GEMM kernel for JᵀJ, LAPACK's potrf for the solve."""
    if device == "cpu" and ops.cpu_syrk_kernel() != "gemm":
        candidates[name] = lambda: _with_cpu_kernel("gemm", ours)


def _with_cpu_kernel(kernel: str, fn: Callable[[], object]) -> object:
    """Runs fn with MARQUARDT_CPU_SYRK=kernel (the op reads it at every call), then restores the variable."""
    before = os.environ.get("MARQUARDT_CPU_SYRK")
    os.environ["MARQUARDT_CPU_SYRK"] = kernel
    try:
        return fn()
    finally:
        if before is None:
            del os.environ["MARQUARDT_CPU_SYRK"]
        else:
            os.environ["MARQUARDT_CPU_SYRK"] = before


def solve_case(n: int, dtype: torch.dtype, device: str, lam: float = 1e-2, k: int = 1) -> Case:
    M = torch.randn(n, n, dtype=dtype, device=device)
    A = M @ M.T / n
    d = torch.rand(n, dtype=dtype, device=device) + 0.5
    B = torch.randn(n, k, dtype=dtype, device=device)

    def ours():
        X, info = ops.damped_cholesky_solve(A, d, lam, B)
        return X

    def linalg_solve():
        return torch.linalg.solve(A + lam * torch.diag(d), B)

    def cholesky_then_solve():
        L = torch.linalg.cholesky(A + lam * torch.diag(d))
        return torch.cholesky_solve(B, L)

    candidates = {
        "damped_cholesky_solve": ours,
        "linalg.solve": linalg_solve,
        "cholesky+cholesky_solve": cholesky_then_solve,
    }
    _add_gemm_path(candidates, SOLVE_LAPACK_POTRF, ours, device)
    return Case(
        name=f"solve n={n} {str(dtype).removeprefix('torch.')}",
        flops=n**3 / 3.0,
        ours="damped_cholesky_solve",
        candidates=candidates,
    )


def gemm_rate(n: int, dtype: torch.dtype, device: str, sync: Callable[[], None]) -> float:
    """Measured square GEMM rate in flop/s (the machine's ceiling for the same precision)."""
    import time

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    sync()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2.0 * n**3 / times[len(times) // 2]
