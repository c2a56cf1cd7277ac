"""Iterate LM to convergence on a full batch, with MINPACK-style tests (ftol, xtol, gtol)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .levenberg_marquardt import LevenbergMarquardt
from .result import StepResult


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    converged: bool
    reason: str  # 'ftol', 'xtol', 'gtol', 'lam_max', 'max_iterations', 'not_finite' (the loss or gradient at θ)
    iterations: int
    loss: float
    history: list[StepResult] = field(default_factory=list)


def fit(
    optimizer: LevenbergMarquardt,
    *batch: Any,
    max_iterations: int = 200,
    ftol: float = 1e-10,
    xtol: float = 1e-10,
    gtol: float = 1e-12,
    progress: bool = False,
) -> FitResult:
    """Run ``optimizer.step(*batch)`` (``fit(opt, inputs, targets)``, or the arguments of a residual function)
    until a convergence test holds or the budget ends.

    Tests, after each iteration (as in MINPACK's lmder):

    * ``ftol``: an accepted LM step whose actual and predicted relative reductions, (C₀ − C₁)/C₀ and
      pred/C₀, are both at most ftol (line-search steps have no prediction and never trigger it);
    * ``xtol``: an accepted step with ‖Δθ‖ ≤ xtol·(xtol + ‖θ‖);
    * ``gtol``: ‖g‖∞ ≤ gtol at the current point (a stationary point);
    * ``lam_max``: λ reached its upper bound without an accepted step (no further progress possible).

    It stops at once with reason ``not_finite`` (not converged) when the loss or the gradient at the current
    parameters is NaN or Inf: no step can be taken from there.
    """
    for name, value in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    if not (isinstance(max_iterations, int) and not isinstance(max_iterations, bool) and max_iterations >= 1):
        raise ValueError(f"max_iterations: expected an int >= 1, got {max_iterations!r}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iterations, desc="LM fit", leave=False)
    history: list[StepResult] = []
    reason = "max_iterations"
    try:
        for _ in range(max_iterations):
            info = optimizer.step(*batch)
            history.append(info)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{info.loss_after:.4g}", lam=f"{info.lam:.2g}")
            if info.reason == "not_finite":
                reason = "not_finite"  # nothing will change: the loss or gradient at θ is NaN or Inf
            elif info.grad_norm_inf <= gtol or info.reason == "zero_gradient":
                reason = "gtol"
            elif (
                info.accepted
                and info.predicted_reduction is not None
                and info.loss_before - info.loss_after <= ftol * abs(info.loss_before)
                and info.predicted_reduction <= ftol * abs(info.loss_before)
            ):
                reason = "ftol"
            elif info.accepted and info.step_norm <= xtol * (xtol + info.theta_norm):
                reason = "xtol"
            elif not info.accepted and info.lam >= optimizer.config.lam.maximum:
                reason = "lam_max"
            else:
                continue
            info.converged = reason
            break
    finally:
        if bar is not None:
            bar.close()
    last = history[-1]
    return FitResult(reason not in ("max_iterations", "not_finite"), reason, len(history), last.loss_after, history)
