"""The curvature object of each loss the optimizer takes: the strings ('mse', 'cross_entropy',
'bce_with_logits', 'huber') and the loss modules (nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss,
nn.HuberLoss, nn.SmoothL1Loss), each mapped to its exact Gauss-Newton or generalized Gauss-Newton form;
anything else is refused by name."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .losses import (
    BinaryCrossEntropy,
    Curvature,
    EmpiricalFisherCE,
    GaussNewtonMSE,
    GeneralizedGaussNewtonCE,
    ScaledMSE,
    check_class_targets,
)
from .robust import RobustGaussNewton


def make_curvature(loss: Any, curvature: str | None) -> Curvature:
    """The curvature object for a loss name or module and an optional curvature override."""
    if isinstance(loss, torch.nn.Module):
        return _module_curvature(loss, curvature)
    if loss == "mse":
        if curvature not in (None, "gn"):
            raise ValueError(f"curvature: loss='mse' supports only 'gn', got {curvature!r}")
        return GaussNewtonMSE()
    if loss == "huber":
        if curvature not in (None, "gn"):
            raise ValueError(f"curvature: loss='huber' supports only 'gn', got {curvature!r}")
        return RobustGaussNewton("huber")
    if loss == "bce_with_logits":
        if curvature not in (None, "ggn"):
            raise ValueError(f"curvature: loss='bce_with_logits' supports only 'ggn', got {curvature!r}")
        return BinaryCrossEntropy()
    if loss == "cross_entropy":
        choice = curvature or "ggn"
        if choice == "ggn":
            return GeneralizedGaussNewtonCE()
        if choice == "ef":
            return EmpiricalFisherCE()
        raise ValueError(f"curvature: loss='cross_entropy' supports 'ggn' (default) or 'ef', got {curvature!r}")
    raise ValueError(f"loss: expected 'mse', 'cross_entropy', 'bce_with_logits', 'huber', a loss module or a "
                     f"residual callable, got {loss!r}")


class CrossEntropyModule:
    """nn.CrossEntropyLoss's class weights w, ignored class and label smoothing ε, as weighted class
    distributions: sample i's target t_i = ((1 − ε) w_{yᵢ} e_{yᵢ} + (ε/C) w) (0 if yᵢ is ignored), or
    ((1 − ε) pᵢ + ε/C) ∘ w for probability targets pᵢ. Its loss −Σ_c t_ic log p_ic is ωᵢ CE(zᵢ, t̂ᵢ) with
    ωᵢ = Σ_c t_ic and t̂ᵢ = tᵢ/ωᵢ, so the GGN is ωᵢ times softmax's (ωᵢ enters as a sample weight); the mean
    divides by Σ w_{yᵢ} over the samples not ignored (by N for probability targets), as the module does."""

    def __init__(self, class_weight: torch.Tensor | None, ignore_index: int, label_smoothing: float) -> None:
        self.class_weight, self.ignore_index, self.label_smoothing = class_weight, ignore_index, label_smoothing

    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            kept = targets[targets != self.ignore_index]
            check_class_targets(outputs, torch.zeros_like(targets))
            if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= outputs.shape[1]):
                raise ValueError(f"targets: class indices must lie in [0, {outputs.shape[1] - 1}] (or be the "
                                 f"ignore_index {self.ignore_index}), got range [{int(kept.min())}, {int(kept.max())}]")
            return
        check_class_targets(outputs, targets)

    def batch_targets(self, targets: Any, classes: int) -> tuple[Any, torch.Tensor | None, float | None]:
        eps = self.label_smoothing
        weight = torch.ones(classes, dtype=torch.float64, device=targets.device) if self.class_weight is None else \
            self.class_weight.to(device=targets.device, dtype=torch.float64)
        if targets.dim() == 1:
            kept = targets != self.ignore_index
            labels = torch.where(kept, targets, torch.zeros_like(targets)).long()
            t = (1 - eps) * weight[labels].unsqueeze(1) * F.one_hot(labels, classes) + eps / classes * weight
            t = t * kept.unsqueeze(1)
            normaliser = float(weight[labels][kept].sum())
        else:  # (the mean divides by the number of samples, as for any loss)
            t = ((1 - eps) * targets.double() + eps / classes) * weight
            normaliser = None
        omega = t.sum(dim=1)
        # (an ignored sample has ω = 0 and a zero target: it counts nothing, whatever its target)
        return t / omega.clamp_min(1e-300).unsqueeze(1), omega, normaliser


class WeightedGGN(CrossEntropyModule, GeneralizedGaussNewtonCE):
    """nn.CrossEntropyLoss with the exact GGN (see :class:`CrossEntropyModule`)."""


class WeightedEF(CrossEntropyModule, EmpiricalFisherCE):
    """nn.CrossEntropyLoss with the empirical Fisher (see :class:`CrossEntropyModule`)."""


#: the loss modules LM takes, each with its exact curvature (other modules are refused by name)
SUPPORTED_MODULES = ("MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss", "HuberLoss", "SmoothL1Loss")


def _module_curvature(module: Any, curvature: str | None) -> Curvature:
    name = type(module).__name__
    if name not in SUPPORTED_MODULES or type(module).__module__ != "torch.nn.modules.loss":
        raise ValueError(
            f"loss: a {name} object has no Gauss-Newton form here; the supported loss modules are "
            f"{', '.join('nn.' + m for m in SUPPORTED_MODULES)} (or the strings 'mse', 'cross_entropy', "
            "'bce_with_logits'); for any other objective pass residuals=fn(model, *batch) or a residual callable"
        )
    reduction = module.reduction
    if reduction not in ("mean", "sum"):
        raise ValueError(f"loss: {name}(reduction={reduction!r}) returns per-entry losses; LM needs one value "
                         "(reduction='mean' or 'sum')")
    if name == "MSELoss":
        if curvature not in (None, "gn"):
            raise ValueError(f"curvature: nn.MSELoss supports only 'gn', got {curvature!r}")
        return ScaledMSE(per_entry_mean=reduction == "mean")
    if name in ("HuberLoss", "SmoothL1Loss"):
        if curvature not in (None, "gn"):
            raise ValueError(f"curvature: nn.{name} supports only 'gn', got {curvature!r}")
        width = float(module.delta if name == "HuberLoss" else module.beta)  # type: ignore[arg-type]
        if not width > 0:
            raise ValueError(f"loss: nn.{name} with a zero threshold is an L1 loss, which has no Gauss-Newton form")
        return RobustGaussNewton("huber", width, factor=1.0 if name == "HuberLoss" else 1.0 / width,
                                 per_entry_mean=reduction == "mean")
    if name == "CrossEntropyLoss":
        if curvature not in (None, "ggn", "ef"):
            raise ValueError(f"curvature: nn.CrossEntropyLoss supports 'ggn' (default) or 'ef', got {curvature!r}")
        kind = WeightedEF if curvature == "ef" else WeightedGGN
        return kind(module.weight, int(module.ignore_index), float(module.label_smoothing))
    if curvature not in (None, "ggn"):
        raise ValueError(f"curvature: nn.BCEWithLogitsLoss supports only 'ggn', got {curvature!r}")
    if module.weight is not None:
        raise ValueError("loss: nn.BCEWithLogitsLoss(weight=...) is not supported; pass per-sample weights to "
                         "step(..., weight=w) instead")
    return BinaryCrossEntropy(pos_weight=module.pos_weight, per_entry_mean=reduction == "mean")
