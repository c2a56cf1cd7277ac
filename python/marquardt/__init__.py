"""marquardt: Levenberg-Marquardt training for PyTorch, with native C++/CUDA kernels."""

from __future__ import annotations

from . import ops, pde
from ._loader import BUILT_WITH_TORCH, WITH_CUDA
from .optim.fit import FitResult, fit
from .optim.levenberg_marquardt import LevenbergMarquardt, StepResult
from .optim.solution import Covariance, CovarianceWarning

__version__ = "0.1.0"

__all__ = [
    "LevenbergMarquardt",
    "StepResult",
    "fit",
    "FitResult",
    "Covariance",
    "CovarianceWarning",
    "ops",
    "pde",
    "WITH_CUDA",
    "BUILT_WITH_TORCH",
    "__version__",
]
