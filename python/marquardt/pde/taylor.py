r"""Taylor mode ("the forward Laplacian") through a multilayer perceptron, and the parameter Jacobian of a
differential operator's values from the same pass.

For a network of ``nn.Linear`` layers and elementwise activations σ, and an operator
𝓛u = c·u + Σⱼ bⱼ∂ⱼu + Σⱼ aⱼ∂²ⱼu (:class:`~marquardt.pde.operators.DiagonalOperator`), three streams are
carried forward for every point (Li et al., "A computational framework for neural network-based variational
Monte Carlo with forward Laplacian", 2023; Dangel, Müller & Zeinhofer, NeurIPS 2024):

* the value h;
* the input derivatives Gⱼ = ∂h/∂xⱼ, for the directions j that 𝓛 needs (d of them, not the network's width);
* the weighted second derivative S = Σⱼ aⱼ ∂²ⱼh.

A linear layer h ↦ Wh + b maps them to (Wh + b, WGⱼ, WS); an activation maps them to
(σ(h), σ'(h)⊙Gⱼ, σ'(h)⊙S + σ''(h)⊙Σⱼ aⱼ Gⱼ²). At the output, 𝓛u = c·h + Σⱼ bⱼGⱼ + S.

Every stream passes a linear layer through the same W, so the derivative of point n's 𝓛u with respect to W is a
sum, over the 2 + d streams, of outer products of the signal that reaches the layer's output stream from 𝓛u
(one backward pass of Σₙ 𝓛uₙ gives all of them, the points being independent) and the layer's input stream:

.. math::

    \frac{\partial (\mathcal{L}u)_n}{\partial W} = \delta^h_n h_n^\top + \sum_j \delta^{G_j}_n G_{j,n}^\top
    + \delta^S_n S_n^\top, \qquad \frac{\partial (\mathcal{L}u)_n}{\partial b} = \delta^h_n

That is one forward and one backward pass over the points for the whole Jacobian, against one backward pass per
residual through a graph that already holds a second derivative (autograd) or a forward-mode pass per parameter
through a vmap'd Hessian (``torch.func``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .operators import DiagonalOperator

Tensor = torch.Tensor


def _tanh(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.tanh(h)
    d1 = 1.0 - t * t
    return t, d1, -2.0 * t * d1


def _sigmoid(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(h)
    d1 = s * (1.0 - s)
    return s, d1, d1 * (1.0 - 2.0 * s)


def _sin(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sin(h)
    return s, torch.cos(h), -s


#: σ(h), σ'(h), σ''(h) of the activations Taylor mode knows, by module type
ACTIVATIONS = {nn.Tanh: _tanh, nn.Sigmoid: _sigmoid}


class Sine(nn.Module):
    """sin(h), elementwise (SIREN-style networks); Taylor mode knows its derivatives."""

    def forward(self, h: Tensor) -> Tensor:
        return torch.sin(h)


ACTIVATIONS[Sine] = _sin


class NotAnMLP(ValueError):
    """The model is not a stack of ``nn.Linear`` layers and elementwise activations Taylor mode knows."""


@dataclass
class _Streams:
    value: Tensor  # [N, w]
    gradient: Tensor | None  # [N, k, w]: ∂h/∂x_j for the operator's k directions
    second: Tensor | None  # [N, w]: Σⱼ aⱼ ∂²ⱼh

    def stacked(self) -> Tensor:
        """[N, 1 + k + 1, w]: the streams one linear layer maps alike (value first)."""
        parts = [self.value.unsqueeze(1)]
        if self.gradient is not None:
            parts.append(self.gradient)
        if self.second is not None:
            parts.append(self.second.unsqueeze(1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class TaylorMLP:
    """An MLP (``nn.Sequential`` of ``nn.Linear`` and activations of :data:`ACTIVATIONS`, any depth) seen by Taylor
    mode. Raises :class:`NotAnMLP` for any other model."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Sequential):
            raise NotAnMLP(f"model: Taylor mode needs an nn.Sequential MLP, got {type(model).__name__}")
        self.layers = list(model)
        if not self.layers or not any(isinstance(m, nn.Linear) for m in self.layers):
            raise NotAnMLP("model: Taylor mode needs at least one nn.Linear layer")
        for m in self.layers:
            if not isinstance(m, nn.Linear) and type(m) not in ACTIVATIONS:
                known = ", ".join(t.__name__ for t in ACTIVATIONS)
                raise NotAnMLP(f"model: Taylor mode knows nn.Linear and the activations {known}; "
                               f"got {type(m).__name__}")
        last = self.layers[-1]
        if not isinstance(last, nn.Linear) or last.out_features != 1:
            raise NotAnMLP("model: Taylor mode needs a scalar field u, an MLP ending in nn.Linear(·, 1)")
        self.in_features = next(m for m in self.layers if isinstance(m, nn.Linear)).in_features

    def _forward(self, op: DiagonalOperator, x: Tensor,
                 record: list[tuple[nn.Linear, Tensor, Tensor]] | None) -> Tensor:
        """𝓛u at the points x [N, d] as [N, 1]; with ``record``, each linear layer's (layer, input streams
        [N, s, in], output streams [N, s, out])."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x: expected points of shape [N, {self.in_features}], got {list(x.shape)}")
        if op.directions and max(op.directions) >= self.in_features:
            raise ValueError(f"operator: it differentiates along coordinate {max(op.directions)}, but the points "
                             f"have {self.in_features} coordinates")
        directions = op.directions
        weights = dict(op.second)
        n, k = x.shape[0], len(directions)
        seed = torch.zeros(n, k, self.in_features, dtype=x.dtype, device=x.device)
        seed[:, torch.arange(k), torch.tensor(directions, dtype=torch.long)] = 1.0
        a = torch.tensor([weights.get(j, 0.0) for j in directions], dtype=x.dtype, device=x.device)
        s = _Streams(x, seed if k else None, torch.zeros_like(x) if op.second else None)
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                stacked_in = s.stacked()
                out = stacked_in @ layer.weight.T
                out = torch.cat([out[:, :1] + layer.bias, out[:, 1:]], dim=1) if layer.bias is not None else out
                if record is not None:
                    record.append((layer, stacked_in, out))
                s = _Streams(out[:, 0], out[:, 1 : 1 + k] if k else None, out[:, -1] if op.second else None)
            else:
                f, d1, d2 = ACTIVATIONS[type(layer)](s.value)
                second = None
                if s.second is not None:
                    assert s.gradient is not None
                    second = d1 * s.second + d2 * torch.einsum("k,nkw->nw", a, s.gradient * s.gradient)
                gradient = d1.unsqueeze(1) * s.gradient if s.gradient is not None else None
                s = _Streams(f, gradient, second)
        result = op.value * s.value
        if op.first:
            assert s.gradient is not None
            b = torch.tensor([dict(op.first).get(j, 0.0) for j in directions], dtype=x.dtype, device=x.device)
            result = result + torch.einsum("k,nkw->nw", b, s.gradient)
        if s.second is not None:
            result = result + s.second
        return result

    def apply(self, op: DiagonalOperator, x: Tensor) -> Tensor:
        """𝓛u at the points x [N, d], as [N, 1], differentiable in the parameters (and by torch.func)."""
        return self._forward(op, x, None)

    def jacobian(self, op: DiagonalOperator, x: Tensor) -> tuple[Tensor, dict[Tensor, Tensor]]:
        """(𝓛u [N], {parameter: ∂(𝓛u)ₙ/∂parameter [N, numel]}) for the parameters that require grad, from one
        forward and one backward pass (the outer-product formula above)."""
        record: list[tuple[nn.Linear, Tensor, Tensor]] = []
        with torch.enable_grad():
            values = self._forward(op, x.detach(), record)
            outputs = [out for _, _, out in record]
            if not values.requires_grad:  # (no parameter requires grad: no rows to give)
                return values.detach().reshape(-1), {}
            signals = torch.autograd.grad(values.sum(), outputs, allow_unused=True)
        rows: dict[Tensor, Tensor] = {}
        for (layer, stacked_in, out), delta in zip(record, signals):
            if delta is None:  # (a layer that does not reach 𝓛u)
                delta = torch.zeros_like(out)
            if layer.weight.requires_grad:
                rows[layer.weight] = torch.einsum("nso,nsi->noi", delta, stacked_in.detach()).reshape(len(x), -1)
            if layer.bias is not None and layer.bias.requires_grad:
                rows[layer.bias] = delta[:, 0]
        return values.detach().reshape(-1), rows
