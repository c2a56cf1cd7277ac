"""Residual functions of the model: ``fn(model, *batch)`` returns residuals that may hold derivatives of the
model with respect to its inputs (physics-informed networks), in one tensor or in several groups.

The function becomes a module, :class:`ResidualFunction`, whose parameters are the model's: the Jacobian engines
then differentiate it like any model (``torch.func.functional_call`` swaps the parameters for the duration of
the call, whatever the function does with the model inside).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: fn(model, *batch) -> a tensor of residuals, or a tuple or list of them (groups, e.g. interior and boundary)
ModelResidualFn = Callable[..., Any]


class ResidualFunction(nn.Module):
    """``fn(model, *batch)`` as a module: its residual groups, flattened and concatenated into one column
    [M, 1] (each residual is a row of the least-squares problem ½ Σ rₖ²).

    The function runs with gradients enabled, so that it may take derivatives with respect to the inputs by
    ``torch.autograd.grad(..., create_graph=True)`` even inside the optimizer's ``torch.no_grad`` step (the
    ``torch.func`` style, ``jacfwd``/``hessian``/``vmap``, needs no graph)."""

    def __init__(self, model: nn.Module, fn: ModelResidualFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn
        #: the groups' shapes for the batch in use; a call that returns other shapes for it is refused
        self.expected_shapes: tuple[tuple[int, ...], ...] | None = None

    def groups(self, *batch: Any) -> tuple[torch.Tensor, ...]:
        """The residual groups of the batch, checked: real floating-point tensors of the model's dtype."""
        with torch.enable_grad():
            out = self.fn(self.model, *batch)
        groups = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if not groups:
            raise ValueError("residuals: the function returned an empty tuple; it must return at least one tensor")
        for i, r in enumerate(groups):
            where = "" if len(groups) == 1 and not isinstance(out, (tuple, list)) else f" (group {i})"
            if not isinstance(r, torch.Tensor):
                raise TypeError(f"residuals: the function must return a tensor or a tuple of tensors, got "
                                f"{type(r).__name__}{where}")
            if not r.is_floating_point():
                raise TypeError(f"residuals: expected real floating-point residuals, got dtype {r.dtype}{where}")
        shapes = tuple(tuple(r.shape) for r in groups)
        if self.expected_shapes is not None and shapes != self.expected_shapes:
            raise ValueError(
                f"residuals: the function returned shapes {list(shapes)} for a batch on which it returned "
                f"{list(self.expected_shapes)} before; the residuals of one batch must keep their shapes (every "
                "step evaluates the function several times)"
            )
        return groups

    def forward(self, *batch: Any) -> torch.Tensor:
        groups = self.groups(*batch)
        flat = groups[0].reshape(-1) if len(groups) == 1 else torch.cat([r.reshape(-1) for r in groups])
        return flat.unsqueeze(1)

    def probe(self, *batch: Any) -> int:
        """Evaluates the function on a new batch: records its groups' shapes (refusing an empty result) and
        returns the number of residuals M."""
        self.expected_shapes = None
        groups = self.groups(*batch)
        count = sum(r.numel() for r in groups)
        if count == 0:
            raise ValueError("residuals: the function returned no residuals (0 entries) for this batch")
        self.expected_shapes = tuple(tuple(r.shape) for r in groups)
        return count
