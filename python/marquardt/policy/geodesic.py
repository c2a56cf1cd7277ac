"""Geodesic acceleration (Transtrum & Sethna 2012, §3; docs/algorithm.md, "Geodesic acceleration").

With v the step of this attempt (the LMAM step when momentum is on), the second-order correction is

    a = −(A + λ diag d)⁻¹ α 𝒥ᵀ ρ_vv,   ρ_vv,ᵢ = Wᵢᵀ z_vv,ᵢ,   z_vv = Σ_{μν} v_μ v_ν ∂_μ∂_ν z,

where z_vv is computed exactly by nested forward-mode AD (jvp of jvp; the objective's
:func:`~marquardt.curvature.second_order.second_directional_derivative`) and Wᵢ is the mode's output-space
factor (I for ``gn``, L for ``ggn``). The step becomes v + ½a if 2‖a‖/‖v‖ ≤ α_geo, else the attempt is rejected.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..solve.system import System


def acceptable(v: torch.Tensor, a: torch.Tensor, alpha: float) -> bool:
    """T&S's test 2‖a‖/‖v‖ ≤ α."""
    nv = float(v.norm())
    return nv > 0 and bool(torch.isfinite(a).all()) and 2.0 * float(a.norm()) / nv <= alpha


class SecondOrderResidual(Protocol):
    """ρ_vv of one direction v, from the objective: in row space, or as the gradient-like α𝒥ᵀρ_vv."""

    def rows(self) -> torch.Tensor: ...
    def gradient(self) -> torch.Tensor: ...


class GeodesicAcceleration:
    """The corrected step v + ½a, or None when the correction fails T&S's test 2‖a‖/‖v‖ ≤ ``alpha``."""

    def __init__(self, alpha: float = 0.75) -> None:
        self.alpha = alpha

    def correct(self, v: torch.Tensor, lam: float, system: System,
                residual: SecondOrderResidual) -> torch.Tensor | None:
        if system.keeps_rows:  # the dual form solves from ρ_vv in row space, without forming 𝒥ᵀρ_vv
            x, ok = system.solve_rows(lam, residual.rows())
        else:
            x, ok = system.solve(lam, residual.gradient())
        a = -x
        if not (ok and acceptable(v, a, self.alpha)):
            return None
        return v + 0.5 * a
