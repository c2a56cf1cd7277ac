"""Acceptance: downhill, Transtrum & Sethna's uphill test with our guard, the gain ratio, the cosine."""

from __future__ import annotations

import math

import pytest
import torch

from marquardt.policy.acceptance import ACCEPTANCE, Downhill, GuardedUphill, accept_uphill, cosine


def test_uphill_rule():
    # β = 0.9: (0.1)² C₁ ≤ C₀ allows up to 100x, but the guard caps at 1.5x
    assert accept_uphill(1.0, 1.4, 0.9, 2, 1.5)
    assert not accept_uphill(1.0, 1.6, 0.9, 2, 1.5)
    assert accept_uphill(1.0, 50.0, 0.9, 2, None)
    assert not accept_uphill(1.0, 150.0, 0.9, 2, None)
    # β ≤ 0: no uphill allowance at all
    assert not accept_uphill(1.0, 1.0001, 0.0, 2, None)
    assert not accept_uphill(1.0, 1.0001, -0.7, 2, None)
    # b = 1 accepts less freely than b = 2
    assert accept_uphill(1.0, 3.0, 0.5, 2, None) and not accept_uphill(1.0, 3.0, 0.5, 1, None)
    assert not accept_uphill(1.0, math.inf, 0.99, 2, None)


def test_cosine():
    u = torch.tensor([1.0, 0.0])
    assert cosine(u, torch.tensor([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(u, torch.zeros(2)) == 0.0
    assert cosine(u, torch.tensor([1.0, 1.0]), metric=torch.tensor([1.0, 0.0])) == pytest.approx(1.0)


def test_downhill_and_guarded_uphill_decisions():
    step = torch.tensor([1.0, 0.1])
    previous = torch.tensor([1.0, 0.0])  # cos ≈ 0.995: (1 − β)² ≈ 2.5e-5
    assert Downhill().decide(1.0, 1.0, step, previous) == "downhill"
    assert Downhill().decide(1.0, 1.2, step, previous) is None
    guarded = GuardedUphill(b=2.0, max_ratio=1.5)
    assert guarded.decide(1.0, 0.9, step, previous) == "downhill"
    assert guarded.decide(1.0, 1.2, step, previous) == "uphill"
    assert guarded.decide(1.0, 1.6, step, previous) is None  # past the guard
    assert guarded.decide(1.0, 1.2, step, None) is None  # no previous step: downhill only
    assert GuardedUphill(max_ratio=None).decide(1.0, 1.6, step, previous) == "uphill"


def test_gain_ratio():
    assert Downhill.gain_ratio(1.0, 0.5, 0.25) == 2.0
    assert Downhill.gain_ratio(1.0, 0.5, 0.0) is None and Downhill.gain_ratio(1.0, 0.5, -1.0) is None


class _Settings:
    uphill_b, uphill_max_ratio = 3.0, 2.0


def test_registry():
    built = ACCEPTANCE.build("uphill", _Settings())
    assert isinstance(built, GuardedUphill) and (built.b, built.max_ratio) == (3.0, 2.0)
    assert type(ACCEPTANCE.build("downhill", _Settings())) is Downhill


def test_anti_parallel_previous_step_gives_no_uphill_allowance():
    """cos = −1: (1 − β) is clipped to 1, so only downhill passes (|cos| would wrongly allow uphill)."""
    guarded = GuardedUphill(b=2.0, max_ratio=None)
    step = torch.tensor([1.0, 0.0])
    assert guarded.decide(1.0, 1.01, step, -step) is None
    assert guarded.decide(1.0, 1.01, step, step * 3) == "uphill"
    assert cosine(step, -step) == pytest.approx(-1.0)


def test_gain_ratio_is_negative_when_the_loss_rises():
    assert Downhill.gain_ratio(1.0, 1.5, 0.2) == pytest.approx(-2.5)


@pytest.mark.parametrize("c0, c1", [(math.inf, 1.0), (1.0, math.inf), (math.nan, 1.0), (1.0, math.nan)])
def test_no_uphill_step_from_or_to_a_non_finite_loss(c0, c1):
    assert not accept_uphill(c0, c1, beta=0.5, b=2.0, max_ratio=None)


def test_the_uphill_allowance_is_capped_at_one():
    """β < 0 would make (1 − β)^b > 1 and refuse even a downhill point; the factor is clipped to 1."""
    assert accept_uphill(1.2, 1.0, beta=-0.5, b=2.0, max_ratio=None)


def test_both_uphill_limits_are_inclusive():
    # (1 − β)^b C₁ = 0.25 · 4 = C₀ exactly
    assert accept_uphill(1.0, 4.0, beta=0.5, b=2.0, max_ratio=None)
    # C₁ = max_ratio · C₀ = 3 exactly, and (1 − β)^b C₁ = 0.75 ≤ C₀
    assert accept_uphill(2.0, 3.0, beta=0.5, b=2.0, max_ratio=1.5)
    assert not accept_uphill(2.0, 3.0 + 1e-12, beta=0.5, b=2.0, max_ratio=1.5)


def test_cosine_in_a_diagonal_metric():
    u = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    v = torch.tensor([0.5, -1.0, 3.0], dtype=torch.float64)
    w = torch.tensor([4.0, 0.25, 2.0], dtype=torch.float64)
    expected = float((u * w) @ v) / math.sqrt(float((u * w) @ u) * float((v * w) @ v))
    assert cosine(u, v, w) == pytest.approx(expected, rel=1e-14)
    assert cosine(u, v, w) != pytest.approx(cosine(u, v), rel=1e-3)
