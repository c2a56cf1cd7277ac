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
* the cost does not rise by more than its rounding,

  .. math::

      C(\theta + \delta) \le C(\theta) + \varepsilon\,(64\,C(\theta) + 4\,|r|^\top |J|\,|\theta|)
      + 4\,|r|^\top \nu,

  with ε of θ's dtype. The second term bounds how much the cost moves when each θⱼ moves by its own rounding,
  Σᵢ |rᵢ| Σⱼ |Jᵢⱼ| ε|θⱼ|. The third is the rounding of the residuals' own arithmetic, measured where the
  fit stopped, and again after a kept step that leaves less than half the cost (a zero residual's rounding
  shrinks with it): ν is the larger, residual by residual, of |r(θ + p) − r(θ) − J p| for two probes p of
  16 ulps of each θⱼ, one with all signs positive and one with alternating signs (so small a step leaves the
  second-order term far below the rounding, so what is left is rounding). One sample of the rounding can
  fall well below its typical size, hence two probes and the factor 4. A residual
  computed as the small difference of large terms carries far more rounding than the cost's last digits;
  below the bound the cost cannot tell the two points apart, and above it, the step is not an improvement.

Where the Gauss-Newton step fails either test, the polish tries Newton steps instead, for problems of at
most :data:`NEWTON_MAX_PARAMETERS` parameters. Gauss-Newton leaves out the residuals' second derivatives
Σᵢ rᵢ ∇²rᵢ, which matter where the residual stays large at the minimiser (Penalty I) or J is singular there
(Freudenstein-Roth, Jennrich-Sampson); its step then raises the gradient. The Newton step

.. math::

    \delta = -H^{+} g,\qquad g = J^\top r,\qquad
    H_{:,j} = \frac{g(\theta + h_j e_j) - g(\theta - h_j e_j)}{2 h_j},\quad h_j = 6\cdot 10^{-6}\max(|\theta_j|, 1),

uses the whole Hessian, by central differences of the exact gradient (2n extra residual-and-Jacobian
evaluations; h ≈ ε^{1/3}, the step that balances the difference's truncation error against its rounding for
ε = 2⁻⁵²). H⁺ inverts H on its eigenvalues above ε·n·max|μ| only: near a minimiser H is positive
semi-definite, and a direction of negative or unresolved curvature is left alone rather than followed
toward a saddle. Newton steps pass the same two tests. Once the Gauss-Newton step fails, the remaining steps
are Newton steps.

The polish ends before any trial once the gradient is at its rounding level, ‖Jᵀr‖∞ ≤ maxⱼ Σᵢ |Jᵢⱼ| (ε|rᵢ| + νᵢ):
no step can lower a gradient that cannot be told from zero, so none is evaluated (with the probes, which need
r alone, a polish that finds the point already there costs one evaluation of J and three of r). The exception
is a residual near a zero: where the Gauss-Newton model predicts ½‖r + Jδ‖² below :data:`REMEASURE_COST_RATIO`
of the cost, the rounding shrinks with the residual, so the level is no floor and the step is tried. These
comparisons of costs use ‖r‖ scaled by max|rᵢ| (Σrᵢ² underflows to 0 while the rᵢ are still far above the
smallest float). Kept steps that leave less than that fraction of the cost do not count against
``max_steps`` (a zero residual converging linearly, each step real progress), only against
:data:`SHRINKING_MAX_STEPS`. The first step
that fails the tests ends the polish and is not taken, so the cost of the polished point exceeds
the cost where the fit stopped by its rounding at most. Where neither step improves the point (a saddle, a
maximum nearby, or rounding that hides any improvement), the point stays where the fit stopped.

It applies where it is cheap and well defined: a plain least-squares objective (loss ``'mse'``, a residual
callable or a residual function; not a robust loss, whose step is a reweighted one), no bounds, one process,
and at most :data:`POLISH_MAX_PARAMETERS` parameters (the SVD of an [m, n] Jacobian costs m·n²).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from .levenberg_marquardt import LevenbergMarquardt
from .solution import LeastSquaresAt, residuals_at_theta

