"""λ update rules (docs/algorithm.md, "λ rules"): fixed factors, delayed gratification, Nielsen, and a scaled trust
region (Moré 1978, MINPACK's ``lmpar``).

A rule maps (λ, ν) to the next (λ, ν) after an accepted or a rejected trial; ν is the rule's own state (the
Nielsen growth factor, the trust region's radius; the factor rules leave it alone). The bounds come with each
call, because mini-batch training raises the floor while the batches change (the optimizer's
``lambda_min_minibatch``). Before each attempt a rule may also pick λ from the system itself
(:meth:`LambdaRule.choose`): the trust region does, so that its step has the length of its radius.
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

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

    def choose(self, lam: float, nu: float, system: Any, theta: torch.Tensor, first: bool) -> tuple[float, float]:
        """(λ, ν) for the next attempt on ``system`` (whose damping is set), before its step is solved; ``first``:
        the first attempt of the optimizer's first step. The factor rules keep λ as it is."""
        return lam, nu


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


class TrustRegionRule(LambdaRule):
    """A scaled trust region: ν is the radius Δ of the step in the norm ‖Dδ‖ (D² = d, the damping vector: the running
    maximum of diag A, so D holds MINPACK's running maximum of J's column norms), and λ is whatever makes the
    step that long (Moré 1978, "The Levenberg-Marquardt algorithm: implementation and theory"; MINPACK ``lmpar``).

    - Δ₀ = factor·‖Dθ₀‖ (factor itself when that is 0), then no longer than the first step.
    - λ: 0 when the Gauss-Newton step satisfies ‖Dδ‖ ≤ 1.1Δ; otherwise the safeguarded Newton iteration on
      1/‖Dδ(λ)‖ − 1/Δ until |‖Dδ‖ − Δ| ≤ 0.1Δ (at most 10 solves), with ‖Dδ‖'s derivative −(D²δ)ᵀH⁻¹(D²δ)/‖Dδ‖
      from the same Cholesky factor, H = A + λD², and the bounds [l, u] of Moré's §5. Where the solve fails below
      some λ (H singular to working precision), the search stays above the largest failed λ, and takes the
      first λ solved within a factor 2 of it once the radius lies past that edge (its step is the longest there
      is). Out of iterations right after a failed solve, λ is the last one solved.
    - After a trial with gain ratio ρ: ρ ≤ 0.25 or rejected: Δ ← ½·min(Δ, 10‖Dδ‖); ρ ≥ 0.75 or λ = 0:
      Δ ← 2‖Dδ‖; otherwise Δ stays.
    """

    #: |‖Dδ‖ − Δ| ≤ SIGMA·Δ ends the iteration (MINPACK's 0.1)
    SIGMA = 0.1
    ITERATIONS = 10

    def __init__(self, factor: float = 100.0) -> None:
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"trust_region_factor: expected a finite number > 0, got {factor}")
        self.factor = factor
        self.step_norm: float | None = None  # ‖Dδ‖ of the attempt's LM step, for the radius update

    def choose(self, lam: float, nu: float, system: Any, theta: torch.Tensor, first: bool) -> tuple[float, float]:
        d_sqrt = system.d.sqrt()
        radius = nu
        if first:
            scaled_theta = float(torch.linalg.vector_norm(d_sqrt * theta.to(d_sqrt.dtype), dtype=torch.float64))
            radius = self.factor * scaled_theta if scaled_theta > 0 else self.factor
        if not radius > 0:  # (halved past the smallest float: no step is short enough, so none is tried)
            self.step_norm = 0.0
            return sys.float_info.max, 0.0
        lam = self._lmpar(system, radius, d_sqrt, lam)
        if first and self.step_norm is not None:
            radius = min(radius, self.step_norm)
        return lam, radius

    def _lmpar(self, system: Any, radius: float, d_sqrt: torch.Tensor, lam: float) -> float:
        """λ ≥ 0 with |‖Dδ(λ)‖ − Δ| ≤ 0.1Δ, or 0 when the Gauss-Newton step is short enough (MINPACK lmpar)."""
        gauss_newton = system.scaled_step_norm(0.0)
        lower = 0.0
        if gauss_newton is not None:
            norm = gauss_newton
            if norm <= (1.0 + self.SIGMA) * radius:
                self.step_norm = norm
                return 0.0
            term = system.scaled_step_slope(0.0)
            if math.isfinite(term) and radius * term > 0:
                lower = (norm - radius) * norm * norm / (radius * term)
        g_scaled = float(torch.linalg.vector_norm(system.g.double() / d_sqrt.double().clamp_min(1e-300)))
        upper = g_scaled / radius if g_scaled > 0 else 1.0
        lam = min(max(lam, lower), upper)
        if lam == 0.0:
            lam = g_scaled / max(gauss_newton, 1e-300) if gauss_newton is not None else 1e-3 * upper
        self.step_norm = None
        failed = 0.0  # the largest λ whose solve failed (A + λD² singular to working precision)
        solved: tuple[float, float] | None = None  # the last λ whose solve succeeded, and its ‖Dδ‖
        for _ in range(self.ITERATIONS):
            if lam <= 0.0:
                lam = max(1e-300, 1e-3 * upper)
            lam = min(lam, sys.float_info.max)  # (a subnormal radius overflows the bounds)
            scaled = system.scaled_step_norm(lam)
            if scaled is None:  # (not positive definite at this λ: go up)
                lower = failed = lam
                lam = max(2.0 * lam, math.sqrt(max(lam, 1e-300) * upper))
                continue
            norm = scaled
            self.step_norm = norm
            solved = (lam, norm)
            excess = norm - radius
            if abs(excess) <= self.SIGMA * radius:
                break
            term = system.scaled_step_slope(lam)
            if not (math.isfinite(term) and radius * term > 0):
                break
            if excess > 0:
                lower = max(lower, lam)
            else:
                upper = min(upper, lam)
            lam = max(lower, lam + excess * norm * norm / (radius * term))
            if lam < 2.0 * failed:  # (the radius lies at or past the edge where solves fail: near it, from above)
                if solved[0] <= 2.0 * failed:  # (within a factor 2 of the edge: the last solved λ's step is taken)
                    lam = solved[0]
                    break
                lam = math.sqrt(failed * solved[0])
        else:  # (out of iterations right after a failed solve: the last λ solved, whose step is known to exist)
            if scaled is None and solved is not None:
                lam, self.step_norm = solved
        return min(lam, sys.float_info.max)  # (finite, so that a checkpoint holds it)

    def accepted(self, lam: float, nu: float, gain_ratio: float | None, bounds: LambdaBounds) -> tuple[float, float]:
        rho = gain_ratio if gain_ratio is not None else 1.0
        norm = self.step_norm if self.step_norm is not None else nu
        if rho <= 0.25:
            return 2.0 * lam, 0.5 * min(nu, norm / 0.1)
        if lam == 0.0 or rho >= 0.75:
            return 0.5 * lam, 2.0 * norm
        return lam, nu

    def rejected(self, lam: float, nu: float, bounds: LambdaBounds) -> tuple[float, float]:
        norm = self.step_norm if self.step_norm is not None else nu
        return 2.0 * lam, 0.5 * min(nu, norm / 0.1)


LAMBDA_RULES: Registry[LambdaRule] = Registry("lambda_rule", LambdaRule)


@LAMBDA_RULES.register("fixed")
@LAMBDA_RULES.register("delayed")
def _factor_rule(settings: Any) -> LambdaRule:
    return FactorRule(settings.up, settings.down)


@LAMBDA_RULES.register("nielsen")
def _nielsen(settings: Any) -> LambdaRule:
    return NielsenRule()


@LAMBDA_RULES.register("trust_region")
def _trust_region(settings: Any) -> LambdaRule:
    return TrustRegionRule(settings.trust_factor)
