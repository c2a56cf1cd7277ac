"""Loads the compiled op library and refuses a torch other than the one it was built against."""

from __future__ import annotations

import importlib

import torch


def _load() -> tuple[bool, str]:
    try:
        from ._build_info import TORCH_VERSION, WITH_CUDA  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - only in a source tree that was never built
        raise ImportError(
            "marquardt's native extension is not built. Install the package with "
            "'pip install --no-build-isolation .' (or -e . for development) against the torch you use."
        ) from exc
    built, running = TORCH_VERSION, torch.__version__
    if built != running:
        raise ImportError(
            f"marquardt was built against torch {built} but torch {running} is installed. Rebuild it against "
            "the installed torch: pip install --no-build-isolation --force-reinstall --no-deps ."
        )
    importlib.import_module(f"{__package__}._C")  # the compiled library: importing it runs the registrations

    return bool(WITH_CUDA), built


WITH_CUDA, BUILT_WITH_TORCH = _load()