#: the most parameters for which :func:`~marquardt.fit` polishes by default (``polish='auto'``)
POLISH_MAX_PARAMETERS = 64
#: how many ulps of the cost a polish step may add: the cost's rounding, not a real rise
COST_ROUNDING_ULPS = 64
#: the safety factor on the cost's first-order sensitivity to rounding θ
THETA_ROUNDING_FACTOR = 4
#: the probe that measures the residuals' rounding: this many ulps of each θⱼ
NOISE_PROBE_ULPS = 16
#: the factor on the measured rounding of the residuals (it enters the cost at both points, and a sample of
#: it can fall well below its typical size)
RESIDUAL_NOISE_FACTOR = 4
#: a kept step that leaves less than this fraction of the cost measures ν again at its point (a zero residual
#: shrinking by orders of magnitude takes its rounding down with it; near a nonzero minimum the cost hardly moves,
#: and ν stays the one measured where the fit stopped)
REMEASURE_COST_RATIO = 0.5
#: the most steps kept in all: a step that leaves less than REMEASURE_COST_RATIO of the cost (a zero residual
#: converging, each step real progress) does not count against ``max_steps``, only against this
SHRINKING_MAX_STEPS = 64
#: the most parameters for which the polish tries Newton steps (each costs 2n residual-and-Jacobian evaluations)
NEWTON_MAX_PARAMETERS = 16
#: the central difference's relative step, about ε^{1/3} for float64
NEWTON_DIFFERENCE_STEP = 6e-6


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


def _newton_step(gradient_at: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                 g: torch.Tensor) -> torch.Tensor:
    """−H⁺g with H the central-difference Jacobian of the gradient (symmetrised), inverted on its eigenvalues
    above ε·n·max|μ| (see the module docstring)."""
    n = theta.numel()
    columns = []
    for j in range(n):
        h = NEWTON_DIFFERENCE_STEP * max(abs(float(theta[j])), 1.0)
        offset = torch.zeros_like(theta)
        offset[j] = h
        columns.append((gradient_at(theta + offset) - gradient_at(theta - offset)) / (2.0 * h))
    H = torch.stack(columns, dim=1)
    mu, V = torch.linalg.eigh(0.5 * (H + H.mT))
    cut = torch.finfo(theta.dtype).eps * n * float(mu.abs().max())
    inverse = torch.where(mu > cut, 1.0 / torch.where(mu > cut, mu, 1.0), 0.0)
    return -(V @ (inverse * (V.mT @ g)))


@dataclass
class _Point:
    """θ with its residuals, Jacobian, cost ½‖r‖² and ‖Jᵀr‖∞."""

    theta: torch.Tensor
    r: torch.Tensor
    J: torch.Tensor

    @property
    def cost(self) -> float:
        return 0.5 * float(self.r @ self.r)

    @cached_property
    def gradient(self) -> torch.Tensor:  # (asked for by every test of a step: computed once)
        return self.J.mT @ self.r

    @cached_property
    def residual_norm(self) -> float:
        """‖r‖₂, scaled by max|rᵢ| first: the cost ½‖r‖² of a zero residual underflows to 0 long before r does."""
        return _scaled_norm(self.r)

    def gradient_at_rounding(self, residual_noise: torch.Tensor) -> bool:
        """‖Jᵀr‖∞ at or below :func:`gradient_rounding_level`: no step can lower a gradient that cannot be told
        from zero."""
        return float(self.gradient.abs().max()) <= gradient_rounding_level(self.r, self.J, residual_noise)

    def model_halves_the_cost(self, step: torch.Tensor) -> bool:
        """Whether the Gauss-Newton model ½‖r + J δ‖² of the cost after ``step`` is below REMEASURE_COST_RATIO of
        the cost: near a zero residual it is, so a gradient at its rounding level can still fall."""
        return _halves_the_cost(self.residual_norm, _scaled_norm(self.r + self.J @ step))

    def improved_by(self, trial: _Point, residual_noise: torch.Tensor) -> bool:
        """Both tests of the module docstring: the gradient falls, the cost rises by its rounding at most."""
        eps = torch.finfo(self.theta.dtype).eps
        absolute_r = self.r.abs()
        rounding = (eps * (COST_ROUNDING_ULPS * self.cost
                           + THETA_ROUNDING_FACTOR * float(absolute_r @ (self.J.abs() @ self.theta.abs())))
                    + RESIDUAL_NOISE_FACTOR * float(absolute_r @ residual_noise))
        return (float(trial.gradient.abs().max()) < float(self.gradient.abs().max())
                and trial.cost <= self.cost + rounding)


def _scaled_norm(v: torch.Tensor) -> float:
    """‖v‖₂ without underflow (torch's norm squares the entries, so |vᵢ| below 1e-154 count as 0)."""
    largest = float(v.abs().max()) if v.numel() else 0.0
    return largest * float(torch.linalg.vector_norm(v / largest)) if largest > 0.0 else 0.0


