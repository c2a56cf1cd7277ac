"""LMAM / OLMAM adaptive momentum (Ampazis & Perantonis; ALGORITHM.md §1).

Given the LM step δ_LM = −H⁻¹g (H = A + λ diag d, the damped matrix of this attempt) and the previous accepted
displacement s, LMAM returns the step dθ that maximises dθᵀHs subject to dθᵀH dθ = δP² and gᵀdθ = δQ:

    I_GG = gᵀH⁻¹g = −gᵀδ_LM,   I_GF = gᵀs,   I_FF = sᵀHs,   δQ = −ξ δP √I_GG,
    c_m = √((I_GG δP² − δQ²)/(I_FF I_GG − I_GF²)),   c_g = (c_m I_GF − δQ)/I_GG,
    dθ = c_g δ_LM + c_m s.

(eq. 11 with the paper's eq. 12 typo fixed: I_GF = gᵀdθ_{t−1}.) Degenerate cases fall back to δ_LM (§1.6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MomentumResult:
    step: torch.Tensor
    used: bool
    reason: str


@dataclass
class LMAM:
    """Settings: ``mode`` 'lmam' or 'olmam'; ``delta_p_mode`` 'relative' (δP = κ√I_GG) or 'absolute'."""

    mode: str = "lmam"
    delta_p_mode: str = "relative"
    delta_p: float = 0.6  # absolute radius (paper code)
    kappa: float = 0.5  # relative radius factor
    xi: float = 0.9
    olmam_divisor: float = 16.0
    paper_code_factor2: bool = False  # reproduce the authors' code, which doubles c_g (§1.7)

    def __post_init__(self) -> None:
        if self.mode not in ("lmam", "olmam"):
            raise ValueError(f"momentum: expected 'lmam', 'olmam' or None, got {self.mode!r}")
        if self.delta_p_mode not in ("relative", "absolute"):
            raise ValueError(f"delta_p_mode: expected 'relative' or 'absolute', got {self.delta_p_mode!r}")
        if not 0 < self.xi < 1:
            raise ValueError(f"xi: must lie in (0, 1), got {self.xi}")
        if self.delta_p <= 0 or self.kappa <= 0:
            raise ValueError(f"delta_p and kappa must be > 0, got {self.delta_p}, {self.kappa}")

    def apply(
        self, delta_lm: torch.Tensor, g: torch.Tensor, s: torch.Tensor | None, i_ff: float | None
    ) -> MomentumResult:
        """The LMAM step; ``i_ff`` = sᵀ H s for the damped matrix H of this attempt."""
        if s is None or i_ff is None or not bool(torch.any(s != 0)):
            return MomentumResult(delta_lm, False, "no previous step")
        dl, gg, ss = delta_lm.double(), g.double(), s.double()
        i_gg = float(-(gg @ dl))
        i_gf = float(gg @ ss)
        if not (i_gg > 0 and math.isfinite(i_gg) and math.isfinite(i_gf) and math.isfinite(i_ff) and i_ff > 0):
            return MomentumResult(delta_lm, False, "non-positive or non-finite I_GG / I_FF")
        if self.mode == "olmam":
            xi = math.sqrt(max(0.0, 1.0 - i_gf * i_gf / (i_gg * i_ff)))
            delta_p = math.sqrt(i_gg) / self.olmam_divisor
            if not 0 < xi < 1:
                return MomentumResult(delta_lm, False, "OLMAM xi outside (0, 1)")
        else:
            xi = self.xi
            delta_p = self.delta_p if self.delta_p_mode == "absolute" else self.kappa * math.sqrt(i_gg)
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
