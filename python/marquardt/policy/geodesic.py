"""Geodesic acceleration (Transtrum & Sethna 2012, §3; ALGORITHM.md §2.5).

With v the step of this attempt (the LMAM step when momentum is on), the second-order correction is

    a = −(A + λ diag d)⁻¹ α 𝒥ᵀ ρ_vv,   ρ_vv,ᵢ = Wᵢᵀ z_vv,ᵢ,   z_vv = Σ_{μν} v_μ v_ν ∂_μ∂_ν z,

where z_vv is computed exactly by nested forward-mode AD (jvp of jvp) and Wᵢ is the mode's output-space
factor (I for ``gn``, L for ``ggn``). The step becomes v + ½a if 2‖a‖/‖v‖ ≤ α_geo, else the attempt is rejected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp


def second_directional_derivative(
    outputs: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """z_vv = d²/dτ² outputs(θ + τv) at τ = 0, by jvp of jvp."""

    def directional(t: torch.Tensor) -> torch.Tensor:
        return jvp(outputs, (t,), (v,))[1]

    return jvp(directional, (theta,), (v,))[1]


def acceptable(v: torch.Tensor, a: torch.Tensor, alpha: float) -> bool:
    """T&S's test 2‖a‖/‖v‖ ≤ α."""
    nv = float(v.norm())
    return nv > 0 and bool(torch.isfinite(a).all()) and 2.0 * float(a.norm()) / nv <= alpha
