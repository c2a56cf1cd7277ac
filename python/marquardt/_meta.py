"""Fake (meta) kernels of the marquardt ops, so that torch.compile and opcheck can trace them.

Named by ``m.set_python_module("marquardt._meta")`` in csrc/registration.cpp.
"""

from __future__ import annotations

import torch


@torch.library.register_fake("marquardt::jtj_accumulate_")
def _jtj_accumulate_fake(A, J, r=None, g=None, alpha=1.0):
    torch._check(A.dim() == 2 and A.shape[0] == A.shape[1], lambda: "jtj_accumulate_: A must be [n, n]")
    torch._check(J.dim() == 2 and J.shape[1] == A.shape[0], lambda: "jtj_accumulate_: J must be [rows, n]")
    return None


@torch.library.register_fake("marquardt::max_diag_update_")
def _max_diag_update_fake(d, A, floor=0.0):
    torch._check(d.dim() == 1 and d.shape[0] == A.shape[0], lambda: "max_diag_update_: d must be [n]")
    return None


@torch.library.register_fake("marquardt::damped_cholesky_solve")
def _damped_cholesky_solve_fake(A, d, lam, B):
    torch._check(A.dim() == 2 and A.shape[0] == A.shape[1], lambda: "damped_cholesky_solve: A must be [n, n]")
    torch._check(B.shape[0] == A.shape[0], lambda: "damped_cholesky_solve: B must be [n] or [n, k]")
    X = torch.empty(B.shape, dtype=B.dtype, device=B.device)
    info = torch.empty((), dtype=torch.int32, device=A.device)
    return X, info


@torch.library.register_fake("marquardt::damped_cholesky_factor")
def _damped_cholesky_factor_fake(A, d, lam):
    torch._check(A.dim() == 2 and A.shape[0] == A.shape[1], lambda: "damped_cholesky_factor: A must be [n, n]")
    U = torch.empty(A.shape, dtype=A.dtype, device=A.device)
    info = torch.empty((), dtype=torch.int32, device=A.device)
    return U, info
