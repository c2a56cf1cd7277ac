"""Damping matrices DᵀD = diag(d) (ALGORITHM.md §2.1)."""

from __future__ import annotations

import torch

DAMPING_KINDS = ("max_diagonal", "levenberg", "marquardt")


def update_damping(kind: str, d: torch.Tensor, system, floor: float) -> torch.Tensor:
    """The damping vector for this iteration, updated in place from the system's diagonal.

    * ``max_diagonal`` (paper, default): running maximum dⱼ ← max(dⱼ, Aⱼⱼ), d₀ = 0.01 (never decreases, so a
      parameter whose column vanishes keeps its damping: no "parameter evaporation").
    * ``levenberg``: d = 1 (λ I).
    * ``marquardt``: d = diag(A) of this iteration, floored.
    """
    if kind == "max_diagonal":
        return system.update_max_diagonal(d, floor)
    if kind == "levenberg":
        return d.fill_(1.0)
    if kind == "marquardt":
        return d.copy_(system.diagonal().clamp_min(max(floor, 1e-12)))
    raise ValueError(f"damping: expected one of {DAMPING_KINDS}, got {kind!r}")
