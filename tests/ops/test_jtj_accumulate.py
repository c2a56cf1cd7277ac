"""jtj_accumulate_ against a float64 pure-PyTorch reference: A += alpha JᵀJ, g += alpha Jᵀr."""

from __future__ import annotations

import pytest
import torch

from marquardt import ops
from tests.conftest import HAS_AVX512, HAS_CUDA, requires_cuda

# (rows, n): single rows and columns, sizes off every tile (CPU GEMM block rows 128/256; AVX-512 register
# tiles 8 x 24/48, 256-row depth and 256-row blocks; CUDA tiles 128/64), a tall chunk that makes the
# CUDA kernel split rows across blocks (the atomic path), and sizes large enough for the CPU kernels to
# split the work between threads (5000 x 70, 300 x 700).
SHAPES = [
    (1, 1),
    (1, 7),
    (9, 1),
    (3, 129),
    (130, 127),
    (257, 300),
    (64, 256),
    (33, 513),
    (5000, 70),
    (513, 241),
    (300, 700),
]


# Every test here runs once per CPU kernel this machine has (the GEMM one, and the AVX-512 one where it runs).
pytestmark = pytest.mark.usefixtures("cpu_kernel")


def reference(A0, J, r, g0, alpha):
    A = A0.double() + alpha * J.double().T @ J.double()
    g = None if r is None else g0.double() + alpha * J.double().T @ r.double()
    return A, g


def tol(dtype, rows, scale=1.0):
    # float32 accumulation error grows like sqrt(rows) * eps * |J|² on average; be generous but finite.
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10 * scale)
    return dict(rtol=2e-4, atol=2e-4 * scale * max(1.0, rows**0.5))


def random_symmetric(n, dtype, device):
    M = torch.randn(n, n, dtype=torch.float64)
    return (M + M.T).to(dtype=dtype, device=device)


@pytest.mark.parametrize("rows,n", SHAPES)
@pytest.mark.parametrize("with_g", [False, True], ids=["A", "A+g"])
def test_matches_reference(device, dtype, rows, n, with_g):
    J = torch.randn(rows, n, dtype=dtype, device=device)
    A = random_symmetric(n, dtype, device)
    r = torch.randn(rows, dtype=dtype, device=device) if with_g else None
    g = torch.randn(n, dtype=dtype, device=device) if with_g else None
    A_ref, g_ref = reference(A, J, r, g, 0.37)
    out = ops.jtj_accumulate_(A, J, r, g, alpha=0.37)
    assert out is A
    torch.testing.assert_close(A.double().cpu(), A_ref.cpu(), **tol(dtype, rows))
    assert torch.equal(A, A.T), "A must be exactly symmetric on return"
    if with_g:
        torch.testing.assert_close(g.double().cpu(), g_ref.cpu(), **tol(dtype, rows))


@pytest.mark.parametrize("chunks", [[1, 1, 1], [5, 128, 3], [200, 1, 57]])
def test_streamed_chunks_equal_one_shot(device, dtype, chunks):
    n = 150
    rows = sum(chunks)
    J = torch.randn(rows, n, dtype=dtype, device=device)
    r = torch.randn(rows, dtype=dtype, device=device)
    A1 = torch.zeros(n, n, dtype=dtype, device=device)
    g1 = torch.zeros(n, dtype=dtype, device=device)
    ops.jtj_accumulate_(A1, J, r, g1, alpha=0.5)
    A2 = torch.zeros_like(A1)
    g2 = torch.zeros_like(g1)
    for Jc, rc in zip(J.split(chunks), r.split(chunks)):
        ops.jtj_accumulate_(A2, Jc, rc, g2, alpha=0.5)
    torch.testing.assert_close(A2, A1, **tol(dtype, rows))
    torch.testing.assert_close(g2, g1, **tol(dtype, rows))
    A_ref, g_ref = reference(torch.zeros(n, n), J.cpu(), r.cpu(), torch.zeros(n), 0.5)
    torch.testing.assert_close(A2.double().cpu(), A_ref, **tol(dtype, rows))
    torch.testing.assert_close(g2.double().cpu(), g_ref, **tol(dtype, rows))


def test_large_values(device, dtype):
    scale = 1e6 if dtype == torch.float64 else 1e3
    J = torch.randn(40, 37, dtype=dtype, device=device) * scale
    A = torch.zeros(37, 37, dtype=dtype, device=device)
    A_ref, _ = reference(A, J, None, None, 1.0)
    ops.jtj_accumulate_(A, J)
    rel = (A.double().cpu() - A_ref.cpu()).abs().max() / A_ref.abs().max()
    assert rel < (1e-12 if dtype == torch.float64 else 1e-5)


