r"""Box constraints lᵢ ≤ θᵢ ≤ uᵢ: an active-set projected Levenberg-Marquardt step.

A parameter is **active** when it sits on a bound and the gradient pushes it outward (θᵢ ≤ lᵢ with gᵢ > 0, or
θᵢ ≥ uᵢ with gᵢ < 0): descent would leave the box there. Active parameters are held: their gradient entries are
zeroed and their damping raised far above the rest, so that the LM step is the one of the free parameters
alone, (A_FF + λD_F) δ_F = −g_F. Every trial point is then projected onto the box, θ + δ ↦ clamp(θ + δ, l, u),
so that every iterate is feasible. This is the projected LM of Kanzow, Yamashita & Fukushima (2004, "Levenberg-
Marquardt methods with strong local convergence properties for solving nonlinear equations with convex
constraints") with the active set of projected Newton methods (Bertsekas 1982): the projection keeps iterates
feasible and λ's increase on rejection makes the step a short projected gradient step, which decreases the loss
unless θ is stationary; the free-variable step keeps the fast local convergence of LM once the active set is
found. (A reflective method, Coleman & Li's, as scipy's 'trf' uses, needs scaling variables that a damping
vector already plays the part of here.) At the solution the free gradient vanishes: ``grad_norm_inf`` reports
the free gradient, so that ``fit``'s gtol test means stationarity on the box.
"""

from __future__ import annotations

from typing import Any

import torch

from ..types.layout import ParameterLayout

#: the held parameters' damping, relative to the largest free one: their step is negligible, and it is zeroed
HELD_DAMPING = 1e12


class Unbounded:
    """No bounds: every method passes its argument through."""

    bounded = False  # (steps that ignore the bounds, such as fit's polish, need to know)

    def hold_active(self, system: Any, theta: torch.Tensor) -> None:
        return None

    def damping(self, d: torch.Tensor) -> torch.Tensor:
        return d

    def clip(self, theta: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return step

    def project(self, point: torch.Tensor) -> torch.Tensor:
        return point


class Box(Unbounded):
    """Flat lower and upper bounds [n] (±inf where unbounded); see the module docstring."""

    bounded = True

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor) -> None:
        self.lower, self.upper = lower, upper
        self.held: torch.Tensor | None = None

    def hold_active(self, system: Any, theta: torch.Tensor) -> None:
        """Finds the active parameters at θ and zeroes their entries of the system's gradient."""
        g = system.g
        lower, upper = self.lower.to(g.dtype), self.upper.to(g.dtype)
        point = theta.to(g.dtype)
        self.held = ((point <= lower) & (g > 0)) | ((point >= upper) & (g < 0))
        if bool(self.held.any()):
            system.set_gradient(g.masked_fill(self.held, 0.0))

    def damping(self, d: torch.Tensor) -> torch.Tensor:
        """d with the held parameters' entries raised to HELD_DAMPING times the largest entry."""
        if self.held is None or not bool(self.held.any()):
            return d
        return d.masked_fill(self.held.to(d.device), float(d.max()) * HELD_DAMPING)

    def clip(self, theta: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """The step to the projection of θ + step onto the box (held parameters do not move)."""
        if self.held is not None:
            step = step.masked_fill(self.held.to(step.device), 0.0)
        return self.project(theta + step) - theta

    def project(self, point: torch.Tensor) -> torch.Tensor:
        """The nearest point of the box. (θ + clip(θ, s) can round to just outside it: trial points are
        projected again.)"""
        return torch.clamp(point, self.lower.to(point.dtype), self.upper.to(point.dtype))


def box_of(bounds: Any, layout: ParameterLayout) -> Unbounded:
    """The bounds ``{parameter name: (lower, upper)}`` as a :class:`Box` (each end a number, a tensor
    broadcastable to the parameter, or None), refusing unknown names, lower > upper and a start point outside
    them by name; :class:`Unbounded` for None."""
    if bounds is None:
        return Unbounded()
    if not isinstance(bounds, dict):
        raise TypeError(f"bounds: expected a dict {{parameter name: (lower, upper)}}, got {type(bounds).__name__}")
    known = dict(zip(layout.names, range(len(layout.names))))
    lower = torch.full((layout.numel,), -torch.inf, dtype=torch.float64, device=layout.device)
    upper = torch.full((layout.numel,), torch.inf, dtype=torch.float64, device=layout.device)
    for name, ends in bounds.items():
        if name not in known:
            raise ValueError(f"bounds: {name!r} is not a trainable parameter of the model (its parameters: "
                             f"{', '.join(layout.names)})")
        if not isinstance(ends, (tuple, list)) or len(ends) != 2:
            raise TypeError(f"bounds[{name!r}]: expected (lower, upper), got {ends!r}")
        index = known[name]
        param, cols = layout.params[index], layout.slice_of(index)
        low, high = (_end(name, end, param, default) for end, default in zip(ends, (-torch.inf, torch.inf)))
        if bool((low > high).any()):
            raise ValueError(f"bounds[{name!r}]: the lower bound exceeds the upper bound")
        value = param.detach().to(torch.float64)
        if bool(((value < low) | (value > high)).any()):
            raise ValueError(f"bounds[{name!r}]: the parameter's start value lies outside its bounds; start inside "
                             "them (every iterate stays feasible)")
        lower[cols], upper[cols] = low.reshape(-1), high.reshape(-1)
    return Box(lower, upper)


def _end(name: str, end: Any, param: torch.Tensor, default: float) -> torch.Tensor:
    """One end of a parameter's bounds as a float64 tensor shaped like it."""
    if end is None:
        end = default
    if isinstance(end, bool) or not isinstance(end, (int, float, torch.Tensor)):
        raise TypeError(f"bounds[{name!r}]: each end must be a number, a tensor or None, got {type(end).__name__}")
    value = torch.as_tensor(end, dtype=torch.float64).to(param.device)
    if bool(torch.isnan(value).any()):
        raise ValueError(f"bounds[{name!r}]: a bound is NaN")
    try:
        return torch.broadcast_to(value, param.shape)
    except RuntimeError:
        raise ValueError(f"bounds[{name!r}]: shape {tuple(value.shape)} does not broadcast to the parameter's "
                         f"{tuple(param.shape)}") from None
