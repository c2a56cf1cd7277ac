r"""The Levenberg-Marquardt optimizer for any ``nn.Module``: a short loop over swappable pieces.

One call of :meth:`LevenbergMarquardt.step` is one LM iteration on one batch (docs/algorithm.md, "The step"):

.. math::

    \delta_{LM} = -(A + \lambda\,\mathrm{diag}(d))^{-1} g,\qquad A = \alpha\,\mathcal{J}^\top\mathcal{J},\quad
    g = \alpha\,\mathcal{J}^\top\rho

The objective (curvature/objective.py) evaluates the model and fills the system that the solver chooser
(solve/choose.py) picked; the damping policy sets d; then each attempt solves for the current λ, lets the
momentum and geodesic policies reshape the step, and asks the acceptance policy (and, on failure, the line
search) whether to take it, while the λ rule moves λ. Parameters are only ever the old ones or a finite
accepted update.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..curvature.losses import Curvature
from ..curvature.noise import NoiseReplay
from ..curvature.objective import Batch, Objective, ResidualFn
from ..curvature.residual_function import ModelResidualFn
from ..parallel import Communicator
from ..policy.acceptance import ACCEPTANCE
from ..policy.bounds import box_of
from ..policy.damping import DAMPING
from ..policy.geodesic import GeodesicAcceleration
from ..policy.lam import LAMBDA_RULES, LambdaBounds
from ..policy.line_search import LINE_SEARCHES
from ..policy.momentum import MOMENTUM, compares_with_lm_step
from ..solve.choose import SolverChooser
from ..solve.system import System
from ..types.layout import ParameterLayout
from .checkpoint import Checkpointing, initial_state
from .config import (
    Config,
    choose_loss,
    comparable_settings,
    curvature_for,
    curvature_samples_at,
    eager_module,
    objective_defaults,
    resolve,
)
from .result import StepResult

__all__ = ["LevenbergMarquardt", "StepResult", "ResidualFn", "ModelResidualFn"]


class LevenbergMarquardt(Checkpointing, torch.optim.Optimizer):
    """Levenberg-Marquardt for any ``nn.Module`` (a ``torch.optim.Optimizer``).

    Args:
        model: the network or parametric model. Its trainable parameters (``requires_grad=True``) are the
            unknowns; frozen ones are left alone.
        loss: ``"mse"`` (Gauss-Newton, ℓ = ½‖z − y‖²; the default), ``"cross_entropy"`` (generalized
            Gauss-Newton by default, or the paper's empirical Fisher with ``curvature="ef"``), or a residual
            callable ``fn(outputs, targets) -> residuals`` for general nonlinear least squares (ℓ = ½ Σ r²).
        residuals: instead of ``loss``, a residual function ``fn(model, *batch)`` returning one tensor of residuals
            or a tuple of groups (a PDE's interior and boundary terms), flattened and concatenated: ``step(*batch)``
            minimises ½ Σ rₖ² (÷ M residuals with ``loss_scale="mean"``). ``fn`` may differentiate ``model`` in its
            inputs by ``torch.func`` or by ``torch.autograd.grad(..., create_graph=True)``.
        bounds: ``{parameter name: (lower, upper)}``, each end a number, a tensor broadcastable to the parameter,
            or None; every iterate stays inside (an active-set projected LM: policy/bounds.py).
        preset: ``"default"`` (improved settings), ``"paper"`` (the authors' choices), ``"vanilla"``, or a
            :class:`~marquardt.optim.config.Config`.
        **options: any flat option of :data:`marquardt.optim.config.OPTIONS`, e.g. ``damping``,
            ``lambda_rule``, ``momentum``, ``acceptance``, ``line_search``, ``geodesic``, ``solver``,
            ``memory_budget``; policy options take a registered name or a policy instance.

    Example::

        opt = LevenbergMarquardt(model, loss="mse")
        for x, y in loader:
            info = opt.step(x, y)
    """

    def __init__(self, model: nn.Module, loss: str | ResidualFn | None = None, *,
                 residuals: ModelResidualFn | None = None, bounds: dict[str, Any] | None = None,
                 preset: str | Config = "default", **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        choice, options = choose_loss(loss, residuals, options)
        self.model = eager_module(model)
        self.layout = ParameterLayout.of(self.model)
        config = objective_defaults(resolve(preset, options), choice, self.layout.numel)
        curvature = curvature_for(choice.loss, choice.residual_mode, config)
        self.box = box_of(bounds, self.layout)
        self.preset = preset
        self.loss_choice = choice
        self._out_of_step: str | None = None  # set when a step raised under torch.distributed
        super().__init__(self.layout.params, {**config.flat(), "loss": choice.name})
        self._build(config, curvature)

    def _build(self, config: Config, curvature: Curvature) -> None:
        """Every piece, built once from the config (again when a checkpoint brings other settings)."""
        self.config = config
        self.curvature, self.residual_fn = curvature, self.loss_choice.residual_fn
        self.objective = Objective(self.model, self.layout, curvature, self.residual_fn, config.objective.engine,
                                   Communicator(config.objective.distributed), self.loss_choice.residuals)
        self.objective.setup = comparable_settings(config)
        self.chooser = SolverChooser(config.solve, self.layout)
        self.chooser.check_model(self.objective.engine.may_factor)
        self.damping = DAMPING.build(config.damping.kind, config.damping)
        self.lambda_rule = LAMBDA_RULES.build(config.lam.rule, config.lam)
        kind = config.momentum.kind
        self.momentum = MOMENTUM.build(kind, config.momentum) if kind is not None else None
        self.acceptance = ACCEPTANCE.build(config.trial.acceptance, config.trial)
        kind = config.trial.line_search
        self.line_search = LINE_SEARCHES.build(kind, config.trial) if kind is not None else None
        geodesic = config.trial.geodesic
        self.geodesic = GeodesicAcceleration(config.trial.geodesic_alpha) if geodesic is True else geodesic or None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if len(self.param_groups) > 0:
            raise ValueError("LevenbergMarquardt works on one flat parameter vector; it has one param group")
        super().add_param_group(param_group)

    @property
    def settings(self) -> dict[str, Any]:
        """The flat options in force (what a checkpoint holds)."""
        return self.param_groups[0]

    @property
    def _state(self) -> dict[str, Any]:
        # Global LM state lives with the first parameter (as in torch.optim.LBFGS): state_dict() carries it.
        state = self.state[self.layout.params[0]]
        if not state:
            state.update(initial_state(self.config, self.layout))
        return state

    # ---------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, *batch: Any, weight: torch.Tensor | None = None) -> StepResult:  # type: ignore[override]
        """One LM iteration: ``step(inputs, targets)`` for a loss, ``step(*batch)`` for a residual function, each
        sample's loss times ``weight[i]`` if given. Returns a :class:`StepResult`. A step that raises leaves the
        parameters, the state and the random generator as they were."""
        if getattr(self, "_out_of_step", None):
            raise RuntimeError(self._out_of_step)
        inputs, targets = self.loss_choice.split(batch)
        self.objective.check_batch(inputs, targets)
        fresh = not self.state[self.layout.params[0]]
        theta0 = self.layout.get_flat()
        noise = NoiseReplay(self.layout.device)
        passes_before = self.objective.forward_passes
        try:
            result = self._iterate(inputs, targets, theta0, noise, weight)
        except BaseException:
            self.layout.set_flat(theta0)  # never leave parameters half-updated (the state is written last)
            noise.replay()  # the generator as before the step
            if fresh:
                self.state.pop(self.layout.params[0], None)
            if self.objective.comm.active:  # the ranks' collectives are now out of step: no further step can pair up
                self._out_of_step = ("LevenbergMarquardt: a step raised on this rank under torch.distributed, so the "
                                     "ranks' collectives no longer pair up; rebuild the optimizers on every rank")
            raise
        noise.finish()
        self.objective.commit_batch()
        result.forward_passes = self.objective.forward_passes - passes_before
        self._state["forward_passes"] += result.forward_passes
        return result

    def _iterate(self, inputs: Any, targets: Any, theta0: torch.Tensor, noise: NoiseReplay, weight: Any) -> StepResult:
        state = self._state
        samples = curvature_samples_at(self.config.objective.curvature_samples, state["step"])
        batch = self.objective.prepare(inputs, targets, noise, samples, self.config.objective.loss_scale, weight)
        changed = self.objective.batch_changed(inputs, targets)  # (recorded only when the step succeeds)
        # the flag lives in the state: a resumed run keeps it until it has seen two batches
        self._minibatch = state.get("minibatch", False) if changed is None else changed
        system, c0 = self.objective.build_system(batch, self.chooser.plan(batch.problem), noise, state["step"])
        self.box.hold_active(system, theta0)  # (bounds: parameters held on them leave the gradient)
        g = system.g
        result = StepResult(
            loss_before=c0, loss_after=c0, accepted=False, reason="rejected", lam=state["lam"], multiplier=0.0,
            attempts=0, forward_passes=0, jacobian_passes=1, solves=0, form=system.form,
            engine=self.objective.engine.name, momentum_used=False, geodesic_used=False,
            grad_norm_inf=float(g.abs().max()), step_norm=0.0,
            theta_norm=float(torch.linalg.vector_norm(theta0, dtype=torch.float64)),
            curvature_samples=batch.curvature_samples if not self.loss_choice.residual_mode else None,
        )
        if not (math.isfinite(c0) and math.isfinite(result.grad_norm_inf)):  # max |g| is NaN or Inf if any g is
            result.reason = "not_finite"
            result.notes.append("loss or gradient not finite at the current parameters; no step taken")
            return self._finish(result, theta0, None)
        if result.grad_norm_inf == 0.0:
            result.reason = "zero_gradient"
            return self._finish(result, theta0, None)

        d_new = self.damping.update(state["d"].clone(), system)  # the state's d is replaced only at the end
        d = self.box.damping(d_new.to(system.dtype))
        system.set_damping(d)
        result.model_reduction_bound, result.step_bound, result.gradient_cosine = system.convergence_measures(d, c0)
        bounds, lam = LambdaBounds.for_step(self.config.lam, state["lam"], self._minibatch)
        accepted_step, lam, nu = self._attempts(system, d, batch, theta0, noise, c0, result, lam, bounds)
        result.cg_iterations = system.statistics().get("cg_iterations")
        if accepted_step is not None or not self.config.damping.revert_on_reject:
            state["d"] = d_new
        state["lam"], state["nu"] = lam, nu
        result.lam, result.form = lam, system.form  # (a small primal system may have turned to QR)
        return self._finish(result, theta0, accepted_step)

    def _attempts(self, system: System, d: torch.Tensor, batch: Batch, theta0: torch.Tensor, noise: NoiseReplay,
                  c0: float, result: StepResult, lam: float,
                  bounds: LambdaBounds) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, float, float]:
        """Up to max_attempts trials at rising λ: ((the accepted step, θ₀ + step) or None, λ, ν)."""
        trial, rule, nu, g = self.config.trial, self.lambda_rule, self._state["nu"], system.g
        s_prev = self._state["s_prev"]
        s_prev = s_prev.to(g.dtype) if s_prev is not None else None
        eta = trial.step_multiplier
        for attempt in range(trial.max_attempts):
            result.attempts = attempt + 1
            lam, nu = rule.choose(lam, nu, system, theta0, first=self._state["step"] == 0 and attempt == 0)
            # With geodesic acceleration the factor is kept: the correction solves a second right-hand side.
            delta_lm, ok = system.lm_step(lam, keep_factor=self.geodesic is not None)
            result.solves += 1
            if not ok:
                result.notes.append(f"factorisation failed at lambda={lam:.3g}")
                lam, nu = rule.rejected(lam, nu, bounds)
                continue
            candidates = [(delta_lm, False)]
            if self.momentum is not None and s_prev is not None:
                i_ff = system.quadratic(s_prev) + lam * float((d * s_prev * s_prev).sum())
                reshaped = self.momentum.apply(delta_lm, g, s_prev, i_ff)
                if reshaped.used:  # (the LM step stays a candidate only where the rule compares the two)
                    compare = compares_with_lm_step(self.config.momentum.compare_lm_step, self._minibatch)
                    candidates = [(reshaped.step, True)] + candidates[:compare]
            tried = [t for t in (self._trial(delta, used, lam, system, theta0, batch, noise, eta, result)
                                 for delta, used in candidates) if t is not None]
            if not tried:
                lam, nu = rule.rejected(lam, nu, bounds)
                continue
            # the lowest loss of the candidates (a NaN loss never wins)
            best = min(tried, key=lambda t: t[0] if math.isfinite(t[0]) else math.inf)
            c1, delta, step, trial_point, result.momentum_used, result.geodesic_used = best
            predicted = system.predicted_reduction(step)
            reason = self.acceptance.decide(c0, c1, delta_lm, s_prev)
            if reason is not None:
                result.reason, result.multiplier, result.loss_after = reason, eta, c1
                result.predicted_reduction = predicted
                lam, nu = rule.accepted(lam, nu, self.acceptance.gain_ratio(c0, c1, predicted), bounds)
                return (step, trial_point), lam, nu
            lam, nu = rule.rejected(lam, nu, bounds)
            if self.line_search is not None:
                def loss_along(m: float, along: torch.Tensor = delta) -> float:  # (δ of this attempt, bound now)
                    point = self.box.project(theta0 + self.box.clip(theta0, (m * along).to(theta0.dtype)))
                    return self.objective.loss_at(point, batch, noise)

                found = self.line_search.take(loss_along, c0, {eta: c1})
                if found is not None:
                    s_star, c_star = found
                    result.reason, result.multiplier, result.loss_after = "line_search", s_star, c_star
                    step = self.box.clip(theta0, (s_star * delta).to(theta0.dtype))
                    return (step, self.box.project(theta0 + step)), lam, nu
        return None, lam, nu

    def _trial(self, delta: torch.Tensor, momentum: bool, lam: float, system: System, theta0: torch.Tensor,
               batch: Batch, noise: NoiseReplay, eta: float, result: StepResult) -> tuple | None:
        """(loss, δ, step, θ₀ + step, momentum used, geodesic used) of one candidate step, its geodesic correction
        applied; None when the correction is too large."""
        if self.geodesic is not None:
            residual = self.objective.second_order_residual(delta, theta0, batch, noise, system.g.dtype)
            corrected = self.geodesic.correct(delta, lam, system, residual)
            if corrected is None:
                result.notes.append("geodesic correction too large: attempt rejected")
                return None
            delta = corrected
        step = self.box.clip(theta0, (eta * delta).to(theta0.dtype))
        trial_point, geodesic = self.box.project(theta0 + step), self.geodesic is not None
        return self.objective.loss_at(trial_point, batch, noise), delta, step, trial_point, momentum, geodesic

    def _finish(self, result: StepResult, theta0: torch.Tensor,
                accepted: tuple[torch.Tensor, torch.Tensor] | None) -> StepResult:
        """Commits a finite accepted step (the step and θ₁ = θ₀ + step) in one update, or restores θ₀."""
        state = self._state
        if accepted is not None:
            step, theta1 = accepted
            if bool(torch.isfinite(theta1).all()):  # (not finite when the step is not: θ₀ is)
                self.layout.set_flat(theta1)  # (nothing to copy when θ₁ is what the last evaluation wrote)
                state["s_prev"] = step  # a tensor of this step alone: nothing else holds or changes it
                result.accepted = True
                result.step_norm = float(torch.linalg.vector_norm(step, dtype=torch.float64))
        if not result.accepted:
            self.layout.set_flat(theta0)
            result.loss_after = result.loss_before
            if result.reason not in ("zero_gradient", "not_finite"):
                result.reason = "rejected"
            result.multiplier = 0.0
        state["step"] += 1
        state["solves"] += result.solves
        state["minibatch"] = self._minibatch
        return result
