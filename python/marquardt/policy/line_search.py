"""The learning-rate line search on failed steps (paper §2.5, Algorithm 2; ALGORITHM.md §4)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

GRIDS = ("log", "paper_code", "paper_text", "backtrack")


def grid(kind: str) -> list[float]:
    """Candidate step multipliers.

    * ``log`` (default): 25 log-spaced values over [1e-6, 9] (uniform relative resolution).
    * ``paper_code``: (0.01 + 0.05 k)³, k = 0..39 (the authors' code).
    * ``paper_text``: arange(1e-6, 9, 0.125) (the literal reading of Algorithm 2).
    """
    if kind == "log":
        return torch.logspace(math.log10(1e-6), math.log10(9.0), 25, dtype=torch.float64).tolist()
    if kind == "paper_code":
        return (torch.arange(0.01, 2.0, 0.05, dtype=torch.float64) ** 3).tolist()
    if kind == "paper_text":
        return torch.arange(1e-6, 9.0, 0.125, dtype=torch.float64).tolist()
    raise ValueError(f"line_search: expected one of {GRIDS} or None, got {kind!r}")


def search(kind: str, loss_at: Callable[[float], float], c0: float) -> tuple[float, float, int]:
    """(s*, f(θ + s*δ), evaluations). Non-finite losses count as +inf."""

    def safe(s: float) -> float:
        value = loss_at(s)
        return value if math.isfinite(value) else math.inf

    if kind == "backtrack":
        # s = 1, halved until the loss decreases (≤ 20 tries), then doubled while it keeps decreasing.
        s, evals = 1.0, 0
        best_s, best = 0.0, math.inf
        for _ in range(20):
            value = safe(s)
            evals += 1
            if value < best:
                best_s, best = s, value
            if value < c0:
                break
            s *= 0.5
        if best < c0:
            while evals < 30:
                value = safe(best_s * 2.0)
                evals += 1
                if value < best:
                    best_s, best = best_s * 2.0, value
                else:
                    break
        return best_s, best, evals
    candidates = grid(kind)
    values = [safe(s) for s in candidates]
    best_index = min(range(len(values)), key=values.__getitem__)
    return candidates[best_index], values[best_index], len(values)
