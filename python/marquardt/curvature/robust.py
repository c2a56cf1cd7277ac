r"""Robust losses for least squares, as ``scipy.optimize.least_squares`` defines them, with the Triggs
correction that Ceres and scipy apply to the residuals and their Jacobian.

A robust loss replaces ½ rₖ² by ½ ρ(rₖ²): with a scale f, ρ_f(s) = f² ρ(s/f²), and

=============  ==================================  ===========================  ================================
``robust``     ρ(s)                                ρ'(s)                        ρ''(s)
=============  ==================================  ===========================  ================================
``linear``     s                                   1                            0
``huber``      s for s ≤ 1, else 2√s − 1          1, else s^(−½)               0, else −½ s^(−3/2)
``soft_l1``    2(√(1 + s) − 1)                     (1 + s)^(−½)                 −½ (1 + s)^(−3/2)
``cauchy``     ln(1 + s)                           1/(1 + s)                    −1/(1 + s)²
``arctan``     arctan(s)                           1/(1 + s²)                   −2s/(1 + s²)²
=============  ==================================  ===========================  ================================

The Gauss-Newton model of ½ ρ(r²) around r (Triggs et al., "Bundle adjustment — a modern synthesis", 2000,
§4.3; scipy's ``least_squares``) has the curvature (ρ' + 2ρ'' r²) JᵀJ and the gradient ρ' Jᵀr. As generalized
residuals (docs/algorithm.md, "Curvature modes"): W = √(ρ' + 2ρ'' r²) per residual, floored at the square root
of machine epsilon as scipy floors it, and ρ_gen = ρ' r / W, so that W ρ_gen = ρ' r exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from .losses import GaussNewtonMSE, _flat_outputs

ROBUST_LOSSES = ("linear", "huber", "soft_l1", "cauchy", "arctan")


def rho(kind: str, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ρ(s), ρ'(s), ρ''(s)) of a robust loss at s = r² (unit scale)."""
    if kind == "linear":
        return s, torch.ones_like(s), torch.zeros_like(s)
    if kind == "huber":
        inside = s <= 1.0
        root = s.clamp_min(1.0).sqrt()  # (the clamp keeps the branch not taken finite)
        return (torch.where(inside, s, 2.0 * root - 1.0), torch.where(inside, torch.ones_like(s), 1.0 / root),
                torch.where(inside, torch.zeros_like(s), -0.5 / root**3))
    if kind == "soft_l1":
        t = 1.0 + s
        return 2.0 * (t.sqrt() - 1.0), t.rsqrt(), -0.5 * t.rsqrt() ** 3
    if kind == "cauchy":
        t = 1.0 + s
        return torch.log1p(s), 1.0 / t, -1.0 / t**2
    if kind == "arctan":
        t = 1.0 + s * s
        return torch.arctan(s), 1.0 / t, -2.0 * s / t**2
    raise ValueError(f"robust: expected one of {ROBUST_LOSSES}, got {kind!r}")


class RobustGaussNewton(GaussNewtonMSE):
    """½ Σₖ ρ_f(rₖ²) per sample with r = z − y (or the residuals themselves), and its Triggs-corrected
    Gauss-Newton curvature (see the module docstring)."""

    identity_weights = False
    least_squares = True

    def __init__(self, kind: str, scale: float = 1.0, factor: float = 1.0, per_entry_mean: bool = False) -> None:
        self.kind, self.scale_f = kind, float(scale)  # (the kind is checked with the options)
        self.factor, self.per_entry_mean = float(factor), per_entry_mean

    def scale(self, outputs_per_sample: int) -> float:
        """nn.HuberLoss(delta) is ½ρ_f with f = delta per entry, nn.SmoothL1Loss(beta) the same divided by beta;
        with reduction='mean' both average over every entry (÷ c per sample)."""
        return self.factor / outputs_per_sample if self.per_entry_mean else self.factor

    def _rho(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ρ_f, ρ_f', ρ_f'') at s = r², ρ_f(s) = f² ρ(s/f²)."""
        f2 = self.scale_f**2
        value, first, second = rho(self.kind, r * r / f2)
        return f2 * value, first, second / f2

    def _raw(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        return _flat_outputs(outputs if targets is None else outputs - targets)

    def per_sample_loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        return 0.5 * self._rho(self._raw(outputs, targets))[0].sum(dim=1)

    def jacobian_scale(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        """√(ρ' + 2ρ'' r²) per residual [N, c], floored at √eps (scipy's floor)."""
        r = self._raw(outputs, targets)
        _, first, second = self._rho(r)
        eps = torch.finfo(r.dtype).eps
        return (first + 2.0 * second * r * r).clamp_min(eps).sqrt()

    def weights(self, outputs: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        r = self._raw(outputs, targets)
        w = self.jacobian_scale(outputs, targets)
        return torch.diag_embed(w), self._rho(r)[1] * r / w

    def hessian_factor(self, outputs: torch.Tensor, targets: Any = None) -> torch.Tensor:
        return torch.diag_embed(self.jacobian_scale(outputs, targets))
