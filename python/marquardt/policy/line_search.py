"""The learning-rate line search on failed steps (paper §2.5, Algorithm 2; docs/algorithm.md, "Line searches").

When a trial is rejected, a line search along the attempt's step δ looks for a multiplier s with
f(θ + sδ) < C₀ (or takes the best one whatever it is, with ``apply_always``, as the authors' code does).

A decrease found on a plateau is not taken: where f is exactly constant around s (f(θ + s(1 ± 2⁻²⁰)δ) = f(θ + sδ)
to the last bit) although it fell from f(θ) by far more than its rounding, the model has most likely underflowed
there (an exponential of a large negative argument is 0, so the Jacobian and the gradient are exactly 0 and no
step can leave). The trial then counts as rejected, and the λ rule shrinks the step as it would without a line
search.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from .registry import Registry

GRIDS = ("log", "paper_code", "paper_text")


def grid(kind: str) -> list[float]:
    """Candidate step multipliers.

    * ``log``: 25 log-spaced values over [1e-6, 9] (uniform relative resolution).
    * ``paper_code``: (0.01 + 0.05 k)³, k = 0..39 (the authors' code).
    * ``paper_text``: arange(1e-6, 9, 0.125) (the literal reading of Algorithm 2).
    """
    if kind == "log":
        return torch.logspace(math.log10(1e-6), math.log10(9.0), 25, dtype=torch.float64).tolist()
    if kind == "paper_code":
        return (torch.arange(0.01, 2.0, 0.05, dtype=torch.float64) ** 3).tolist()
    if kind == "paper_text":
        return torch.arange(1e-6, 9.0, 0.125, dtype=torch.float64).tolist()
    raise ValueError(f"line_search: expected one of {GRIDS}, got {kind!r}")


def _finite_or_inf(loss_at: Callable[[float], float]) -> Callable[[float], float]:
    def safe(s: float) -> float:
        value = loss_at(s)
        return value if math.isfinite(value) else math.inf

    return safe


class LineSearch(ABC):
    """Searches f(θ + sδ) over multipliers s; non-finite losses count as +inf."""

    def __init__(self, apply_always: bool = False) -> None:
        #: take the best multiplier even when it does not decrease the loss (the authors' code)
        self.apply_always = apply_always

    @abstractmethod
    def search(self, loss_at: Callable[[float], float], c0: float) -> tuple[float, float, int]:
        """(s*, f(θ + s*δ), evaluations)."""

    def take(self, loss_at: Callable[[float], float], c0: float,
             known: dict[float, float]) -> tuple[float, float] | None:
        """(s*, f(θ + s*δ)) when the search finds a multiplier to take (a decrease not found on a plateau,
        :func:`on_plateau`; or any finite loss with ``apply_always``), else None. ``known``: losses already
        evaluated by multiplier (the failed trial point, where backtracking starts and may double back), reused
        instead of evaluated again."""

        def memo(s: float) -> float:
            if s not in known:
                known[s] = loss_at(s)
            return known[s]

        s_star, c_star, _ = self.search(memo, c0)
        if not math.isfinite(c_star):
            return None
        if self.apply_always:
            return s_star, c_star
        if c_star < c0 and not on_plateau(memo, s_star, c_star, c0):
            return s_star, c_star
        return None


#: the relative change of the multiplier at which :func:`on_plateau` looks for a change of the loss
PLATEAU_PROBE = 2.0**-20
#: how many ulps of the loss a smooth loss must change by at the probes for an unchanged loss to mean a plateau
PLATEAU_ULPS = 16


def on_plateau(loss_at: Callable[[float], float], s: float, value: float, c0: float) -> bool:
    """Whether f(θ + sδ) = ``value`` is a flat stretch that floating point made (an underflowed model), not a
    point from which the fit can go on: f is exactly ``value`` at s(1 ± PLATEAU_PROBE) although a smooth f
    could not be.

    A smooth f that fell by Δ = f(θ) − f(θ + sδ) between 0 and s changes between s and s(1 ± p) by about Δ·p at
    a point where it still falls, and by Δ·p² where s is its minimiser along the line (the quadratic through
    both points). Only where Δ·p² exceeds PLATEAU_ULPS ulps of the loss does an unchanged loss at both probes
    rule out a smooth f; below that (a fit at its noise floor, where decreases are a few ulps) nothing is
    probed. The second probe is evaluated only when the first finds the loss unchanged, so a genuine point
    costs one evaluation."""
    if (c0 - value) * PLATEAU_PROBE**2 <= PLATEAU_ULPS * math.ulp(value):
        return False
    return all(loss_at(s * (1.0 + side * PLATEAU_PROBE)) == value for side in (1.0, -1.0))


class Backtracking(LineSearch):
    """s = 1, halved until the loss decreases (≤ 20 tries), then doubled while it keeps decreasing (≤ 30
    evaluations in all). Our default: it reached the sine noise floor in as few iterations as the log grid with
    about 3x fewer forward passes (benchmarks/paper/sine_ablation.py)."""

    def search(self, loss_at: Callable[[float], float], c0: float) -> tuple[float, float, int]:
        safe = _finite_or_inf(loss_at)
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


class GridSearch(LineSearch):
    """Every multiplier of a fixed grid (:func:`grid`); the best one wins."""

    def __init__(self, kind: str = "log", apply_always: bool = False) -> None:
        super().__init__(apply_always)
        self.candidates = grid(kind)

    def search(self, loss_at: Callable[[float], float], c0: float) -> tuple[float, float, int]:
        safe = _finite_or_inf(loss_at)
        values = [safe(s) for s in self.candidates]
        best_index = min(range(len(values)), key=values.__getitem__)
        return self.candidates[best_index], values[best_index], len(values)


LINE_SEARCHES: Registry[LineSearch] = Registry("line_search", LineSearch)


@LINE_SEARCHES.register("backtrack")
def _backtrack(settings: Any) -> LineSearch:
    return Backtracking(settings.line_search_apply_always)


def _grid_search(kind: str, settings: Any) -> LineSearch:
    return GridSearch(kind, settings.line_search_apply_always)


for _kind in GRIDS:
    LINE_SEARCHES.register(_kind)(functools.partial(_grid_search, _kind))