def test_noncontiguous_J(device, dtype):
    base = torch.randn(45, 60, dtype=dtype, device=device)
    J = base.T  # [60 rows, 45 cols], not contiguous
    A = torch.zeros(45, 45, dtype=dtype, device=device)
    ops.jtj_accumulate_(A, J)
    A_ref, _ = reference(torch.zeros(45, 45), J.cpu(), None, None, 1.0)
    torch.testing.assert_close(A.double().cpu(), A_ref, **tol(dtype, 60))


def test_alpha_zero_leaves_A(device):
    A = random_symmetric(20, torch.float64, device)
    before = A.clone()
    ops.jtj_accumulate_(A, torch.randn(5, 20, dtype=torch.float64, device=device), alpha=0.0)
    assert torch.equal(A, before)


@pytest.mark.parametrize("with_g", [False, True])
def test_opcheck(device, dtype, with_g):
    J = torch.randn(17, 9, dtype=dtype, device=device)
    A = torch.zeros(9, 9, dtype=dtype, device=device)
    r = torch.randn(17, dtype=dtype, device=device) if with_g else None
    g = torch.zeros(9, dtype=dtype, device=device) if with_g else None
    torch.library.opcheck(torch.ops.marquardt.jtj_accumulate_.default, (A, J, r, g, 0.5))


class TestErrors:
    def test_wrong_dtype(self):
        with pytest.raises(RuntimeError, match=r"jtj_accumulate_: A must be float32 or float64"):
            ops.jtj_accumulate_(torch.zeros(3, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64))

    def test_mismatched_dtype(self):
        with pytest.raises(RuntimeError, match=r"jtj_accumulate_: J and A must have the same dtype"):
            ops.jtj_accumulate_(torch.zeros(3, 3), torch.zeros(2, 3, dtype=torch.float64))

    def test_wrong_shape(self):
        with pytest.raises(RuntimeError, match=r"J must have shape \[rows, 3\]"):
            ops.jtj_accumulate_(torch.zeros(3, 3), torch.zeros(2, 4))
        with pytest.raises(RuntimeError, match=r"A must be a square matrix"):
            ops.jtj_accumulate_(torch.zeros(3, 4), torch.zeros(2, 4))
        with pytest.raises(RuntimeError, match=r"rows >= 1"):
            ops.jtj_accumulate_(torch.zeros(3, 3), torch.zeros(0, 3))
        with pytest.raises(RuntimeError, match=r"r must have shape \[2\]"):
            ops.jtj_accumulate_(torch.zeros(3, 3), torch.zeros(2, 3), torch.zeros(5), torch.zeros(3))
        with pytest.raises(RuntimeError, match=r"g must have shape \[3\]"):
            ops.jtj_accumulate_(torch.zeros(3, 3), torch.zeros(2, 3), torch.zeros(2), torch.zeros(4))

    def test_r_without_g(self):
        with pytest.raises(RuntimeError, match=r"r and g must be given together"):
            ops.jtj_accumulate_(torch.zeros(3, 3), torch.zeros(2, 3), torch.zeros(2), None)

    def test_noncontiguous_A(self):
        with pytest.raises(RuntimeError, match=r"A must be contiguous"):
            ops.jtj_accumulate_(torch.zeros(6, 6)[::2, ::2], torch.zeros(2, 3))

    @pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
    def test_mismatched_devices(self):
        with pytest.raises(RuntimeError, match=r"must be on the same device"):
            ops.jtj_accumulate_(torch.zeros(3, 3, device="cuda"), torch.zeros(2, 3))


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("rows,n", [(1, 1), (8192, 300), (1000, 1025), (77, 2048)])
def test_cuda_matches_cpu(dtype, rows, n):
    J = torch.randn(rows, n, dtype=dtype)
    r = torch.randn(rows, dtype=dtype)
    A_cpu, g_cpu = torch.zeros(n, n, dtype=dtype), torch.zeros(n, dtype=dtype)
    ops.jtj_accumulate_(A_cpu, J, r, g_cpu)
    A_gpu, g_gpu = A_cpu.new_zeros(n, n).cuda(), g_cpu.new_zeros(n).cuda()
    ops.jtj_accumulate_(A_gpu, J.cuda(), r.cuda(), g_gpu)
    torch.testing.assert_close(A_gpu.cpu(), A_cpu, **tol(dtype, rows))
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, **tol(dtype, rows))


