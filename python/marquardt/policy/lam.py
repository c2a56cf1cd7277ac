"""λ update rules (docs/algorithm.md, "λ rules"): fixed factors, delayed gratification, Nielsen.

A rule maps (λ, ν) to the next (λ, ν) after an accepted or a rejected trial; ν is the rule's own state (the
Nielsen growth factor; the factor rules leave it alone). The bounds come with each call, because mini-batch
training raises the floor while the batches change (the optimizer's ``lambda_min_minibatch``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from .registry import Registry


@dataclass(frozen=True)
class LambdaBounds:
    """[minimum, maximum] for λ; ``skip_outside``: the authors' code makes no update at all outside them."""

    minimum: float = 1e-10
    maximum: float = 1e10
    skip_outside: bool = False

    @classmethod
    def for_step(cls, settings: Any, lam: float, minibatch: bool) -> tuple[LambdaBounds, float]:
        """λ's bounds for a step from the λ settings (minimum, maximum, skip_outside, minibatch_minimum), and λ
        raised to the mini-batch floor while the batches change."""
        minimum = settings.minimum
        if minibatch and settings.minibatch_minimum is not None:
            minimum = max(minimum, settings.minibatch_minimum)
            lam = max(lam, minimum)
        return cls(minimum, settings.maximum, settings.skip_outside), lam


class LambdaRule(ABC):
    """How λ moves after an accepted or a rejected trial."""

    @abstractmethod
    def accepted(self, lam: float, nu: float, gain_ratio: float | None, bounds: LambdaBounds) -> tuple[float, float]:
        """(λ, ν) after an accepted step; ``gain_ratio`` = actual / predicted reduction (None: no prediction)."""

    @abstractmethod
    def rejected(self, lam: float, nu: float, bounds: LambdaBounds) -> tuple[float, float]:
        """(λ, ν) after a rejected trial."""


class FactorRule(LambdaRule):
    """λ ← λ/down on success, λ·up on failure (Marquardt 1963; ``fixed`` with the paper's 10/10). With up = 2 and
    down = 3 it is Transtrum & Sethna's "delayed gratification" (``delayed``, the default)."""

    def __init__(self, up: float = 2.0, down: float = 3.0) -> None:
        if not (up > 1 and down > 1):
            raise ValueError(f"lambda factors: up and down must be > 1, got up={up}, down={down}")
        self.up = up
        self.down = down

    def accepted(self, lam: float, nu: float, gain_ratio: float | None, bounds: LambdaBounds) -> tuple[float, float]:
        if bounds.skip_outside and lam < bounds.minimum:
            return lam, nu
        return max(lam / self.down, bounds.minimum), nu

    def rejected(self, lam: float, nu: float, bounds: LambdaBounds) -> tuple[float, float]:
        if bounds.skip_outside and lam > bounds.maximum:
            return lam, nu
        return min(lam * self.up, bounds.maximum), nu


class NielsenRule(LambdaRule):
    """Nielsen (1999): on success λ ← λ·max(1/3, 1 − (2ρ − 1)³), ν ← 2; on failure λ ← λν, ν ← 2ν, with ρ the gain
    ratio (Madsen, Nielsen & Tingleff, "Methods for non-linear least squares problems", 2004, eq. 3.15)."""

    def accepted(self, lam: float, nu: float, gain_ratio: float | None, bounds: LambdaBounds) -> tuple[float, float]:
        rho = gain_ratio if gain_ratio is not None else 1.0
        # The factor is 1/3 for every ρ ≥ 1; the clip only keeps the cube of an extreme ρ (a predicted
        # reduction near zero) from overflowing a Python float, which raises instead of giving inf.
        rho = min(max(rho, -1e3), 1e3)
        factor = max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
        return min(max(lam * factor, bounds.minimum), bounds.maximum), 2.0

    def rejected(self, lam: float, nu: float, bounds: LambdaBounds) -> tuple[float, float]:
        return min(lam * nu, bounds.maximum), 2.0 * nu


LAMBDA_RULES: Registry[LambdaRule] = Registry("lambda_rule", LambdaRule)


@LAMBDA_RULES.register("fixed")
@LAMBDA_RULES.register("delayed")
def _factor_rule(settings: Any) -> LambdaRule:
    return FactorRule(settings.up, settings.down)


@LAMBDA_RULES.register("nielsen")
def _nielsen(settings: Any) -> LambdaRule:
    return NielsenRule()
