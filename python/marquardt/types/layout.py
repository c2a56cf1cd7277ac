"""The flat view of a model's trainable parameters that LM works on (θ ∈ ℝⁿ)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ParameterLayout:
    """Trainable parameters of a module in a fixed order, with their offsets in the flat vector θ."""

    names: list[str]
    params: list[nn.Parameter]
    offsets: list[int]
    numel: int
    _written: tuple[torch.Tensor, tuple[int, ...]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, model: nn.Module) -> ParameterLayout:
        names, params, offsets = [], [], []
        total = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue  # frozen parameters are left alone
            names.append(name)
            params.append(p)
            offsets.append(total)
            total += p.numel()
        if not params:
            raise ValueError("model: it has no trainable parameters (every parameter has requires_grad=False)")
        dtypes = {p.dtype for p in params}
        devices = {p.device for p in params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"model: all trainable parameters must share one dtype and device, got dtypes "
                f"{sorted(map(str, dtypes))} and devices {sorted(map(str, devices))}"
            )
        if params[0].dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"model: trainable parameters must be float32 or float64, got {params[0].dtype} (the curvature is "
                "accumulated and factored in float32 or float64: convert the model with model.float() or "
                "model.double())"
            )
        return cls(names, params, offsets, total)

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def slice_of(self, index: int) -> slice:
        return slice(self.offsets[index], self.offsets[index] + self.params[index].numel())

    def get_flat(self) -> torch.Tensor:
        """A copy of θ."""
        return torch.cat([p.reshape(-1) for p in self.params]).detach()

    @torch.no_grad()
    def set_flat(self, theta: torch.Tensor) -> None:
        """Write θ into the parameters (all of them, or none if the shapes are wrong). Writing the same tensor
        again is skipped while no parameter has changed since (their version counters tell)."""
        if theta.shape != (self.numel,):
            raise ValueError(f"theta: expected shape ({self.numel},), got {tuple(theta.shape)}")
        if self._written is not None and self._written[0] is theta and self._written[1] == self._versions():
            return
        for p, offset in zip(self.params, self.offsets):
            p.copy_(theta[offset : offset + p.numel()].view_as(p))
        self._written = (theta, self._versions())

    def _versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.params)

    def as_dict(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """θ split into named tensors shaped like the parameters (views, for torch.func.functional_call)."""
        return {name: theta[self.slice_of(i)].view_as(p) for i, (name, p) in enumerate(zip(self.names, self.params))}
