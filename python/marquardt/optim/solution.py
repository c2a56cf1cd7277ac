r"""What :func:`~marquardt.fit` reports about the point it stopped at, as scipy's ``least_squares`` and
``curve_fit`` report it: the cost ½ Σ rₖ², its gradient, the residuals, their Jacobian, and the covariance of
the parameters.

Covariance (the Gauss-Newton estimate, as ``scipy.optimize.curve_fit`` computes it):

.. math::

    \mathrm{Cov}(\theta) = s^2 (J^\top J)^{-1},\qquad s^2 = \frac{2\,\mathrm{cost}}{m - n} = \frac{r^\top r}{m - n}

for m residuals and n parameters, or (JᵀJ)⁻¹ alone with ``absolute_sigma=True`` (residuals already divided by
known standard deviations σ, so that s² = 1 is known rather than estimated). The inverse is taken through the
singular values of J; a J of lower rank than n, or m ≤ n when s² is estimated, leaves the covariance undefined:
every entry is then inf, with a :class:`CovarianceWarning`, as scipy does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..curvature.noise import NoiseReplay
from .levenberg_marquardt import LevenbergMarquardt


class CovarianceWarning(UserWarning):
    """The covariance of the parameters could not be estimated (a rank-deficient Jacobian, or m ≤ n)."""


def entry_names(layout: Any) -> list[str]:
    """One name per entry of θ: ``'k'`` for a scalar parameter, ``'net.0.weight[1, 2]'`` for a tensor's entry."""
    names = []
    for name, p in zip(layout.names, layout.params):
        if p.dim() == 0:
            names.append(name)
            continue
        for flat in range(p.numel()):
            index = torch.unravel_index(torch.tensor(flat), p.shape)
            names.append(f"{name}[{', '.join(str(int(i)) for i in index)}]")
    return names


@dataclass
class Covariance:
    """The parameters' covariance, with a name for each row (and column): see :func:`entry_names`."""

    matrix: torch.Tensor
    names: list[str]


@dataclass
class LeastSquaresAt:
    """The residuals r and Jacobian J of a least-squares objective at a fixed θ, computed when first asked for
    (the model's parameters are written back as they were afterwards)."""

    optimizer: LevenbergMarquardt
    batch: tuple
    theta: torch.Tensor
    weight: torch.Tensor | None = None
    _value: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._value is None:
            self._value = _at(self.optimizer, self.theta, lambda: _residuals_and_jacobian(self.optimizer, self.batch,
                                                                                              self.weight))
        return self._value


def _at(optimizer: LevenbergMarquardt, theta: torch.Tensor, evaluate: Callable[[], Any]) -> Any:
    """evaluate() with θ written into the model and the random generator replayed, then both put back."""
    layout = optimizer.layout
    current = layout.get_flat()
    noise = NoiseReplay(layout.device)
    try:
        layout.set_flat(theta)
        return evaluate()
    finally:
        layout.set_flat(current)
        noise.replay()


def _prepared(optimizer: LevenbergMarquardt, batch: tuple, weight: Any) -> tuple[Any, Any, Any]:
    inputs, targets = optimizer.loss_choice.split(batch)
    optimizer.objective.check_batch(inputs, targets)
    noise = NoiseReplay(optimizer.layout.device)
    prepared = optimizer.objective.prepare(inputs, targets, noise, None, optimizer.config.objective.loss_scale, weight)
    return prepared, noise, optimizer.chooser.plan(prepared.problem).chunk


def _residuals_and_jacobian(optimizer: LevenbergMarquardt, batch: tuple,
                            weight: Any) -> tuple[torch.Tensor, torch.Tensor]:
    prepared, noise, _ = _prepared(optimizer, batch, weight)
    with torch.no_grad():
        r, J = optimizer.objective.least_squares(prepared.inputs, prepared.targets, noise, prepared.weights)
    return r.detach(), J.detach()


def residual_vector(optimizer: LevenbergMarquardt, batch: tuple, weight: Any = None) -> torch.Tensor:
    """r [M] at the current θ (√wᵢ rᵢ with weights), in the order of the batch's entries, from one forward pass
    (least squares)."""
    prepared, noise, _ = _prepared(optimizer, batch, weight)
    objective = optimizer.objective
    noise.replay()
    with torch.no_grad():
        z = objective.outputs(prepared.inputs, prepared.targets)
        r = objective.curvature.residuals(z, None if objective.residual_mode else prepared.targets)
        if prepared.weights is not None:
            r = r * prepared.weights.sqrt().to(r.dtype).unsqueeze(1)
    noise.replay()
    return r.reshape(-1).detach()


def residuals_at_theta(optimizer: LevenbergMarquardt, batch: tuple, theta: torch.Tensor,
                       weight: Any = None) -> torch.Tensor:
    """:func:`residual_vector` at θ (written into the model and put back, the generator replayed)."""
    return _at(optimizer, theta, lambda: residual_vector(optimizer, batch, weight))


def cost_and_gradient(optimizer: LevenbergMarquardt, batch: tuple, weight: Any = None) -> tuple[float, torch.Tensor]:
    """(cost, ∇cost) at the current θ: cost = Σᵢ wᵢ ℓᵢ, the loss summed rather than averaged (½ Σ rₖ² for least
    squares, scipy's ``cost``), and its gradient (Jᵀr for least squares), over all ranks."""
    prepared, noise, chunk = _prepared(optimizer, batch, weight)
    chunks = list(optimizer.objective._chunks(prepared.inputs, prepared.targets, chunk, prepared.weights))
    g, cost = optimizer.objective.gradient(chunks, noise, 1.0)
    noise.replay()
    return cost, g.detach()


def covariance(least_squares: Callable[[], tuple[torch.Tensor, torch.Tensor]], names: list[str], comm: Any,
               twice_cost: float, absolute_sigma: bool = False) -> Covariance:
    """s²(JᵀJ)⁻¹ (see the module docstring) with s² = 2·cost/(m − n) (rᵀr/(m − n) without a robust loss; with
    one, J is its corrected Jacobian, as scipy's curve_fit takes it from least_squares), JᵀJ and m summed over
    the ranks (the cost is already)."""
    _, J = least_squares()
    n = J.shape[1]
    rr = twice_cost
    m = int(round(comm.sum_float(float(J.shape[0]), J.device)))
    if comm.active:  # only JᵀJ sums over the ranks: its eigenvalues are J's squared singular values
        eigenvalues, vectors = torch.linalg.eigh(comm.sum_(J.T.double() @ J.double()))
        singular, vectors = eigenvalues.clamp_min(0.0).sqrt(), vectors
    else:  # J's own singular values, as scipy takes them (JᵀJ would square the condition number)
        _, singular, vt = torch.linalg.svd(J.double(), full_matrices=False)
        vectors = vt.T
    threshold = torch.finfo(torch.float64).eps * max(m, n) * float(singular.max())
    estimated = not absolute_sigma
    if bool((singular <= threshold).any()) or singular.numel() < n or (estimated and m <= n):
        why = f"m = {m} residuals for n = {n} parameters" if estimated and m <= n else \
            "the Jacobian at the solution is rank-deficient"
        warnings.warn(f"covariance: the covariance of the parameters cannot be estimated ({why}); every entry is "
                      "inf", CovarianceWarning, stacklevel=3)
        matrix = torch.full((n, n), float("inf"), dtype=torch.float64, device=J.device)
    else:
        matrix = (vectors / singular**2) @ vectors.T
        if estimated:
            matrix = matrix * (rr / (m - n))
    return Covariance(matrix.to(J.dtype), names)
