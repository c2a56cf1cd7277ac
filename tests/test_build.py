"""The package under test is the installed wheel, built against this torch."""

from __future__ import annotations

import pathlib

import pytest
import torch

import marquardt


def test_tests_run_against_installed_package():
    source_tree = pathlib.Path(__file__).resolve().parents[1] / "python"
    assert source_tree not in pathlib.Path(marquardt.__file__).resolve().parents


def test_built_against_running_torch():
    assert marquardt.BUILT_WITH_TORCH == torch.__version__


def test_ops_registered_for_cpu():
    for name in ("jtj_accumulate_", "max_diag_update_", "damped_cholesky_solve", "damped_cholesky_factor"):
        op = getattr(torch.ops.marquardt, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")


def test_version_mismatch_is_refused(monkeypatch):
    import importlib

    import pytest

    from marquardt import _build_info, _loader

    monkeypatch.setattr(_build_info, "TORCH_VERSION", "0.0.1")
    with pytest.raises(ImportError, match=r"built against torch 0.0.1 .* Rebuild"):
        importlib.reload(_loader)
    monkeypatch.undo()
    importlib.reload(_loader)


def test_installed_package_declares_its_type_hints():
    """PEP 561: the py.typed marker ships in the wheel, so users' type checkers read our annotations."""
    assert (pathlib.Path(marquardt.__file__).parent / "py.typed").is_file()


def test_one_openmp_runtime_in_the_process():
    # The extension is built with -fopenmp (at::parallel_for's pragma is compiled into it) and links
    # libgomp.so.1; that must resolve to the copy torch has loaded, never to a second OpenMP runtime.
    maps = pathlib.Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    from marquardt import ops

    ops.jtj_accumulate_(torch.zeros(300, 300), torch.randn(600, 300))  # runs the threaded kernels
    runtimes = {line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line}
    assert len(runtimes) <= 1, f"two OpenMP runtimes loaded: {sorted(runtimes)}"
