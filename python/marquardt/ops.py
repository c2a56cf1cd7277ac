"""Typed wrappers over the native ops ``torch.ops.marquardt.*``.

These are the three hot pieces of a Levenberg-Marquardt iteration (see csrc/ops.h for the full contracts):

* :func:`jtj_accumulate_` streams Jacobian row chunks into the curvature ``A += alpha JᵀJ`` (and the
  gradient ``g += alpha Jᵀr``), computing one triangle only.
* :func:`max_diag_update_` keeps the running maximum diagonal ``d = max(d, diag(A), floor)`` used as the
  damping matrix DᵀD = diag(d).
* :func:`damped_cholesky_solve` solves ``(A + lam diag(d)) X = B`` without touching ``A``, reporting an
  indefinite damped matrix through ``info > 0`` instead of raising.
"""

from __future__ import annotations

import torch

from . import (
    _loader,  # noqa: F401  (loads the op library)
    _meta,  # noqa: F401  (fake kernels for tracing)
)

__all__ = [
    "jtj_accumulate_",
    "max_diag_update_",
    "damped_cholesky_solve",
    "damped_cholesky_factor",
    "cpu_syrk_kernel",
]


def jtj_accumulate_(
    A: torch.Tensor,
    J: torch.Tensor,
    r: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """In place: ``A += alpha * Jᵀ J`` and, when ``r`` and ``g`` are given, ``g += alpha * Jᵀ r``.

    Args:
        A: ``[n, n]`` contiguous symmetric matrix, float32 or float64. Only its upper triangle is read; on
            return the whole matrix is symmetric.
        J: ``[rows, n]`` chunk of Jacobian rows (rows >= 1), same dtype and device as ``A``.
        r: ``[rows]`` residuals matching the rows of ``J``, or None.
        g: ``[n]`` contiguous gradient accumulator, or None (given together with ``r``).
        alpha: scale of the contribution (for example ``1/N`` for a mean loss).

    Returns:
        ``A``, updated.
    """
    torch.ops.marquardt.jtj_accumulate_.default(A, J, r, g, float(alpha))
    return A


def cpu_syrk_kernel() -> str:
    """The kernel :func:`jtj_accumulate_` runs on CPU tensors, as chosen now: ``"avx512"`` or ``"gemm"``.

    ``"avx512"`` is our packed SYRK with AVX-512 register tiles, the default where the CPU has AVX-512 (it
    beats torch's BLAS there, which runs its AVX2 code on AMD CPUs); :func:`damped_cholesky_solve` and
    :func:`damped_cholesky_factor` then factor matrices larger than 384 in blocks whose trailing updates run
    on it. ``"gemm"`` forms the triangle from GEMMs through torch's BLAS and factors with LAPACK's potrf, the
    portable path. The environment variable ``MARQUARDT_CPU_SYRK`` (``auto``,
    ``avx512`` or ``gemm``, read at every call) overrides the choice; a bad value raises.
    """
    return str(torch.ops.marquardt.cpu_syrk_kernel.default())


def max_diag_update_(d: torch.Tensor, A: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """In place: ``d = max(d, diag(A), floor)`` elementwise (the running maximum-diagonal damping).

    NaN diagonal entries of ``A`` are ignored. Returns ``d``.
    """
    torch.ops.marquardt.max_diag_update_.default(d, A, float(floor))
    return d


def damped_cholesky_solve(
    A: torch.Tensor, d: torch.Tensor, lam: float, B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``(A + lam * diag(d)) X = B`` by Cholesky without modifying ``A``.

    Args:
        A: ``[n, n]`` symmetric matrix (upper triangle read).
        d: ``[n]`` damping diagonal.
        lam: damping strength, finite and >= 0.
        B: ``[n]`` or ``[n, k]`` right-hand sides.

    Returns:
        ``(X, info)``: ``X`` has the shape of ``B``; ``info`` is an int32 scalar tensor on ``A``'s device,
        0 on success and > 0 if the damped matrix is not positive definite (then ``X`` is unspecified).
        Reading ``info`` (``int(info)``) is the only host synchronisation on the GPU.
    """
    X, info = torch.ops.marquardt.damped_cholesky_solve.default(A, d, float(lam), B)
    return X, info


def damped_cholesky_factor(A: torch.Tensor, d: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The factor behind :func:`damped_cholesky_solve`, for solving several right-hand sides in turn.

    Returns ``(U, info)``: U upper triangular with ``UᵀU = A + lam * diag(d)`` (solve with
    ``torch.cholesky_solve(B, U, upper=True)``), info as for :func:`damped_cholesky_solve`. A is not modified.
    """
    U, info = torch.ops.marquardt.damped_cholesky_factor.default(A, d, float(lam))
    return U, info
