"""Uphill step acceptance (Transtrum & Sethna §4; ALGORITHM.md §2.3) with a divergence guard."""

from __future__ import annotations

import math

import torch


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
