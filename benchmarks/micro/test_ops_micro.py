"""pytest-benchmark microbenchmarks: each native op beside its plain-torch twins (grouped per case).

    pytest benchmarks/micro --benchmark-only                      # CPU
    pytest benchmarks/micro --benchmark-only --device cuda        # GPU (see benchmarks/gpu_check.sh)

The timed callables synchronise the device before returning, so GPU figures measure work, not launches.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.ops_cases import JTJ_GEMM_KERNEL, SOLVE_LAPACK_POTRF, jtj_case, solve_case
from benchmarks.timing import machine_description, sync

CPU_SIZES = {"jtj": [(2048, 512), (8192, 2048)], "solve": [512, 2048]}
GPU_SIZES = {"jtj": [(8192, 1024), (8192, 4096)], "solve": [1024, 4096]}


def pytest_generate_tests(metafunc):
    device = metafunc.config.getoption("--device")
    sizes = GPU_SIZES if device == "cuda" else CPU_SIZES
    if "jtj_shape" in metafunc.fixturenames:
        metafunc.parametrize("jtj_shape", sizes["jtj"], ids=lambda s: f"rows{s[0]}-n{s[1]}")
    if "solve_n" in metafunc.fixturenames:
        metafunc.parametrize("solve_n", sizes["solve"], ids=lambda n: f"n{n}")


@pytest.fixture
def bench_device(request) -> str:
    device = request.config.getoption("--device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return device


def _run(benchmark, case, candidate, device):
    if candidate not in case.candidates:
        pytest.skip(f"{candidate} is not a separate candidate here (device {device})")
    fn = case.candidates[candidate]
    benchmark.group = case.name
    benchmark.extra_info["machine"] = machine_description(device)

    def timed():
        out = fn()
        sync(device)
        return out

    benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("candidate", ["jtj_accumulate_", JTJ_GEMM_KERNEL, "J.T @ J", "addmm_"])
def test_jtj(benchmark, bench_device, jtj_shape, dtype, candidate):
    _run(benchmark, jtj_case(*jtj_shape, dtype, bench_device), candidate, bench_device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "candidate", ["damped_cholesky_solve", SOLVE_LAPACK_POTRF, "linalg.solve", "cholesky+cholesky_solve"]
)
def test_solve(benchmark, bench_device, solve_n, dtype, candidate):
    _run(benchmark, solve_case(solve_n, dtype, bench_device), candidate, bench_device)
