"""marquardt: Levenberg-Marquardt training for PyTorch, with native C++/CUDA kernels."""

from __future__ import annotations

from . import ops
from ._loader import BUILT_WITH_TORCH, WITH_CUDA

__version__ = "0.1.0"

__all__ = ["ops", "WITH_CUDA", "BUILT_WITH_TORCH", "__version__"]
