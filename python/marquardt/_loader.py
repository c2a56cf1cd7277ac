"""Loads the compiled op library and refuses a torch other than the one it was built against."""

from __future__ import annotations

import torch


def _load() -> tuple[bool, str]:
    try:
        from . import _build_info
    except ImportError as exc:  # pragma: no cover - only in a source tree that was never built
        raise ImportError(
            "marquardt's native extension is not built. Install the package with "
            "'pip install --no-build-isolation .' (or -e . for development) against the torch you use."
        ) from exc
    built, running = _build_info.TORCH_VERSION, torch.__version__
    if built != running:
        raise ImportError(
            f"marquardt was built against torch {built} but torch {running} is installed. Rebuild it against "
            "the installed torch: pip install --no-build-isolation --force-reinstall --no-deps ."
        )
    from . import _C  # type: ignore[attr-defined]  # noqa: F401  (compiled; importing runs the registrations)

    return bool(_build_info.WITH_CUDA), built


WITH_CUDA, BUILT_WITH_TORCH = _load()
