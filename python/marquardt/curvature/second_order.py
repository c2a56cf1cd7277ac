"""The geodesic correction's second-order residuals: z_vv = d²/dτ² z(θ + τv), the model's outputs differentiated
twice along the step v (jvp of jvp, or reverse mode alone where torch.func cannot transform the function), and
ρ_vv = Wᵀ z_vv in the curvature's row space (policy/geodesic.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch.func import jvp

from ..parallel import Communicator
from ..types.layout import ParameterLayout
from .batch import Batch
from .losses import Curvature


class Differentiable(Protocol):
    """What the second-order residuals need of the objective (curvature/objective.py)."""

    layout: ParameterLayout
    curvature: Curvature
    residual_mode: bool
    comm: Communicator

    def _functional_outputs(self, params: dict[str, torch.Tensor], x: Any, y: Any) -> torch.Tensor: ...


def second_directional_derivative(
    outputs: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """z_vv = d²/dτ² outputs(θ + τv) at τ = 0, by jvp of jvp (torch.func), or by reverse mode alone for outputs
    that torch.func cannot transform (a residual function that differentiates by ``torch.autograd.grad``)."""

    def directional(t: torch.Tensor) -> torch.Tensor:
        return jvp(outputs, (t,), (v,))[1]

    try:
        return jvp(directional, (theta,), (v,))[1]
    except RuntimeError:
        return _second_directional_by_reverse_mode(outputs, theta, v)


def _jvp_by_reverse_mode(z: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J v of z(t) from two backward passes (the double-backward trick: Jᵀu is linear in u, and its derivative
    in u along v is J v), keeping the graph so that the result can be differentiated again."""
    if not z.requires_grad:  # z does not depend on t (the second pass of a model linear in θ)
        return torch.zeros_like(z)
    u = torch.zeros_like(z, requires_grad=True)
    (jtu,) = torch.autograd.grad(z, t, u, create_graph=True)
    (jv,) = torch.autograd.grad(jtu, u, v, create_graph=True)
    return jv


def _second_directional_by_reverse_mode(outputs: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                                        v: torch.Tensor) -> torch.Tensor:
    """z_vv = (∂(J v)/∂θ) v: the directional derivative of J v along v, both by :func:`_jvp_by_reverse_mode`."""
    with torch.enable_grad():
        t = theta.detach().requires_grad_(True)
        jv = _jvp_by_reverse_mode(outputs(t), t, v)
        return _jvp_by_reverse_mode(jv, t, v).detach()


class SecondOrderResidual:
    """ρ_vv,ᵢ = √wᵢ Wᵢᵀ z_vv,ᵢ with z_vv = d²/dτ² z(θ + τv) (wᵢ the sample weights, 1 without), in row space
    (:meth:`rows`, k-major as the rows) or as α𝒥ᵀρ_vv = α Σ wᵢ J_zᵢᵀ Wᵢ Wᵢᵀ z_vv,ᵢ (:meth:`gradient`, one
    vector-Jacobian product per chunk)."""

    def __init__(self, objective: Differentiable, v: torch.Tensor, theta: torch.Tensor, batch: Batch, noise: Any,
                 dtype: torch.dtype) -> None:
        self.objective, self.v, self.theta = objective, v, theta
        self.batch, self.noise, self.dtype = batch, noise, dtype

    def _per_chunk(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, Any]]:
        """(ρ_vv [S, q], W or None for the identity, z, θ requiring grad, √w [S, 1] or None) per chunk, with the
        step's noise."""
        objective, theta = self.objective, self.theta
        assert self.batch.chunks is not None
        self.noise.replay()
        for x, y, w in self.batch.chunks:
            outputs = lambda t, xx=x, yy=y: objective._functional_outputs(objective.layout.as_dict(t), xx, yy)  # noqa: E731
            with torch.enable_grad():
                z_vv = second_directional_derivative(outputs, theta, self.v)
                theta_req = theta.detach().requires_grad_(True)
                z = outputs(theta_req)
            curvature = objective.curvature
            L = None if curvature.identity_weights else \
                curvature.hessian_factor(z.detach(), None if objective.residual_mode else y)
            zf = z_vv.reshape(z_vv.shape[0], -1)
            rho_vv = zf if L is None else torch.einsum("scq,sc->sq", L, zf)  # Wᵀ z_vv
            root_w = w.sqrt().to(rho_vv.dtype).unsqueeze(1) if w is not None else None
            yield (rho_vv * root_w if root_w is not None else rho_vv), L, z, theta_req, root_w

    def rows(self) -> torch.Tensor:
        return torch.cat([rho_vv.T.reshape(-1) for rho_vv, *_ in self._per_chunk()])

    def gradient(self) -> torch.Tensor:
        rhs = torch.zeros(self.objective.layout.numel, dtype=self.dtype, device=self.theta.device)
        for rho_vv, L, z, theta_req, root_w in self._per_chunk():
            rho_vv = rho_vv * root_w if root_w is not None else rho_vv  # w Wᵀ z_vv
            cot = rho_vv if L is None else torch.einsum("scq,sq->sc", L, rho_vv)  # w W Wᵀ z_vv
            (grad,) = torch.autograd.grad(z, theta_req, grad_outputs=cot.reshape(z.shape).to(z.dtype))
            rhs += self.batch.alpha * grad.to(rhs.dtype)
        self.objective.comm.sum_(rhs)  # data-parallel: every rank's share, so that every rank takes the same step
        return rhs
