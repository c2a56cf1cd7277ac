"""Shared fixtures: devices (cpu, plus cuda when a GPU and a CUDA build are present) and seeding."""

from __future__ import annotations

import pytest
import torch

import marquardt

HAS_CUDA = torch.cuda.is_available() and marquardt.WITH_CUDA
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (minutes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run with ``--slow`` (or MARQUARDT_SLOW_TESTS=1) only."""
    import os

    if config.getoption("--slow") or os.environ.get("MARQUARDT_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of marquardt")


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


HAS_AVX512 = _cpu_has_avx512()
CPU_KERNELS = ["gemm"] + (["avx512"] if HAS_AVX512 else [])


@pytest.fixture(params=CPU_KERNELS)
def cpu_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per CPU SYRK kernel this machine has (the ops read the variable at each call)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cuda" and request.param != CPU_KERNELS[0]:
        # The choice does not touch CUDA tensors: one run is enough (and keeps gpu_check.sh's memcheck short).
        pytest.skip("the CPU kernel choice does not apply to CUDA tensors")
    monkeypatch.setenv("MARQUARDT_CPU_SYRK", request.param)
    assert marquardt.ops.cpu_syrk_kernel() == request.param
    return request.param

