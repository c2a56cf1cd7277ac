"""Iterate LM to convergence on a full batch, with MINPACK-style tests (ftol, xtol, gtol)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .levenberg_marquardt import LevenbergMarquardt
from .polish import polish_applies, run_polish
from .result import StepResult
from .solution import Covariance, LeastSquaresAt, cost_and_gradient, covariance, entry_names, residual_vector

#: scipy.optimize.least_squares's status codes where it has the same stop (1-3, 0), and three of its own
STATUS = {"gtol": 1, "ftol": 2, "xtol": 3, "max_iterations": 0, "lam_max": 5, "precision": 6, "not_finite": -2}
MESSAGES = {
    "gtol": "`gtol` termination condition is satisfied.",
    "ftol": "`ftol` termination condition is satisfied.",
    "xtol": "`xtol` termination condition is satisfied.",
    "max_iterations": "The maximum number of iterations is reached.",
    "lam_max": "lambda reached lambda_max without an accepted step: no step from here lowers the loss.",
    "precision": "No further progress is possible at working precision: the accepted step is below the rounding of "
                 "the parameters (ftol, xtol or gtol is below what the loss's rounding errors allow).",
    "not_finite": "The loss or its gradient is not finite at the current parameters.",
}


@dataclass
class FitResult:
    """Outcome of :func:`fit`, with the fields of ``scipy.optimize.least_squares``'s result.

    ``loss`` is the optimizer's loss (the mean with ``loss_scale='mean'``); ``cost`` is scipy's: the loss
    summed over the samples, ½ Σ rₖ² for least squares. ``fun`` holds the residuals r (least squares only, in
    the order of the batch's entries), ``grad`` ∇cost (Jᵀr for least squares) over θ's entries in the order of
    ``names``, ``jac`` the Jacobian of r (with ``fit(..., return_jacobian=True)``), ``nfev``/``njev`` the
    forward and Jacobian passes of the iterations (and of the polish), ``status`` scipy's code (:data:`STATUS`),
    ``polish_steps`` the Gauss-Newton (or Newton) steps kept after convergence (``fit(..., polish=...)``)."""

    converged: bool
    reason: str  # 'ftol', 'xtol', 'gtol', 'lam_max', 'precision', 'max_iterations', 'not_finite' (loss or g at θ)
    iterations: int
    loss: float
    history: list[StepResult] = field(default_factory=list)
    x: dict[str, torch.Tensor] = field(default_factory=dict)
    cost: float = math.nan
    fun: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    jac: torch.Tensor | None = None
    nfev: int = 0
    njev: int = 0
    names: list[str] = field(default_factory=list)
    polish_steps: int = 0
    _least_squares: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)
    _comm: Any = field(default=None, repr=False)

    @property
    def status(self) -> int:
        return STATUS[self.reason]

    @property
    def message(self) -> str:
        return MESSAGES[self.reason]

    @property
    def success(self) -> bool:
        return self.converged

    def covariance(self, absolute_sigma: bool = False) -> Covariance:
        """The parameters' covariance s²(JᵀJ)⁻¹ at the solution, s² = 2·cost/(m − n) (``scipy.optimize.
        curve_fit``'s ``pcov``), or (JᵀJ)⁻¹ with ``absolute_sigma=True``, for residuals already divided by
        their known standard deviations. Rows and columns are named by ``.names``. All inf, with a
        :class:`~marquardt.optim.solution.CovarianceWarning`, when J is rank-deficient or (estimating s²) m ≤ n."""
        if self._least_squares is None:
            raise ValueError("covariance: only a least-squares fit has one (loss 'mse', a residual callable or "
                             "residual function), not a cross-entropy fit")
        return covariance(self._least_squares, self.names, self._comm, 2.0 * self.cost, absolute_sigma=absolute_sigma)

    def standard_errors(self, absolute_sigma: bool = False) -> dict[str, torch.Tensor]:
        """√diag of :meth:`covariance`, by parameter name, each shaped like its parameter."""
        variances = self.covariance(absolute_sigma).matrix.diagonal()
        errors, offset = {}, 0
        for name, value in self.x.items():
            errors[name] = variances[offset : offset + value.numel()].sqrt().reshape(value.shape)
            offset += value.numel()
        return errors


def fit(
    optimizer: LevenbergMarquardt,
    *batch: Any,
    max_iterations: int = 200,
    ftol: float = 1e-10,
    xtol: float = 1e-10,
    gtol: float = 1e-12,
    progress: bool = False,
    return_jacobian: bool = False,
    weight: torch.Tensor | None = None,
    polish: bool | str = "auto",
) -> FitResult:
    """Run ``optimizer.step(*batch)`` (``fit(opt, inputs, targets)``, or the arguments of a residual function)
    until a convergence test holds or the budget ends.

    ``weight``: per-sample weights wᵢ ≥ 0 (shape [N]), each sample's loss counted wᵢ times.

    ``polish``: after a convergence test holds, up to ten undamped Gauss-Newton steps (minimum-norm, by the SVD
    of J; a zero residual converging may take up to 64), each kept only while ‖Jᵀr‖∞ falls and the cost stays
    within its rounding; where the Gauss-Newton step fails and there are at most 16 parameters, Newton steps with
    a finite-difference Hessian (optim/polish.py). The tests stop once the loss stops changing in its last digits,
    which can leave the gradient well above its rounding level; the polish takes it lower. ``'auto'`` polishes
    plain least squares without bounds in one process with at most 64 parameters; ``True`` asks for it at any
    size (an error where it does not apply); ``False`` never. The convergence ``reason`` stays the test that
    stopped the iterations.

    Tests, after each iteration (as in MINPACK's lmder):

    * ``ftol``: an accepted LM step whose actual and predicted relative reductions, (C₀ − C₁)/C₀ and
      pred/C₀, are both at most ftol (line-search steps have no prediction and never trigger it), and where the
      scaled gradient is small as well: ‖D⁻¹g‖²/(2 Σⱼ Aⱼⱼ/dⱼ), a lower bound on what the Gauss-Newton model can
      still gain, is at most ftol·C₀ (so a tiny prediction from an inaccurate solve of an ill-conditioned
      system, or from a step held short by the damping, does not stop the fit);
    * ``xtol``: an accepted step with ‖Δθ‖ ≤ xtol·(xtol + ‖θ‖), where the Gauss-Newton step would be that short
      too: its length is at least ‖g‖/Σⱼ Aⱼⱼ, and that must be within the same tolerance (so a step held short by a
      large λ or a small trust region does not stop the fit);
    * ``gtol``: MINPACK's scaled gradient at the current point is at most gtol: maxⱼ |gⱼ|/√(2·C₀·Aⱼⱼ), for least
      squares the largest cosine between the residual vector and a column of the Jacobian (a stationary point,
      judged independently of the scale of θ, r or the loss); or the gradient is exactly zero (with a
      ``RuntimeWarning`` where the loss is not 0: such a stop is more often a flat region, an underflowed or
      saturated model, than a minimum);
    * ``lam_max``: λ reached its upper bound without an accepted step (no further progress possible);
    * ``precision``: an accepted step shorter than the rounding of θ, ‖Δθ‖ ≤ 4ε‖θ‖ for ε of θ's dtype (MINPACK's
      info 6-7: the tolerances ask for more than the loss's rounding errors allow; the step only shrinks from here).

    It stops at once with reason ``not_finite`` (not converged) when the loss or the gradient at the current
    parameters is NaN or Inf: no step can be taken from there.

    The result also describes the point it stopped at as ``scipy.optimize.least_squares`` does (``x``,
    ``cost``, ``fun``, ``grad``, ``jac`` with ``return_jacobian=True``, ``status``, ``message``, ``success``)
    and gives the covariance of the parameters (:meth:`FitResult.covariance`).
    """
    if return_jacobian and not optimizer.curvature.least_squares:
        raise ValueError("return_jacobian: only a least-squares fit (loss 'mse', a residual callable or residual "
                         "function) has a Jacobian of residuals")
    polishing = _polish_choice(polish, optimizer)
    rounding = 4 * torch.finfo(optimizer.layout.params[0].dtype).eps  # (four ulps of θ's dtype)
    result = iterate(lambda: optimizer.step(*batch, weight=weight), optimizer.config.lam.maximum,
                     max_iterations=max_iterations, ftol=ftol, xtol=xtol, gtol=gtol, progress=progress,
                     rounding=rounding)
    evaluations = jacobian_evaluations = 0
    if polishing and result.converged:
        polished = run_polish(optimizer, batch, weight, max_steps=POLISH_STEPS)
        result.polish_steps, evaluations = polished.steps, polished.evaluations
        jacobian_evaluations = polished.jacobian_evaluations
        result.loss *= polished.cost_ratio  # (the loss is the cost times a fixed scale)
    _describe_solution(result, optimizer, batch, return_jacobian, weight)
    result.nfev, result.njev = result.nfev + evaluations, result.njev + jacobian_evaluations
    return result


#: the most Gauss-Newton steps ``fit`` keeps after convergence
POLISH_STEPS = 10


def _polish_choice(polish: Any, optimizer: LevenbergMarquardt) -> bool:
    """Whether to polish: the argument checked before anything runs."""
    if isinstance(polish, str) and polish == "auto":
        return polish_applies(optimizer)
    if not isinstance(polish, bool):
        raise ValueError(f"polish: expected True, False or 'auto', got {polish!r}")
    if polish and not polish_applies(optimizer, any_size=True):
        raise ValueError("polish=True: the Gauss-Newton polish needs a plain least-squares objective (loss 'mse', "
                         "a residual callable or residual function; not a robust loss or cross-entropy), no bounds "
                         "and a single process")
    return polish


def iterate(step: Callable[[], StepResult], lambda_max: float, *, max_iterations: int = 200, ftol: float = 1e-10,
            xtol: float = 1e-10, gtol: float = 1e-12, progress: bool = False,
            rounding: float = 4 * 2.0**-52) -> FitResult:
    """The loop of :func:`fit`: ``step()`` until a convergence test holds (λ's upper bound ``lambda_max``
    for the ``lam_max`` test, θ's relative rounding ``rounding`` for the ``precision`` test) or the budget ends;
    the result without the solution's description."""
    for name, value in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    if not (isinstance(max_iterations, int) and not isinstance(max_iterations, bool) and max_iterations >= 1):
        raise ValueError(f"max_iterations: expected an int >= 1, got {max_iterations!r}")
    bar = tqdm(total=max_iterations, desc="LM fit", leave=False) if progress else None
    history: list[StepResult] = []
    reason = "max_iterations"
    try:
        for _ in range(max_iterations):
            info = step()
            history.append(info)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{info.loss_after:.4g}", lam=f"{info.lam:.2g}")
            if info.reason == "not_finite":
                reason = "not_finite"  # nothing will change: the loss or gradient at θ is NaN or Inf
            elif info.reason == "zero_gradient" or (
                    info.gradient_cosine if info.gradient_cosine is not None else info.grad_norm_inf) <= gtol:
                reason = "gtol"
                if info.reason == "zero_gradient" and info.loss_before > 0:
                    _warn_flat_stop(info.loss_before)
            elif (
                info.accepted
                and info.predicted_reduction is not None
                and info.loss_before - info.loss_after <= ftol * abs(info.loss_before)
                and info.predicted_reduction <= ftol * abs(info.loss_before)
                and (info.model_reduction_bound is None or info.model_reduction_bound <= ftol * abs(info.loss_before))
            ):
                reason = "ftol"
            elif (
                info.accepted
                and info.step_norm <= xtol * (xtol + info.theta_norm)
                and (info.step_bound is None or info.step_bound <= xtol * (xtol + info.theta_norm))
            ):
                reason = "xtol"
            elif not info.accepted and info.lam >= lambda_max:
                reason = "lam_max"
            elif info.accepted and info.step_norm <= rounding * info.theta_norm:
                reason = "precision"  # (θ cannot move: the next iteration would only shrink the step further)
            else:
                continue
            info.converged = reason
            break
    finally:
        if bar is not None:
            bar.close()
    last = history[-1]
    return FitResult(reason not in ("max_iterations", "not_finite"), reason, len(history), last.loss_after, history)


def _warn_flat_stop(loss: float) -> None:
    """A gradient of exactly 0 where the loss is not 0: a stationary point, but rarely a minimum that was found.
    More often the model does not move with its parameters there (an exponential that underflowed to 0, saturated
    or dead units, a symmetric start), and MINPACK's gtol test passes all the same."""
    warnings.warn(f"fit: stopped on gtol where the gradient is exactly 0 but the loss is {loss:.6g}: a flat region "
                  "(an underflowed or saturated model, dead units, a symmetric start) rather than a minimum, most "
                  "likely; try another start", RuntimeWarning, stacklevel=4)


def _describe_solution(result: FitResult, optimizer: LevenbergMarquardt, batch: tuple, return_jacobian: bool,
                       weight: Any) -> None:
    """The scipy-style fields of the point the fit stopped at (the generator is left as it was)."""
    layout = optimizer.layout
    result.x = {name: p.detach().clone() for name, p in zip(layout.names, layout.params)}
    result.names = entry_names(layout)
    result.nfev = sum(info.forward_passes for info in result.history)
    result.njev = sum(info.jacobian_passes for info in result.history)
    result.cost, result.grad = cost_and_gradient(optimizer, batch, weight)
    if optimizer.curvature.least_squares:  # residuals, Jacobian, covariance
        result._least_squares = LeastSquaresAt(optimizer, batch, layout.get_flat(), weight)
        result._comm = optimizer.objective.comm
        if return_jacobian:
            result.fun, result.jac = result._least_squares()
        else:
            result.fun = residual_vector(optimizer, batch, weight)
