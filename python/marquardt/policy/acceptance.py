"""Whether a trial step is taken: downhill only, or guarded uphill steps (Transtrum & Sethna 2012, §4;
docs/algorithm.md, "Acceptance"), and the gain ratio that the λ rules read."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch

from .registry import Registry


def cosine(u: torch.Tensor, v: torch.Tensor, metric: torch.Tensor | None = None) -> float:
    """cos(u, v), Euclidean or in the diag(metric) inner product."""
    uu, vv = u.double(), v.double()
    w = metric.double() if metric is not None else None
    dot = float(uu @ (vv * w)) if w is not None else float(uu @ vv)
    nu = math.sqrt(float(uu @ (uu * w)) if w is not None else float(uu @ uu))
    nv = math.sqrt(float(vv @ (vv * w)) if w is not None else float(vv @ vv))
    if nu == 0 or nv == 0 or not math.isfinite(dot):
        return 0.0
    return dot / (nu * nv)


def accept_uphill(c0: float, c1: float, beta: float, b: float, max_ratio: float | None) -> bool:
    """(1 − β)^b · C₁ ≤ C₀ with (1 − β) clipped to ≤ 1, and C₁ ≤ max_ratio · C₀ when guarded.

    β = cos(δ_LM, previous accepted step): nearly parallel proposals may go uphill; β ≤ 0 gives no
    allowance (the test then reduces to downhill-only).
    """
    if not (math.isfinite(c0) and math.isfinite(c1)):
        return False
    factor = min(1.0, 1.0 - beta)
    if factor**b * c1 > c0:
        return False
    return max_ratio is None or c1 <= max_ratio * c0


class Acceptance(ABC):
    """Decides on a trial point: the reason it is taken ('downhill', 'uphill', ...) or None."""

    @abstractmethod
    def decide(self, c0: float, c1: float, delta_lm: torch.Tensor, previous_step: torch.Tensor | None) -> str | None:
        """C₀ the loss before, C₁ at the trial point; δ_LM this attempt's LM step, the previous accepted step."""

    @staticmethod
    def gain_ratio(c0: float, c1: float, predicted: float) -> float | None:
        """ρ = (C₀ − C₁) / predicted reduction (None when the model predicts no decrease)."""
        return (c0 - c1) / predicted if predicted > 0 else None


class Downhill(Acceptance):
    """Only steps that do not increase the loss: C₁ ≤ C₀."""

    def decide(self, c0: float, c1: float, delta_lm: torch.Tensor, previous_step: torch.Tensor | None) -> str | None:
        return "downhill" if c1 <= c0 else None


class GuardedUphill(Downhill):
    """Downhill, or uphill when (1 − β)^b C₁ ≤ C₀ with β = cos(δ_LM, previous step) (Transtrum & Sethna §4) and,
    when ``max_ratio`` is set, C₁ ≤ max_ratio · C₀ (our guard against divergence)."""

    def __init__(self, b: float = 2.0, max_ratio: float | None = 1.5) -> None:
        self.b = b
        self.max_ratio = max_ratio

    def decide(self, c0: float, c1: float, delta_lm: torch.Tensor, previous_step: torch.Tensor | None) -> str | None:
        reason = super().decide(c0, c1, delta_lm, previous_step)
        if reason is None and previous_step is not None:
            if accept_uphill(c0, c1, cosine(delta_lm, previous_step), self.b, self.max_ratio):
                return "uphill"
        return reason


ACCEPTANCE: Registry[Acceptance] = Registry("acceptance", Acceptance)


@ACCEPTANCE.register("downhill")
def _downhill(settings: Any) -> Acceptance:
    return Downhill()


@ACCEPTANCE.register("uphill")
def _uphill(settings: Any) -> Acceptance:
    return GuardedUphill(settings.uphill_b, settings.uphill_max_ratio)