class TestCpuKernelChoice:
    def test_default_is_avx512_exactly_when_the_cpu_has_it(self, monkeypatch):
        monkeypatch.delenv("MARQUARDT_CPU_SYRK")
        assert ops.cpu_syrk_kernel() == ("avx512" if HAS_AVX512 else "gemm")
        monkeypatch.setenv("MARQUARDT_CPU_SYRK", "auto")
        assert ops.cpu_syrk_kernel() == ("avx512" if HAS_AVX512 else "gemm")

    def test_bad_value_is_refused_by_name(self, monkeypatch):
        monkeypatch.setenv("MARQUARDT_CPU_SYRK", "fast")
        with pytest.raises(RuntimeError, match="MARQUARDT_CPU_SYRK must be 'auto', 'avx512' or 'gemm'"):
            ops.jtj_accumulate_(torch.zeros(3, 3), torch.randn(2, 3))

    @pytest.mark.skipif(HAS_AVX512, reason="this CPU has AVX-512")
    def test_forcing_avx512_without_it_is_refused(self, monkeypatch):
        monkeypatch.setenv("MARQUARDT_CPU_SYRK", "avx512")
        with pytest.raises(RuntimeError, match="no AVX-512"):
            ops.cpu_syrk_kernel()


@pytest.mark.parametrize(
    "rows,n",
    # the AVX-512 kernel's blocking edges: register tile (8 rows by 24 doubles / 48 floats), depth 256,
    # 256-row broadcast blocks, and 4096-column vector blocks (n = 4100 with two rows)
    [(256, 23), (255, 24), (257, 25), (1, 47), (2, 48), (3, 49), (512, 255), (511, 256), (7, 513), (2, 4100)],
)
def test_cpu_blocking_edges(dtype, rows, n):
    J = torch.randn(rows, n, dtype=dtype)
    A = random_symmetric(n, dtype, "cpu")
    r = torch.randn(2 * rows, dtype=dtype)[::2]  # strided residuals
    g = torch.randn(n, dtype=dtype)
    A_ref, g_ref = reference(A, J, r, g, -0.75)
    ops.jtj_accumulate_(A, J, r, g, alpha=-0.75)
    torch.testing.assert_close(A.double(), A_ref, **tol(dtype, rows))
    torch.testing.assert_close(g.double(), g_ref, **tol(dtype, rows))
    assert torch.equal(A, A.T)


@pytest.mark.parametrize("rows,n", [(60000, 20), (40000, 33), (20000, 47), (3000, 60)])
def test_cpu_tall_chunks(dtype, rows, n):
    # Tall and narrow: the AVX-512 kernel splits rows between threads and sums private matrices (or, in
    # float32 below 48 columns, hands over to the GEMM kernel); both must give the reference.
    J = torch.randn(rows, n, dtype=dtype)
    r = torch.randn(rows, dtype=dtype)
    A = random_symmetric(n, dtype, "cpu")
    g = torch.randn(n, dtype=dtype)
    A_ref, g_ref = reference(A, J, r, g, 1.0 / rows)
    ops.jtj_accumulate_(A, J, r, g, alpha=1.0 / rows)
    torch.testing.assert_close(A.double(), A_ref, **tol(dtype, rows, scale=1.0 / rows))
    torch.testing.assert_close(g.double(), g_ref, **tol(dtype, rows, scale=1.0 / rows))
    assert torch.equal(A, A.T)


def test_cpu_result_does_not_depend_on_threads_or_layout(dtype, cpu_kernel):
    # rows * n² = 5.4e7 flops: enough for the kernels to use every thread. In the AVX-512 kernel each entry
    # of A is summed in the same order whatever the split of the columns between threads (as here: 300
    # columns are enough for column ranges) or the memory layout of J, so its results are bitwise equal;
    # BLAS promises no such thing, so the GEMM path is held to rounding.
    J = torch.randn(600, 300, dtype=dtype)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            A = torch.zeros(300, 300, dtype=dtype)
            ops.jtj_accumulate_(A, J)
            results.append(A)
        A_transposed_layout = torch.zeros(300, 300, dtype=dtype)
        ops.jtj_accumulate_(A_transposed_layout, J.T.contiguous().T)
    finally:
        torch.set_num_threads(before)
    for other in (results[1], results[2], A_transposed_layout):
        if cpu_kernel == "avx512":
            assert torch.equal(results[0], other)
        else:
            torch.testing.assert_close(other, results[0], **tol(dtype, 600))
    A_ref, _ = reference(torch.zeros(300, 300), J, None, None, 1.0)
    torch.testing.assert_close(results[0].double(), A_ref, **tol(dtype, 600))

