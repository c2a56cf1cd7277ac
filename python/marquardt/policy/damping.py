"""Damping vectors d, with DᵀD = diag(d) in (A + λ DᵀD) δ = −g (docs/algorithm.md, "Damping")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from .. import ops
from ..solve.system import System
from .registry import Registry


class Damping(ABC):
    """Updates the damping vector d (float64, in the optimizer state) from this step's system."""

    @abstractmethod
    def update(self, d: torch.Tensor, system: System) -> torch.Tensor:
        """The damping for this iteration, written into d in place (and returned)."""


def running_max_(d: torch.Tensor, diagonal: torch.Tensor, floor: float) -> torch.Tensor:
    """d ← max(d, diagonal, floor) in place, by the native ``max_diag_update_`` (NaN entries never enter d).

    The op reads the diagonal of a matrix through its strides; a vector is given as the diagonal of an n × n
    view whose rows all start at the same element (row stride 0), so that no matrix is formed."""
    values = diagonal.to(d.dtype)
    n = values.shape[0]
    ops.max_diag_update_(d, values.as_strided((n, n), (0, values.stride(0))), floor)
    return d


class MaxDiagonal(Damping):
    """The paper's running maximum dⱼ ← max(dⱼ, Aⱼⱼ, floor), d₀ = d_init (Pooladzandi & Zhou §2.2). It never
    decreases, so a parameter whose column vanishes keeps its damping: no "parameter evaporation"."""

    def __init__(self, floor: float = 0.0) -> None:
        self.floor = floor

    def update(self, d: torch.Tensor, system: System) -> torch.Tensor:
        return running_max_(d, system.diagonal(), self.floor)


class Levenberg(Damping):
    """d = 1: λI damping (Levenberg 1944)."""

    def update(self, d: torch.Tensor, system: System) -> torch.Tensor:
        return d.fill_(1.0)


class Marquardt(Damping):
    """d = diag(A) of this iteration, floored at max(floor, 1e-12) (Marquardt 1963)."""

    def __init__(self, floor: float = 0.0) -> None:
        self.floor = floor

    def update(self, d: torch.Tensor, system: System) -> torch.Tensor:
        return d.copy_(system.diagonal().clamp_min(max(self.floor, 1e-12)))


DAMPING: Registry[Damping] = Registry("damping", Damping)


@DAMPING.register("max_diagonal")
def _max_diagonal(settings: Any) -> Damping:
    return MaxDiagonal(settings.floor)


@DAMPING.register("levenberg")
def _levenberg(settings: Any) -> Damping:
    return Levenberg()


@DAMPING.register("marquardt")
def _marquardt(settings: Any) -> Damping:
    return Marquardt(settings.floor)
