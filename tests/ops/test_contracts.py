"""Contracts every kernel keeps: no aliasing between in-place outputs and inputs, any finite λ, the same info on
every factorisation path, and fake (meta) kernels that check what the real ones check."""

from __future__ import annotations

import pytest
import torch

from marquardt import ops
from tests.conftest import DEVICES


@pytest.fixture(params=DEVICES)
def dev(request):
    return request.param


@pytest.mark.parametrize("make", [
    lambda A: (A, A, None, None),  # J is A
    lambda A: (A, A[:2], None, None),  # J is rows of A
    lambda A: (A, torch.ones(2, 4, dtype=A.dtype, device=A.device), torch.ones(2, dtype=A.dtype, device=A.device), A[0]),
    lambda A: (A, torch.ones(2, 4, dtype=A.dtype, device=A.device), A[1, :2], torch.zeros(4, dtype=A.dtype, device=A.device)),
], ids=["J is A", "J rows of A", "g row of A", "r inside A"])
def test_jtj_accumulate_refuses_overlapping_arguments(make, dev, cpu_kernel):
    A = torch.eye(4, dtype=torch.float64, device=dev)
    before = A.clone()
    A_, J, r, g = make(A)
    with pytest.raises(RuntimeError, match="must not share memory"):
        ops.jtj_accumulate_(A_, J, r, g)
    assert torch.equal(A, before)


def test_max_diag_update_refuses_d_inside_A(dev):
    A = torch.eye(3, dtype=torch.float64, device=dev)
    with pytest.raises(RuntimeError, match="d .written in place. must not share memory with A"):
        ops.max_diag_update_(A[0], A)


@pytest.mark.parametrize("n", [3, 200, 500])
def test_lambda_beyond_float32_reports_a_failed_factorisation(n, dev, cpu_kernel):
    """λ = 1e39 is finite (the contract) but past float32: no exception, info > 0 like any failed pivot."""
    A = torch.eye(n, device=dev)
    d = torch.ones(n, device=dev)
    X, info = ops.damped_cholesky_solve(A, d, 1e39, torch.ones(n, device=dev))
    assert int(info) == 1
    U, info = ops.damped_cholesky_factor(A, d, 1e39)
    assert int(info) == 1
    X, info = ops.damped_cholesky_solve(A.double(), d.double(), 1e39, torch.ones(n, dtype=torch.float64, device=dev))
    assert int(info) == 0 and torch.allclose(X, torch.full_like(X, 1e-39), rtol=1e-12)  # float64 holds it


@pytest.mark.parametrize("n", [100, 500])
def test_an_infinite_pivot_gives_the_same_info_on_every_path(n, cpu_kernel):
    """n = 500 takes the blocked factorisation where the AVX-512 SYRK runs, n = 100 LAPACK's potrf."""
    A = torch.eye(n, dtype=torch.float64) * 2
    A[250 % n, 250 % n] = float("inf")
    _, info = ops.damped_cholesky_solve(A, torch.ones(n, dtype=torch.float64), 0.5, torch.ones(n, dtype=torch.float64))
    assert int(info) == 250 % n + 1


#: each op with meta tensors mixed with CPU ones (the fake kernel runs): it must refuse, as the real one does
MIXED = [
    ("jtj J on cpu", lambda m, c: ops.jtj_accumulate_(m(3, 3), c(2, 3))),
    ("jtj g on cpu", lambda m, c: ops.jtj_accumulate_(m(3, 3), m(2, 3), m(2), c(3))),
    ("jtj float16", lambda m, c: ops.jtj_accumulate_(m(3, 3).half(), m(2, 3).half())),
    ("jtj dtype mix", lambda m, c: ops.jtj_accumulate_(m(3, 3), m(2, 3).double())),
    ("jtj r without g", lambda m, c: ops.jtj_accumulate_(m(3, 3), m(2, 3), m(2), None)),
    ("jtj r rows", lambda m, c: ops.jtj_accumulate_(m(3, 3), m(2, 3), m(5), m(3))),
    ("max_diag d on cpu", lambda m, c: ops.max_diag_update_(c(3), m(3, 3))),
    ("max_diag nan floor", lambda m, c: ops.max_diag_update_(m(3), m(3, 3), float("nan"))),
    ("solve B on cpu", lambda m, c: ops.damped_cholesky_solve(m(3, 3), m(3), 1.0, c(3))),
    ("solve d shape", lambda m, c: ops.damped_cholesky_solve(m(3, 3), m(4), 1.0, m(3))),
    ("solve lam inf", lambda m, c: ops.damped_cholesky_solve(m(3, 3), m(3), float("inf"), m(3))),
    ("solve lam negative", lambda m, c: ops.damped_cholesky_solve(m(3, 3), m(3), -1.0, m(3))),
    ("factor d on cpu", lambda m, c: ops.damped_cholesky_factor(m(3, 3), c(3), 1.0)),
    ("factor not square", lambda m, c: ops.damped_cholesky_factor(m(3, 2), m(3), 1.0)),
]


@pytest.mark.parametrize("case", MIXED, ids=[c[0] for c in MIXED])
def test_fake_kernels_check_what_the_real_ones_check(case):
    def meta(*shape):
        return torch.ones(*shape, device="meta")

    def cpu(*shape):
        return torch.ones(*shape)

    with pytest.raises(RuntimeError):
        case[1](meta, cpu)
