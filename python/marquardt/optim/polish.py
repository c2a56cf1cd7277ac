r"""Gauss-Newton polish: after :func:`~marquardt.fit` converges on a small least-squares problem, a few
undamped steps that bring the point closer to the stationary point than the convergence tests ask for.

The tests stop the fit once the loss no longer falls measurably (``ftol``), the step is short (``xtol``) or
the gradient is small (``gtol``). Near a minimiser, the loss changes by ½ gᵀ(JᵀJ)⁻¹g for a gradient g, so
it stops changing in its last digit well before the gradient stops falling: the fit may stop with ‖Jᵀr‖
orders of magnitude above what float arithmetic allows. Each polish step is the Gauss-Newton step

.. math::

    \delta = \arg\min_\delta \lVert J\delta + r\rVert_2 \quad\text{(minimum norm, through the SVD of } J\text{)},

which never forms JᵀJ (so its accuracy follows κ(J), not κ(J)²). A step is kept while both

* the gradient falls: ‖Jᵀr‖∞ at θ + δ is below its value at θ (this is what the polish is for), and
* the cost does not rise by more than its rounding, C(θ + δ) ≤ C(θ) + ε (64 C(θ) + 4 |r|ᵀ|J||θ|), with ε of
  θ's dtype. The second term bounds how much the cost moves when each θⱼ moves by its own rounding,
  Σᵢ |rᵢ| Σⱼ |Jᵢⱼ| ε|θⱼ|: a residual computed as the small difference of large terms carries that much
  rounding, far more than the cost's last digits. Below the bound the cost cannot tell the two points
  apart; above it, the step is not a Gauss-Newton improvement.

The first step that fails either test ends the polish and is not taken, so the cost of the polished point
exceeds the cost where the fit stopped by its rounding at most. Where the Gauss-Newton iteration does not
converge (a large residual, whose second derivatives JᵀJ leaves out) or J is singular at the solution, the
first step fails the tests and the point stays where the fit stopped.

It applies where it is cheap and well defined: a plain least-squares objective (loss ``'mse'``, a residual
callable or a residual function; not a robust loss, whose step is a reweighted one), no bounds, one process,
and at most :data:`POLISH_MAX_PARAMETERS` parameters (the SVD of an [m, n] Jacobian costs m·n²).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .levenberg_marquardt import LevenbergMarquardt
from .solution import LeastSquaresAt

#: the most parameters for which :func:`~marquardt.fit` polishes by default (``polish='auto'``)
POLISH_MAX_PARAMETERS = 64
#: how many ulps of the cost a polish step may add: the cost's rounding, not a real rise
COST_ROUNDING_ULPS = 64
#: the safety factor on the cost's first-order sensitivity to rounding θ
THETA_ROUNDING_FACTOR = 4


def polish_applies(optimizer: LevenbergMarquardt, any_size: bool = False) -> bool:
    """Whether ``fit(..., polish='auto')`` polishes this optimizer's solution (see the module docstring);
    ``any_size``: whatever the number of parameters (``polish=True``)."""
    curvature = optimizer.curvature
    return (curvature.least_squares and curvature.identity_weights and not optimizer.box.bounded
            and not optimizer.objective.comm.active
            and (any_size or optimizer.layout.numel <= POLISH_MAX_PARAMETERS))


def _gauss_newton_step(J: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The minimum-norm solution of J δ = −r by the SVD, singular values below ε·max(m, n)·σ₁ cut (LAPACK's
    gelsd rule: below that, they are J's rounding)."""
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    cut = torch.finfo(J.dtype).eps * max(J.shape) * S[0]
    inverse = torch.where(S > cut, 1.0 / torch.where(S > cut, S, 1.0), 0.0)
    return -(Vh.mT @ (inverse * (U.mT @ r)))


@dataclass
class Polished:
    """What :func:`run_polish` did: the steps kept, the residual-and-Jacobian evaluations it made, and the cost
    after over the cost before (1.0 when no step was kept)."""

    steps: int
    evaluations: int
    cost_ratio: float


def run_polish(optimizer: LevenbergMarquardt, batch: tuple, weight: Any, max_steps: int) -> Polished:
    """Up to ``max_steps`` kept Gauss-Newton steps from the current θ, the last kept point left in the model."""
    layout = optimizer.layout
    theta = layout.get_flat()
    r, J = LeastSquaresAt(optimizer, batch, theta, weight)()
    cost, grad = 0.5 * float(r @ r), float((J.mT @ r).abs().max())
    first_cost, kept, evaluations = cost, 0, 1
    eps = torch.finfo(theta.dtype).eps
    for _ in range(max_steps):
        if grad == 0.0:
            break
        rounding = eps * (COST_ROUNDING_ULPS * cost
                          + THETA_ROUNDING_FACTOR * float(r.abs() @ (J.abs() @ theta.abs())))
        trial = theta + _gauss_newton_step(J, r)
        if not bool(torch.isfinite(trial).all()):
            break
        r_trial, J_trial = LeastSquaresAt(optimizer, batch, trial, weight)()
        evaluations += 1
        cost_trial = 0.5 * float(r_trial @ r_trial)
        grad_trial = float((J_trial.mT @ r_trial).abs().max())
        if not (grad_trial < grad and cost_trial <= cost + rounding):
            break  # (this step is not kept: the polish ends here)
        theta, r, J, cost, grad, kept = trial, r_trial, J_trial, cost_trial, grad_trial, kept + 1
    if kept:
        layout.set_flat(theta)
    return Polished(kept, evaluations, cost / first_cost if kept else 1.0)
