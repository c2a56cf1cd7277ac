"""Generalized residuals: one code path for Gauss-Newton, GGN and empirical Fisher (ALGORITHM.md §0.2).

Every curvature mode writes the objective's curvature and gradient as

    A = (1/N) 𝒥ᵀ𝒥,   g = (1/N) 𝒥ᵀρ,

with per-sample rows 𝒥ᵢ = Wᵢᵀ J_{z,i} (J_{z,i} = ∂zᵢ/∂θ, the Jacobian of the network output of sample i) and a
generalized residual ρᵢ. A mode is therefore fully described by the output-space weights Wᵢ (c × q) and
ρᵢ (q), which is what :meth:`Curvature.weights` returns:

=========  ================================  =====================  ===================================
mode       Wᵢ                                ρᵢ                     objective f
=========  ================================  =====================  ===================================
``gn``     I (c × c)                         zᵢ − yᵢ                (1/N) Σ ½‖zᵢ − yᵢ‖²
``ggn``    Lᵢ = diag(√pᵢ) − pᵢ√pᵢᵀ            (pᵢ − yᵢ) ⊘ √pᵢ        (1/N) Σ CE(zᵢ, yᵢ)
``ef``     pᵢ − yᵢ (c × 1)                   1                      (1/N) Σ CE(zᵢ, yᵢ)
=========  ================================  =====================  ===================================

For ``ggn``, Lᵢ Lᵢᵀ = diag(pᵢ) − pᵢpᵢᵀ is the Hessian of the cross-entropy with respect to the logits, so
𝒥ᵢᵀ𝒥ᵢ = J_zᵀ H J_z (the exact GGN, equal to the Fisher) and Lᵢρᵢ = pᵢ − yᵢ (the logit gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Probabilities are clamped before the square root so that ρ = (p − y)/√p stays finite (ALGORITHM.md §3.2).
_P_FLOOR = 1e-12


class Curvature:
    """Base class of a curvature mode: the loss value and the output-space factor of its curvature."""

    name = "base"
    #: whether the geodesic correction has a meaning for this mode (not for the empirical Fisher).
    supports_geodesic = True

    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The objective f = (1/N) Σ ℓᵢ (a 0-dim tensor)."""
        return self.per_sample_loss(outputs, targets).mean()

    def weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output-space weights W [N, c, q] and generalized residual ρ [N, q] (see the module docstring)."""
        raise NotImplementedError

    def hessian_factor(self, outputs: torch.Tensor) -> torch.Tensor:
        """L [N, c, c] with L Lᵀ = ∂²ℓ/∂z² (used by the geodesic correction)."""
        raise NotImplementedError


def _flat_outputs(outputs: torch.Tensor) -> torch.Tensor:
    return outputs.reshape(outputs.shape[0], -1)


class GaussNewtonMSE(Curvature):
    """``gn``: ℓᵢ = ½‖zᵢ − yᵢ‖² with the Gauss-Newton matrix (1/N) Σ J_zᵀJ_z."""

    name = "gn"

    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if targets.shape != outputs.shape:
            raise ValueError(
                f"targets: expected the shape of the model output {tuple(outputs.shape)} for loss='mse', "
                f"got {tuple(targets.shape)}"
            )

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * _flat_outputs(outputs - targets).pow(2).sum(dim=1)

    def weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = _flat_outputs(outputs)
        n, c = z.shape
        eye = torch.eye(c, dtype=z.dtype, device=z.device).expand(n, c, c)
        return eye, z - _flat_outputs(targets)

    def hessian_factor(self, outputs: torch.Tensor) -> torch.Tensor:
        z = _flat_outputs(outputs)
        return torch.eye(z.shape[1], dtype=z.dtype, device=z.device).expand(z.shape[0], -1, -1)


class _CrossEntropy(Curvature):
    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if outputs.dim() != 2:
            raise ValueError(f"model output: expected logits [N, C] for cross-entropy, got {tuple(outputs.shape)}")
        n, c = outputs.shape
        if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            if targets.shape != (n,):
                raise ValueError(f"targets: expected class indices of shape ({n},), got {tuple(targets.shape)}")
            if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= c):
                raise ValueError(
                    f"targets: class indices must lie in [0, {c - 1}] for {c} logits, "
                    f"got range [{int(targets.min())}, {int(targets.max())}]"
                )
        elif targets.shape != (n, c):
            raise ValueError(
                f"targets: expected class indices ({n},) or class probabilities ({n}, {c}), "
                f"got {tuple(targets.shape)} of dtype {targets.dtype}"
            )

    @staticmethod
    def _one_hot(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 1:
            return F.one_hot(targets.long(), outputs.shape[1]).to(outputs.dtype)
        return targets.to(outputs.dtype)

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 1:
            return F.cross_entropy(outputs, targets.long(), reduction="none")
        return -(targets.to(outputs.dtype) * F.log_softmax(outputs, dim=1)).sum(dim=1)

    def hessian_factor(self, outputs: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(outputs, dim=1)
        sqrt_p = p.clamp_min(_P_FLOOR).sqrt()
        return torch.diag_embed(sqrt_p) - p.unsqueeze(2) * sqrt_p.unsqueeze(1)


class GeneralizedGaussNewtonCE(_CrossEntropy):
    """``ggn``: exact generalized Gauss-Newton (= Fisher) of softmax cross-entropy via L = diag(√p) − p√pᵀ."""

    name = "ggn"

    def weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(outputs, dim=1)
        y = self._one_hot(outputs, targets)
        sqrt_p = p.clamp_min(_P_FLOOR).sqrt()
        return self.hessian_factor(outputs), (p - y) / sqrt_p


class EmpiricalFisherCE(_CrossEntropy):
    """``ef``: the paper's eq. 7, (1/N) Σ ∇ℓᵢ∇ℓᵢᵀ, with one row (the per-sample gradient) per sample."""

    name = "ef"
    supports_geodesic = False

    def weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(outputs, dim=1)
        grad_z = p - self._one_hot(outputs, targets)
        return grad_z.unsqueeze(2), torch.ones(outputs.shape[0], 1, dtype=outputs.dtype, device=outputs.device)


def make_curvature(loss: str, curvature: str | None) -> Curvature:
    """The curvature object for a loss name and an optional curvature override."""
    if loss == "mse":
        if curvature not in (None, "gn"):
            raise ValueError(f"curvature: loss='mse' supports only 'gn', got {curvature!r}")
        return GaussNewtonMSE()
    if loss == "cross_entropy":
        choice = curvature or "ggn"
        if choice == "ggn":
            return GeneralizedGaussNewtonCE()
        if choice == "ef":
            return EmpiricalFisherCE()
        raise ValueError(f"curvature: loss='cross_entropy' supports 'ggn' (default) or 'ef', got {curvature!r}")
    raise ValueError(f"loss: expected 'mse', 'cross_entropy' or a residual callable, got {loss!r}")