def _halves_the_cost(before: float, after: float) -> bool:
    """after² < REMEASURE_COST_RATIO · before² for residual norms, compared as norms (their squares may
    underflow)."""
    return after < REMEASURE_COST_RATIO ** 0.5 * before


def _noise_probes(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """16 ulps of each θⱼ, with all signs positive and with signs alternating (deterministic probes: no random
    generator is touched)."""
    ulps = NOISE_PROBE_ULPS * torch.finfo(theta.dtype).eps * theta.abs()
    signs = 1.0 - 2.0 * (torch.arange(theta.numel(), device=theta.device) % 2).to(theta.dtype)
    return ulps, ulps * signs


def residual_rounding(residuals_at: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, r: torch.Tensor,
                      J: torch.Tensor) -> torch.Tensor:
    """ν, the residuals' rounding at θ (r and J there): the larger, entry by entry, of |r(θ + p) − r(θ) − J p| for
    the two 16-ulp probes p (see the module docstring)."""
    return torch.stack([(residuals_at(theta + probe) - r - J @ probe).abs()
                        for probe in _noise_probes(theta)]).amax(dim=0)


def gradient_rounding_level(r: torch.Tensor, J: torch.Tensor, residual_noise: torch.Tensor) -> float:
    """maxⱼ Σᵢ |Jᵢⱼ| (ε|rᵢ| + νᵢ): how far ‖Jᵀr‖∞ moves with the rounding of the product and of the residuals."""
    eps = torch.finfo(r.dtype).eps
    return float((J.abs().mT @ (eps * r.abs() + residual_noise)).max())


@dataclass
class Polished:
    """What :func:`run_polish` did: the steps kept, the evaluations of the residuals it made (``evaluations``; the
    two rounding probes need r alone) and of their Jacobian (``jacobian_evaluations``), and the cost after over
    the cost before (1.0 when no step was kept)."""

    steps: int
    evaluations: int
    jacobian_evaluations: int
    cost_ratio: float


def run_polish(optimizer: LevenbergMarquardt, batch: tuple, weight: Any, max_steps: int) -> Polished:
    """Up to ``max_steps`` kept Gauss-Newton (then Newton) steps from the current θ, the last kept point left in
    the model."""
    layout = optimizer.layout
    evaluations = jacobians = 0

    def at(theta: torch.Tensor) -> _Point:
        nonlocal evaluations, jacobians
        evaluations, jacobians = evaluations + 1, jacobians + 1
        return _Point(theta, *LeastSquaresAt(optimizer, batch, theta, weight)())

    def residuals_at(theta: torch.Tensor) -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        return residuals_at_theta(optimizer, batch, theta, weight)

    point = first = at(layout.get_flat())
    residual_noise = residual_rounding(residuals_at, point.theta, point.r, point.J)
    newton_allowed = layout.numel <= NEWTON_MAX_PARAMETERS
    newton, kept, shrinking = False, 0, 0
    while kept - shrinking < max_steps and kept < SHRINKING_MAX_STEPS:
        at_rounding = point.gradient_at_rounding(residual_noise)
        if newton:
            if at_rounding:
                break
            step = _newton_step(lambda theta: at(theta).gradient, point.theta, point.gradient)
        else:
            step = _gauss_newton_step(point.J, point.r)
            if at_rounding and not point.model_halves_the_cost(step):
                break  # (only a zero residual's rounding shrinks with a step: its model predicts that)
        trial_theta = point.theta + step
        trial = at(trial_theta) if bool(torch.isfinite(trial_theta).all()) else None
        if trial is not None and point.improved_by(trial, residual_noise):
            if _halves_the_cost(point.residual_norm, trial.residual_norm):  # (r shrank: so did its rounding)
                residual_noise = residual_rounding(residuals_at, trial.theta, trial.r, trial.J)
                shrinking += 1
            point, kept = trial, kept + 1
        elif newton or not newton_allowed:
            break  # (this step is not kept: the polish ends here)
        else:
            newton = True  # (Gauss-Newton failed here: Newton steps from now on)
    if kept:
        layout.set_flat(point.theta)
    # (the ratio of norms: either cost may have underflowed to 0; a kept step means r ≠ 0 where it started)
    return Polished(kept, evaluations, jacobians, (point.residual_norm / first.residual_norm) ** 2 if kept else 1.0)
