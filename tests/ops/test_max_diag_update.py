"""max_diag_update_ against its formula d = max(d, diag(A), floor)."""

from __future__ import annotations

import pytest
import torch

from marquardt import ops
from tests.conftest import HAS_CUDA


@pytest.mark.parametrize("n", [1, 2, 33, 1000])
@pytest.mark.parametrize("floor", [0.0, 0.01, 5.0])
def test_matches_formula(device, dtype, n, floor):
    d = torch.rand(n, dtype=torch.float64) * 2
    A = torch.randn(n, n, dtype=torch.float64) * 2
    expected = torch.maximum(torch.maximum(d, A.diagonal()), torch.tensor(floor, dtype=torch.float64))
    d_dev = d.to(device=device, dtype=dtype)
    out = ops.max_diag_update_(d_dev, A.to(device=device, dtype=dtype), floor=floor)
    assert out is d_dev
    torch.testing.assert_close(d_dev.cpu(), expected.to(dtype))


def test_running_maximum_over_calls(device, dtype):
    d = torch.full((10,), 0.01, dtype=dtype, device=device)
    seen = torch.full((10,), 0.01, dtype=dtype)
    for _ in range(5):
        A = torch.randn(10, 10, dtype=dtype)
        seen = torch.maximum(seen, A.diagonal())
        ops.max_diag_update_(d, A.to(device))
    torch.testing.assert_close(d.cpu(), seen)


def test_strided_A(device, dtype):
    big = torch.randn(12, 12, dtype=dtype, device=device)
    A = big[::2, ::2]
    d = torch.zeros(6, dtype=dtype, device=device)
    ops.max_diag_update_(d, A)
    torch.testing.assert_close(d, A.diagonal().clamp_min(0))


def test_nan_diagonal_is_ignored(device, dtype):
    A = torch.eye(4, dtype=dtype, device=device) * 3
    A[1, 1] = float("nan")
    d = torch.ones(4, dtype=dtype, device=device)
    ops.max_diag_update_(d, A)
    torch.testing.assert_close(d.cpu(), torch.tensor([3.0, 1.0, 3.0, 3.0], dtype=dtype))


def test_opcheck(device, dtype):
    d = torch.rand(7, dtype=dtype, device=device)
    A = torch.randn(7, 7, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.marquardt.max_diag_update_.default, (d, A, 0.1))


class TestErrors:
    def test_wrong_shape(self):
        with pytest.raises(RuntimeError, match=r"max_diag_update_: d must have shape \[3\]"):
            ops.max_diag_update_(torch.zeros(4), torch.zeros(3, 3))

    def test_wrong_dtype(self):
        with pytest.raises(RuntimeError, match=r"max_diag_update_: d must be float32 or float64"):
            ops.max_diag_update_(torch.zeros(3, dtype=torch.int32), torch.zeros(3, 3))
        with pytest.raises(RuntimeError, match=r"A and d must have the same dtype"):
            ops.max_diag_update_(torch.zeros(3), torch.zeros(3, 3, dtype=torch.float64))

    def test_nan_floor(self):
        with pytest.raises(RuntimeError, match=r"floor must not be NaN"):
            ops.max_diag_update_(torch.zeros(3), torch.zeros(3, 3), float("nan"))

    @pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
    def test_mismatched_devices(self):
        with pytest.raises(RuntimeError, match=r"must be on the same device"):
            ops.max_diag_update_(torch.zeros(3, device="cuda"), torch.zeros(3, 3))
