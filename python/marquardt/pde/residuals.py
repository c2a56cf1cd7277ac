"""A residual function for physics-informed networks built from operators: each condition 𝓑ᵢu = gᵢ on its own
points, whose Jacobian comes from Taylor mode when the model is an MLP.

    residuals = PDEResiduals(-laplacian(2), value())       # −Δu = f inside, u = g on the boundary
    opt = LevenbergMarquardt(model, residuals=residuals, loss_scale="sum")
    opt.step(x_inside, f, x_boundary, g)

With ``scale="mean"`` (the default) each condition's residuals are divided by √(its number of points), so that
½ Σ r² is the usual PINN loss ½ Σᵢ meanₙ (𝓑ᵢu(xₙ) − gᵢ(xₙ))², whatever the number of points of each condition
(``loss_scale="sum"`` makes it the optimizer's loss).
"""

from __future__ import annotations

import itertools
import math
import weakref
from typing import Any

import torch
from torch import nn

from .operators import DiagonalOperator
from .taylor import NotAnMLP, TaylorMLP

Tensor = torch.Tensor


def operator_by_autograd(model: nn.Module, op: DiagonalOperator, x: Tensor) -> Tensor:
    """𝓛u at the points x [N, d] as [N, 1] by ``torch.autograd.grad(..., create_graph=True)``: any model with a
    scalar output, one backward pass per second-derivative direction (the reference Taylor mode must equal)."""
    x = x.detach().requires_grad_(True)
    u = model(x)
    if u.shape != (x.shape[0], 1):
        raise ValueError(f"model: expected a scalar field, outputs of shape [{x.shape[0]}, 1], got {list(u.shape)}")
    result = op.value * u
    if op.directions:
        (grad,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        for j, b in op.first:
            result = result + b * grad[:, j : j + 1]
        for j, a in op.second:
            (second,) = torch.autograd.grad(grad[:, j].sum(), x, create_graph=True)
            result = result + a * second[:, j : j + 1]
    return result


class PDEResiduals:
    """``fn(model, x₁, g₁, x₂, g₂, ...)`` returning the groups (𝓑ᵢu(xᵢ) − gᵢ)·sᵢ, one per condition 𝓑ᵢ (each a
    :class:`~marquardt.pde.operators.DiagonalOperator`), sᵢ = 1/√Nᵢ with ``scale="mean"`` or 1 with
    ``scale="sum"``. Each xᵢ is [Nᵢ, d] and gᵢ is [Nᵢ] or [Nᵢ, 1].

    For an MLP (``nn.Sequential`` of ``nn.Linear`` and tanh, sigmoid or :class:`~marquardt.pde.taylor.Sine`),
    the values and the Jacobian come from Taylor mode (:meth:`jacobian`); for any other model the values come from
    autograd and the optimizer differentiates them as it does any residual function."""

    def __init__(self, *conditions: DiagonalOperator, scale: str = "mean") -> None:
        if not conditions:
            raise ValueError("conditions: expected at least one operator (e.g. -laplacian(2), value())")
        for i, op in enumerate(conditions):
            if not isinstance(op, DiagonalOperator):
                raise TypeError(f"conditions: expected DiagonalOperator objects (laplacian, derivative, value and "
                                f"their sums), got {type(op).__name__} for condition {i}")
        if scale not in ("mean", "sum"):
            raise ValueError(f"scale: expected 'mean' or 'sum', got {scale!r}")
        self.conditions = conditions
        self.scale = scale
        self._mlp: weakref.WeakKeyDictionary[nn.Module, TaylorMLP | None] = weakref.WeakKeyDictionary()

    def _pairs(self, batch: tuple) -> list[tuple[Tensor, Tensor]]:
        if len(batch) != 2 * len(self.conditions):
            raise ValueError(f"batch: expected {2 * len(self.conditions)} tensors (points and targets for each of "
                             f"the {len(self.conditions)} conditions), got {len(batch)}")
        pairs = []
        for i in range(len(self.conditions)):
            x, g = batch[2 * i], batch[2 * i + 1]
            if not isinstance(x, Tensor) or x.dim() != 2:
                raise ValueError(f"batch: the points of condition {i} must be a tensor [N, d], got "
                                 f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
            if not isinstance(g, Tensor) or g.numel() != x.shape[0]:
                raise ValueError(f"batch: the targets of condition {i} must be a tensor of {x.shape[0]} values "
                                 f"(one per point), got {list(g.shape) if isinstance(g, Tensor) else type(g).__name__}")
            pairs.append((x, g.reshape(-1, 1)))
        return pairs

    def _factor(self, n: int) -> float:
        return 1.0 / math.sqrt(n) if self.scale == "mean" else 1.0

    def taylor(self, model: nn.Module) -> TaylorMLP | None:
        """The model as Taylor mode sees it, or None when it is not an MLP Taylor mode knows."""
        if model not in self._mlp:
            try:
                self._mlp[model] = TaylorMLP(model)
            except NotAnMLP:
                self._mlp[model] = None
        return self._mlp[model]

    def __call__(self, model: nn.Module, *batch: Any) -> tuple[Tensor, ...]:
        mlp = self.taylor(model)
        groups = []
        for op, (x, g) in zip(self.conditions, self._pairs(batch)):
            values = mlp.apply(op, x) if mlp is not None else operator_by_autograd(model, op, x)
            groups.append((values - g) * self._factor(len(x)))
        return tuple(groups)

    def jacobian(self, model: nn.Module, params: list[nn.Parameter], *batch: Any) -> tuple[Tensor, Tensor] | None:
        """(the residuals r [M], their Jacobian J [M, n] over ``params`` in that order), or None when the model is
        not an MLP Taylor mode knows."""
        mlp = self.taylor(model)
        if mlp is None:
            return None
        pairs = list(self._pairs(batch))
        starts = [0, *itertools.accumulate(p.numel() for p in params)]  # each parameter's first column
        r: Tensor | None = None
        J: Tensor | None = None
        first = 0
        for op, (x, g) in zip(self.conditions, pairs):
            values, rows = mlp.jacobian(op, x)
            if J is None or r is None:  # (one [M, n] buffer, each block scaled as it is written: no copies)
                total = sum(len(xi) for xi, _ in pairs)
                r = values.new_empty(total)
                J = values.new_empty(total, starts[-1])
            factor = self._factor(len(x))
            last = first + len(x)
            torch.mul(values - g.reshape(-1), factor, out=r[first:last])
            for p, start, end in zip(params, starts, starts[1:]):
                if p in rows:
                    torch.mul(rows[p], factor, out=J[first:last, start:end])
                else:
                    J[first:last, start:end] = 0.0
            first = last
        assert r is not None and J is not None  # (PDEResiduals has at least one condition)
        return r, J
