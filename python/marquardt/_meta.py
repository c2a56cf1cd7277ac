"""Fake (meta) kernels of the marquardt ops, so that torch.compile and opcheck can trace them.

Named by ``m.set_python_module("marquardt._meta")`` in csrc/registration.cpp. Each checks everything the real
kernels check (csrc/checks.cpp: dtypes, one device for all tensors, shapes, contiguity of in-place outputs,
λ and the floor), because a fake kernel also runs when meta tensors are mixed with real ones: a missing check
there would make the op silently do nothing. Memory overlap cannot be decided without storage and is left to
the real kernels.
"""

from __future__ import annotations

import math

import torch

_FLOATS = (torch.float32, torch.float64)


def _float(op: str, name: str, t: torch.Tensor) -> None:
    torch._check(t.dtype in _FLOATS, lambda: f"marquardt::{op}: {name} must be float32 or float64 (got {t.dtype})")


def _same(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    torch._check(t.device == ref.device, lambda: f"marquardt::{op}: {name} and {ref_name} must be on the same device "
                                                 f"(got {name}={t.device}, {ref_name}={ref.device})")
    torch._check(t.dtype == ref.dtype, lambda: f"marquardt::{op}: {name} and {ref_name} must have the same dtype "
                                               f"(got {name}={t.dtype}, {ref_name}={ref.dtype})")


def _square(op: str, name: str, A: torch.Tensor) -> None:
    torch._check(A.dim() == 2 and A.shape[0] == A.shape[1] and A.shape[0] >= 1,
                 lambda: f"marquardt::{op}: {name} must be a square matrix [n, n] with n >= 1 (got {tuple(A.shape)})")


def _damped(op: str, A: torch.Tensor, d: torch.Tensor, lam: float) -> None:
    _float(op, "A", A)
    _square(op, "A", A)
    _same(op, "d", d, "A", A)
    torch._check(d.dim() == 1 and d.shape[0] == A.shape[0], lambda: f"marquardt::{op}: d must have shape [n]")
    torch._check(math.isfinite(lam) and lam >= 0, lambda: f"marquardt::{op}: lam must be finite and >= 0 (got {lam})")


@torch.library.register_fake("marquardt::jtj_accumulate_")
def _jtj_accumulate_fake(A, J, r=None, g=None, alpha=1.0):
    op = "jtj_accumulate_"
    _float(op, "A", A)
    _square(op, "A", A)
    torch._check(A.is_contiguous(), lambda: f"marquardt::{op}: A must be contiguous (it is updated in place)")
    _same(op, "J", J, "A", A)
    torch._check(J.dim() == 2 and J.shape[1] == A.shape[0] and J.shape[0] >= 1,
                 lambda: f"marquardt::{op}: J must have shape [rows, n] with rows >= 1 (got {tuple(J.shape)})")
    torch._check((r is None) == (g is None), lambda: f"marquardt::{op}: r and g must be given together")
    if r is not None and g is not None:
        _same(op, "r", r, "A", A)
        _same(op, "g", g, "A", A)
        torch._check(r.dim() == 1 and r.shape[0] == J.shape[0], lambda: f"marquardt::{op}: r must have shape [rows]")
        torch._check(g.dim() == 1 and g.shape[0] == A.shape[0], lambda: f"marquardt::{op}: g must have shape [n]")
        torch._check(g.is_contiguous(), lambda: f"marquardt::{op}: g must be contiguous (it is updated in place)")
    return None


@torch.library.register_fake("marquardt::max_diag_update_")
def _max_diag_update_fake(d, A, floor=0.0):
    op = "max_diag_update_"
    _float(op, "d", d)
    _square(op, "A", A)
    _same(op, "A", A, "d", d)
    torch._check(d.dim() == 1 and d.shape[0] == A.shape[0], lambda: f"marquardt::{op}: d must have shape [n]")
    torch._check(d.is_contiguous(), lambda: f"marquardt::{op}: d must be contiguous (it is updated in place)")
    torch._check(not math.isnan(floor), lambda: f"marquardt::{op}: floor must not be NaN")
    return None


@torch.library.register_fake("marquardt::damped_cholesky_solve")
def _damped_cholesky_solve_fake(A, d, lam, B):
    op = "damped_cholesky_solve"
    _damped(op, A, d, lam)
    _same(op, "B", B, "A", A)
    torch._check(B.dim() in (1, 2) and B.shape[0] == A.shape[0], lambda: f"marquardt::{op}: B must be [n] or [n, k]")
    X = torch.empty(B.shape, dtype=B.dtype, device=B.device)
    info = torch.empty((), dtype=torch.int32, device=A.device)
    return X, info


@torch.library.register_fake("marquardt::damped_cholesky_factor")
def _damped_cholesky_factor_fake(A, d, lam):
    _damped("damped_cholesky_factor", A, d, lam)
    U = torch.empty(A.shape, dtype=A.dtype, device=A.device)
    info = torch.empty((), dtype=torch.int32, device=A.device)
    return U, info
