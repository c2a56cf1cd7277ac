"""Generalized residuals: one code path for Gauss-Newton, GGN, empirical Fisher and binary cross-entropy
(docs/algorithm.md, "The step" and "Curvature modes").

Every curvature mode writes the objective's curvature and gradient as

    A = (1/N) 𝒥ᵀ𝒥,   g = (1/N) 𝒥ᵀρ,

with per-sample rows 𝒥ᵢ = Wᵢᵀ J_{z,i} (J_{z,i} = ∂zᵢ/∂θ, the Jacobian of the network output of sample i) and a
generalized residual ρᵢ. A mode is therefore fully described by the output-space weights Wᵢ (c × q) and
ρᵢ (q), which is what :meth:`Curvature.weights` returns:

=========  ================================  =====================  ===================================
mode       Wᵢ                                ρᵢ                     objective f
=========  ================================  =====================  ===================================
``gn``     I (c × c)                         zᵢ − yᵢ                (1/N) Σ ½‖zᵢ − yᵢ‖²
``ggn``    Lᵢ (c × (c−1), see below)          Lᵢ⁻¹-image of pᵢ − yᵢ  (1/N) Σ CE(zᵢ, yᵢ)
``ef``     pᵢ − yᵢ (c × 1)                   1                      (1/N) Σ CE(zᵢ, yᵢ)
=========  ================================  =====================  ===================================

For ``ggn``, Lᵢ Lᵢᵀ = diag(pᵢ) − pᵢpᵢᵀ is the Hessian of the cross-entropy with respect to the logits, so
𝒥ᵢᵀ𝒥ᵢ = J_zᵀ H J_z (the exact GGN, equal to the Fisher) and Lᵢρᵢ = pᵢ − yᵢ (the logit gradient).

The Hessian has rank c − 1 (the softmax ignores a shift of all logits), so Lᵢ has c − 1 columns rather than
the c of the textbook factor L = diag(√p) − p√pᵀ: a tenth fewer rows on MNIST, and a tenth less time in every
row-proportional cost (Jacobian, JᵀJ, the dual solve). With a reference class r (the most probable one, so
that p_r ≥ 1/c keeps the formulas well conditioned), the logits matter only through z̃ = z_{≠r} − z_r, whose
Hessian is H̃ = diag(p̃) − p̃p̃ᵀ (p̃ = p without class r). Writing s = √p̃, Σs² = 1 − p_r and
β = 1/(1 + √p_r), (I − βssᵀ)² = I − ssᵀ, so

    L̃ = diag(s) (I − βssᵀ)  has  L̃L̃ᵀ = H̃,    and    L = Mᵀ L̃,  M = [I | −1] (the map z ↦ z̃),

i.e. L's rows are those of L̃ for the classes ≠ r, and −√p_r sᵀ for class r. Then L Lᵀ = MᵀH̃M = H. The
residual solves L̃ρ = p̃ − ỹ: with (I − βssᵀ)⁻¹ = I + γssᵀ, γ = β/(1 − βsᵀs) = 1/(√p_r(1 + √p_r)), and sᵀ((p̃ − ỹ)/s) =
Σ(p̃ − ỹ) = y_r − p_r, ρ = (p̃ − ỹ)/s + γ (y_r − p_r) s; and Lρ = Mᵀ(p̃ − ỹ) = p − y because the entries of
p − y sum to zero.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Probabilities are clamped before the square root so that ρ = (p − y)/√p stays finite (docs/algorithm.md,
# "Curvature modes").
_P_FLOOR = 1e-12


class Curvature:
    """Base class of a curvature mode: the loss value and the output-space factor of its curvature."""

    name = "base"
    #: whether the geodesic correction has a meaning for this mode (not for the empirical Fisher).
    supports_geodesic = True
    #: whether W is the identity (Gauss-Newton): the rows are then the output Jacobian itself.
    identity_weights = False
    #: whether the objective is least squares in residuals r (Gauss-Newton, robust or not): a fit then has
    #: residuals, their Jacobian and a covariance
    least_squares = False

    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def per_sample_loss(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        """ℓᵢ per sample [N] (targets None: the outputs are residuals, for modes that allow it)."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The objective f = (1/N) Σ ℓᵢ (a 0-dim tensor)."""
        return self.per_sample_loss(outputs, targets).mean()

    def weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output-space weights W [N, c, q] and generalized residual ρ [N, q] (see the module docstring)."""
        raise NotImplementedError

    def hessian_factor(self, outputs: torch.Tensor, targets: Any = None) -> torch.Tensor:
        """The factor W [N, c, q] of :meth:`weights`, with W Wᵀ = ∂²ℓ/∂z² (used by the geodesic correction)."""
        raise NotImplementedError

    def batch_targets(self, targets: Any, outputs_per_sample: int) -> tuple[Any, torch.Tensor | None, float | None]:
        """(the targets the curvature reads, per-sample weights or None, the mean's normaliser or None for the
        number of samples), from a whole batch's targets: the identity here; a loss module with class weights,
        an ignored class or label smoothing turns its targets into weighted class distributions."""
        return targets, None, None

    def jacobian_scale(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor | None:
        """For least squares: the factor [N, c] of each residual's row in the Jacobian whose JᵀJ is the curvature
        (a robust loss's correction), None for 1."""
        return None

    def scale(self, outputs_per_sample: int) -> float:
        """A constant factor of the objective, f = scale · α Σ ℓᵢ: 1, or what makes the reported loss a loss
        module's own value (nn.MSELoss averages (z − y)² over every entry: 2/c times ½‖zᵢ − yᵢ‖²)."""
        return 1.0

    def residuals(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """ρ [N, q] alone (modes with :attr:`identity_weights`, whose W need not be formed)."""
        raise NotImplementedError

    def rows_per_sample(self, outputs_per_sample: int) -> int:
        """q, the number of generalized Jacobian rows per sample (columns of W)."""
        return outputs_per_sample


def _flat_outputs(outputs: torch.Tensor) -> torch.Tensor:
    return outputs.reshape(outputs.shape[0], -1)


class GaussNewtonMSE(Curvature):
    """``gn``: ℓᵢ = ½‖zᵢ − yᵢ‖² with the Gauss-Newton matrix (1/N) Σ J_zᵀJ_z."""

    name = "gn"
    identity_weights = True
    least_squares = True

    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if targets.shape != outputs.shape:
            raise ValueError(
                f"targets: expected the shape of the model output {tuple(outputs.shape)} for loss='mse', "
                f"got {tuple(targets.shape)}"
            )

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """½‖zᵢ − yᵢ‖²; targets None: the outputs are residuals already (½‖zᵢ‖², the same numbers as y = 0)."""
        residual = outputs if targets is None else outputs - targets
        return 0.5 * _flat_outputs(residual).pow(2).sum(dim=1)

    def residuals(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """ρ [N, c] = z − y (or z itself for targets None), the generalized residual of weights()."""
        return _flat_outputs(outputs if targets is None else outputs - targets)

    def weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = _flat_outputs(outputs)
        n, c = z.shape
        eye = torch.eye(c, dtype=z.dtype, device=z.device).expand(n, c, c)
        return eye, z - _flat_outputs(targets)

    def hessian_factor(self, outputs: torch.Tensor, targets: Any = None) -> torch.Tensor:
        z = _flat_outputs(outputs)
        return torch.eye(z.shape[1], dtype=z.dtype, device=z.device).expand(z.shape[0], -1, -1)


def check_class_targets(outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Logits [N, C ≥ 2] and class indices [N] in [0, C) or class probabilities [N, C], refused by name."""
    if outputs.dim() != 2:
        raise ValueError(f"model output: expected logits [N, C] for cross-entropy, got {tuple(outputs.shape)}")
    n, c = outputs.shape
    if c < 2:
        raise ValueError(
            f"model output: cross-entropy needs at least 2 logits per sample, got {c}; a single logit with 0/1 "
            "targets is binary cross-entropy (a softmax over one class is constant, its loss is always 0): give "
            "the model 2 outputs, or use a residual callable"
        )
    if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        if targets.shape != (n,):
            raise ValueError(f"targets: expected class indices of shape ({n},), got {tuple(targets.shape)}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= c):
            raise ValueError(
                f"targets: class indices must lie in [0, {c - 1}] for {c} logits, "
                f"got range [{int(targets.min())}, {int(targets.max())}]"
            )
    elif targets.shape != (n, c) or not targets.is_floating_point():
        raise ValueError(
            f"targets: expected class indices ({n},) or class probabilities ({n}, {c}), "
            f"got {tuple(targets.shape)} of dtype {targets.dtype}"
        )
    else:
        sums = targets.sum(dim=1)
        if bool((targets < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), rtol=0.0, atol=1e-5):
            raise ValueError(
                "targets: class probabilities must be >= 0 and sum to 1 in every row (got rows summing to "
                f"[{float(sums.min()):.6g}, {float(sums.max()):.6g}], minimum entry {float(targets.min()):.6g})"
            )


class _CrossEntropy(Curvature):
    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        check_class_targets(outputs, targets)

    @staticmethod
    def _one_hot(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 1:
            return F.one_hot(targets.long(), outputs.shape[1]).to(outputs.dtype)
        return targets.to(outputs.dtype)

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labels_or_probabilities = targets.long() if targets.dim() == 1 else targets.to(outputs.dtype)
        return F.cross_entropy(outputs, labels_or_probabilities, reduction="none")


def _softmax_factor(p: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L [N, c, c−1] with L Lᵀ = diag(p) − ppᵀ, and ρ [N, c−1] with Lρ = p − y when y is given).

    The rank-(c−1) factor of the module docstring. With a single class the Hessian is zero and so is the
    one-column factor.
    """
    n, c = p.shape
    if c == 1:
        return p.new_zeros(n, 1, 1), (p.new_zeros(n, 1) if y is not None else None)
    r = p.argmax(dim=1, keepdim=True)  # [N, 1]
    # The other classes in increasing order, then r: sorting on (class index + c if it is r) moves r last.
    classes = torch.arange(c, device=p.device)
    others = (classes + c * (classes == r)).argsort(dim=1)[:, : c - 1]
    p_t = p.gather(1, others)  # p̃ [N, c−1]
    p_r = p.gather(1, r)  # [N, 1]
    # The floor keeps ρ finite; the same s in L and ρ keeps Lρ = p − y exact (L Lᵀ is then off by < the floor).
    s = p_t.clamp_min(_P_FLOOR).sqrt()
    sqrt_pr = p_r.sqrt()
    beta = 1.0 / (1.0 + sqrt_pr)  # [N, 1]
    # L̃ = diag(s) − β p̃ sᵀ: entry (a, b) = s_a δ_ab − β p̃_a s_b.
    L_t = torch.diag_embed(s) - (beta * p_t).unsqueeze(2) * s.unsqueeze(1)
    L = p.new_empty(n, c, c - 1)
    L.scatter_(1, others.unsqueeze(2).expand(n, c - 1, c - 1), L_t)
    L.scatter_(1, r.unsqueeze(2).expand(n, 1, c - 1), (-sqrt_pr * s).unsqueeze(1))
    if y is None:
        return L, None
    diff = (p - y).gather(1, others)
    # γ = β / (1 − β sᵀs) makes (I − βssᵀ)(I + γssᵀ) = I for the floored s too (= 1/(√p_r(1 + √p_r)) without it).
    gamma = beta / (1.0 - beta * (s * s).sum(dim=1, keepdim=True))
    rho = diff / s - gamma * (p_r - y.gather(1, r)) * s
    return L, rho


class GeneralizedGaussNewtonCE(_CrossEntropy):
    """``ggn``: exact generalized Gauss-Newton (= Fisher) of softmax cross-entropy, with c − 1 rows per sample."""

    name = "ggn"

    def weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor, rho = _softmax_factor(torch.softmax(outputs, dim=1), self._one_hot(outputs, targets))
        assert rho is not None  # given targets, the factor comes with its residual
        return factor, rho

    def hessian_factor(self, outputs: torch.Tensor, targets: Any = None) -> torch.Tensor:
        return _softmax_factor(torch.softmax(outputs, dim=1))[0]

    def rows_per_sample(self, outputs_per_sample: int) -> int:
        return max(outputs_per_sample - 1, 1)


class EmpiricalFisherCE(_CrossEntropy):
    """``ef``: the paper's eq. 7, (1/N) Σ ∇ℓᵢ∇ℓᵢᵀ, with one row (the per-sample gradient) per sample."""

    name = "ef"
    supports_geodesic = False

    def rows_per_sample(self, outputs_per_sample: int) -> int:
        return 1

    def weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(outputs, dim=1)
        grad_z = p - self._one_hot(outputs, targets)
        return grad_z.unsqueeze(2), torch.ones(outputs.shape[0], 1, dtype=outputs.dtype, device=outputs.device)


class ScaledMSE(GaussNewtonMSE):
    """nn.MSELoss: the mean (or sum) of (z − y)² over every entry, 2/c (or 2) times the ``mse`` objective."""

    def __init__(self, per_entry_mean: bool) -> None:
        self.per_entry_mean = per_entry_mean

    def scale(self, outputs_per_sample: int) -> float:
        return 2.0 / outputs_per_sample if self.per_entry_mean else 2.0


class BinaryCrossEntropy(Curvature):
    """``bce_with_logits``: ℓᵢ = Σ_k BCE(zᵢₖ, yᵢₖ) over the logits of sample i (one logit: binary; several:
    multi-label), with the exact generalized Gauss-Newton factor.

    With a = w⁺y + 1 − y (w⁺ the positive-class weight, 1 without) and p = σ(z), each logit's loss
    −[w⁺y log p + (1 − y) log(1 − p)] has gradient a·p − w⁺y and second derivative a·p(1 − p). So W is diagonal
    with Wₖₖ = √(a p (1 − p)) and ρₖ = (a p − w⁺y)/Wₖₖ, making W Wᵀ the Hessian and W ρ the gradient (p(1 − p)
    floored at 1e-12 keeps ρ finite). ``per_entry_mean`` divides ℓᵢ by the number of logits, as
    nn.BCEWithLogitsLoss's mean does."""

    name = "ggn"

    def __init__(self, pos_weight: torch.Tensor | None = None, per_entry_mean: bool = False) -> None:
        self.pos_weight = pos_weight
        self.per_entry_mean = per_entry_mean

    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if targets.shape != outputs.shape or not targets.is_floating_point():
            raise ValueError(f"targets: expected probabilities in [0, 1] shaped like the model output "
                             f"{tuple(outputs.shape)} for binary cross-entropy, got {tuple(targets.shape)} of dtype "
                             f"{targets.dtype}")
        if targets.numel() and bool(((targets < 0) | (targets > 1)).any()):
            raise ValueError(f"targets: expected probabilities in [0, 1] for binary cross-entropy, got range "
                             f"[{float(targets.min()):.6g}, {float(targets.max()):.6g}]")

    def _pos_weight(self, z: torch.Tensor) -> torch.Tensor | None:
        return None if self.pos_weight is None else self.pos_weight.to(device=z.device, dtype=z.dtype)

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        entries = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none",  # (dtypes match: checked)
                                                     pos_weight=self._pos_weight(outputs))
        entries = _flat_outputs(entries)
        return entries.mean(dim=1) if self.per_entry_mean else entries.sum(dim=1)

    def _factor(self, outputs: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(diag W [N, c], a, w⁺y) per logit; a = 1 without targets (needs no w⁺)."""
        z = _flat_outputs(outputs)
        p = torch.sigmoid(z)
        pos_weight = self._pos_weight(outputs)
        if targets is None:
            if pos_weight is not None:
                raise ValueError("binary cross-entropy with pos_weight: its curvature depends on the targets")
            a, positive = torch.ones_like(z), None
        else:
            y = _flat_outputs(targets)
            positive = y * pos_weight.reshape(-1).expand_as(y) if pos_weight is not None else y
            a = positive + 1.0 - y
        scale = 1.0 / z.shape[1] if self.per_entry_mean else 1.0
        w = (scale * a * (p * (1.0 - p)).clamp_min(_P_FLOOR)).sqrt()
        return w, a * p, positive

    def weights(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, ap, positive = self._factor(outputs, targets)
        assert positive is not None
        scale = 1.0 / w.shape[1] if self.per_entry_mean else 1.0
        return torch.diag_embed(w), scale * (ap - positive) / w

    def hessian_factor(self, outputs: torch.Tensor, targets: Any = None) -> torch.Tensor:
        return torch.diag_embed(self._factor(outputs, targets)[0])
