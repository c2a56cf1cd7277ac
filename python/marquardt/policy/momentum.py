"""LMAM / OLMAM adaptive momentum (Ampazis & Perantonis; docs/algorithm.md, "Momentum (LMAM)").

Given the LM step δ_LM = −H⁻¹g (H = A + λ diag d, the damped matrix of this attempt) and the previous accepted
displacement s, LMAM returns the step dθ that maximises dθᵀHs subject to dθᵀH dθ = δP² and gᵀdθ = δQ:

    I_GG = gᵀH⁻¹g = −gᵀδ_LM,   I_GF = gᵀs,   I_FF = sᵀHs,   δQ = −ξ δP √I_GG,
    c_m = √((I_GG δP² − δQ²)/(I_FF I_GG − I_GF²)),   c_g = (c_m I_GF − δQ)/I_GG,
    dθ = c_g δ_LM + c_m s.

(eq. 11 with the paper's eq. 12 typo fixed: I_GF = gᵀdθ_{t−1}.) Degenerate cases fall back to δ_LM (§1.6).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from .registry import Registry


@dataclass
class MomentumResult:
    step: torch.Tensor
    used: bool
    reason: str


class Momentum(ABC):
    """Reshapes this attempt's LM step using the previous accepted step."""

    @abstractmethod
    def apply(self, delta_lm: torch.Tensor, g: torch.Tensor, s: torch.Tensor | None,
              i_ff: float | None) -> MomentumResult:
        """The step to try; ``s`` the previous accepted step and ``i_ff`` = sᵀ H s for this attempt's damped H."""


class LMAM(Momentum):
    """LMAM (Ampazis & Perantonis 2002, eq. 11): the radius δP is ``delta_p`` ('absolute', the paper's code) or
    κ√I_GG ('relative', the default), and ξ is fixed. ``paper_code_factor2`` reproduces the authors' code, which
    doubles c_g (docs/algorithm.md, "The paper's experiments")."""

    def __init__(self, delta_p_mode: str = "relative", delta_p: float = 0.6, kappa: float = 0.5, xi: float = 0.9,
                 paper_code_factor2: bool = False) -> None:
        if delta_p_mode not in ("relative", "absolute"):
            raise ValueError(f"delta_p_mode: expected 'relative' or 'absolute', got {delta_p_mode!r}")
        if not 0 < xi < 1:
            raise ValueError(f"xi: must lie in (0, 1), got {xi}")
        if delta_p <= 0 or kappa <= 0:
            raise ValueError(f"delta_p and kappa must be > 0, got {delta_p}, {kappa}")
        self.delta_p_mode = delta_p_mode
        self.delta_p = delta_p
        self.kappa = kappa
        self.xi = xi
        self.paper_code_factor2 = paper_code_factor2

    def radius(self, i_gg: float, i_gf: float, i_ff: float) -> tuple[float, float] | None:
        """(ξ, δP) for this attempt; None falls back to the LM step."""
        delta_p = self.delta_p if self.delta_p_mode == "absolute" else self.kappa * math.sqrt(i_gg)
        return self.xi, delta_p

    def apply(self, delta_lm: torch.Tensor, g: torch.Tensor, s: torch.Tensor | None,
              i_ff: float | None) -> MomentumResult:
        if s is None or i_ff is None or not bool(torch.any(s != 0)):
            return MomentumResult(delta_lm, False, "no previous step")
        dl, gg, ss = delta_lm.double(), g.double(), s.double()
        i_gg = float(-(gg @ dl))
        i_gf = float(gg @ ss)
        if not (i_gg > 0 and math.isfinite(i_gg) and math.isfinite(i_gf) and math.isfinite(i_ff) and i_ff > 0):
            return MomentumResult(delta_lm, False, "non-positive or non-finite I_GG / I_FF")
        radius = self.radius(i_gg, i_gf, i_ff)
        if radius is None:
            return MomentumResult(delta_lm, False, "OLMAM xi outside (0, 1)")
        xi, delta_p = radius
        delta_q = -xi * delta_p * math.sqrt(i_gg)
        # Products, not **: a Python float power raises OverflowError where a product gives inf, and inf or
        # nan fails the test below, so extreme scales fall back to the LM step instead of crashing.
        num = i_gg * delta_p * delta_p - delta_q * delta_q
        den = i_ff * i_gg - i_gf * i_gf
        if not (den > 1e-10 * i_ff * i_gg and num > 0):
            return MomentumResult(delta_lm, False, "previous step parallel to the LM step (degenerate)")
        c_m = math.sqrt(num / den)
        c_g = (c_m * i_gf - delta_q) / i_gg
        if self.paper_code_factor2:
            c_g *= 2.0
        step = (c_g * dl + c_m * ss).to(delta_lm.dtype)
        if not bool(torch.isfinite(step).all()):
            return MomentumResult(delta_lm, False, "non-finite momentum step")
        return MomentumResult(step, True, "lmam")


class OLMAM(LMAM):
    """OLMAM (Ampazis & Perantonis 2002, §3): ξ and δP chosen per step, ξ = √(1 − I_GF²/(I_GG I_FF)) and
    δP = √I_GG / ``divisor``; no fixed radius or ξ to tune."""

    def __init__(self, divisor: float = 16.0, paper_code_factor2: bool = False) -> None:
        super().__init__(paper_code_factor2=paper_code_factor2)
        self.divisor = divisor

    def radius(self, i_gg: float, i_gf: float, i_ff: float) -> tuple[float, float] | None:
        xi = math.sqrt(max(0.0, 1.0 - i_gf * i_gf / (i_gg * i_ff)))
        if not 0 < xi < 1:
            return None
        return xi, math.sqrt(i_gg) / self.divisor


#: when an attempt also evaluates the plain LM step and keeps whichever of the two lowers the loss more
COMPARISON_RULES = ("repeated_batch", "always", "never")


def compares_with_lm_step(rule: str, batch_changed: bool) -> bool:
    """Whether this attempt compares the momentum step with the plain LM step (one more loss evaluation).

    The default, ``'repeated_batch'``, compares on a batch that repeats the last step's (full-batch training, a
    curve fit) and trusts momentum on changing batches. The reason: with a fixed batch, LMAM's radius κ√I_GG
    holds every step to a fraction of the Gauss-Newton step, which turns the fast local convergence of LM into a
    linear one (MGH least-squares set, 17 of 18 solved and a median of 67 iterations, against 18 and 24.5 with the
    comparison), while far from a minimum the momentum step is often the better one (noisy-sine network: a median
    of 32 iterations to the noise floor, against 36 for LMAM alone and 47 without momentum). A mini-batch's loss
    is a noisy view of the objective, which a one-step comparison would follow; there momentum alone is kept
    (MNIST, the paper's setting). Measured by ``benchmarks/momentum_rule.py``.
    """
    if rule not in COMPARISON_RULES:
        raise ValueError(f"compare_lm_step: expected one of {COMPARISON_RULES}, got {rule!r}")
    return rule == "always" or (rule == "repeated_batch" and not batch_changed)


MOMENTUM: Registry[Momentum] = Registry("momentum", Momentum)


@MOMENTUM.register("lmam")
def _lmam(settings: Any) -> Momentum:
    return LMAM(settings.delta_p_mode, settings.delta_p, settings.kappa, settings.xi, settings.paper_code_factor2)


@MOMENTUM.register("olmam")
def _olmam(settings: Any) -> Momentum:
    return OLMAM(paper_code_factor2=settings.paper_code_factor2)
