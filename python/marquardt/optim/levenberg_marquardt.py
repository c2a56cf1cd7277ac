r"""The Levenberg-Marquardt optimizer for any ``nn.Module``.

One call of :meth:`LevenbergMarquardt.step` is one LM iteration on one batch (ALGORITHM.md §0.4):

.. math::

    \delta_{LM} = -(A + \lambda\,\mathrm{diag}(d))^{-1} g,\qquad A = \alpha\,\mathcal{J}^\top\mathcal{J},\quad
    g = \alpha\,\mathcal{J}^\top\rho

with the generalized Jacobian 𝒥 and residual ρ of the curvature mode (``gn``, ``ggn``, ``ef``), α = 1/N
(mean loss) or 1 (sum), and d the running maximum of diag(A). The step is then reshaped by LMAM momentum
and (optionally) geodesic acceleration, tried on the same batch with the same noise, and accepted downhill,
uphill (guarded) or through the learning-rate line search; λ moves by the chosen rule. Parameters are only
ever the old ones or a finite accepted update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .. import ops
from ..curvature.jacobian import FastPathJacobian, FullJacobian, FunctorchJacobian, NotApplicable
from ..curvature.losses import Curvature, GaussNewtonMSE, make_curvature
from ..curvature.noise import NoiseReplay
from ..curvature.params import ParameterLayout
from ..parallel import Communicator
from ..policy import acceptance, geodesic, line_search
from ..policy.damping import update_damping
from ..policy.lam import LambdaRule
from ..policy.momentum import LMAM
from ..solve.block import BlockDiagonalSystem, fit_to_budget, make_blocks
from ..solve.kronecker import kronecker_pays, kronecker_workspace
from ..solve.pcg import factored_dual_pays
from ..solve.systems import DualSystem, FactoredDualSystem, PrimalSystem
from .settings import curvature_samples_at, resolve, subsamples_curvature

# fn(outputs, targets) -> residuals; targets are what step() was given, None when it was given none
ResidualFn = Callable[[torch.Tensor, Any], torch.Tensor]


@dataclass
class StepResult:
    """What one LM iteration did."""

    loss_before: float
    loss_after: float
    accepted: bool
    reason: str  # 'downhill', 'uphill', 'line_search', 'rejected', 'zero_gradient'
    lam: float
    multiplier: float  # η for a regular step, s* for a line-search step, 0 when rejected
    attempts: int
    forward_passes: int
    jacobian_passes: int
    solves: int
    form: str  # 'primal' or 'dual'
    engine: str
    momentum_used: bool
    geodesic_used: bool
    grad_norm_inf: float
    step_norm: float
    theta_norm: float
    predicted_reduction: float | None = None
    curvature_samples: int | None = None  # batch samples (all ranks) the curvature came from; None: residual fn
    cg_iterations: int | None = None  # conjugate-gradient iterations of all solves (dual_method 'pcg'), else None
    converged: str | None = None  # set by fit(): 'ftol', 'xtol', 'gtol' or None
    notes: list[str] = field(default_factory=list)


class LevenbergMarquardt(torch.optim.Optimizer):
    """Levenberg-Marquardt for any ``nn.Module`` (a ``torch.optim.Optimizer``).

    Args:
        model: the network or parametric model. Its trainable parameters (``requires_grad=True``) are the
            unknowns; frozen ones are left alone.
        loss: ``"mse"`` (Gauss-Newton, ℓ = ½‖z − y‖²), ``"cross_entropy"`` (generalized Gauss-Newton by
            default, or the paper's empirical Fisher with ``curvature="ef"``), or a residual callable
            ``fn(outputs, targets) -> residuals`` for general nonlinear least squares (ℓ = ½ Σ r²).
        preset: ``"default"`` (improved settings), ``"paper"`` (the authors' choices) or ``"vanilla"``.
        **options: any key of :data:`marquardt.optim.settings.DEFAULTS`, e.g. ``damping``, ``lambda_rule``,
            ``momentum``, ``line_search``, ``uphill``, ``geodesic``, ``solver``, ``memory_budget``.

    Example::

        opt = LevenbergMarquardt(model, loss="mse")
        for x, y in loader:
            info = opt.step(x, y)
    """

    def __init__(
        self, model: nn.Module, loss: str | ResidualFn = "mse", *, preset: str = "default", **options: Any
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if callable(loss) and not isinstance(loss, str) and preset == "default" and "momentum" not in options:
            # Curve fitting: LMAM's fixed H-radius κ√I_GG rules out the full Gauss-Newton step and with it the
            # fast local convergence that least-squares fits rely on (MGH set: 16/16 solved without momentum,
            # 14/16 and several times more iterations with it; tests/optim/test_mgh.py). Classic LM here.
            options = {**options, "momentum": None}
        settings = resolve(preset, options)
        self.model = model
        self.layout = ParameterLayout.of(model)
        self.residual_fn: ResidualFn | None = None
        if callable(loss) and not isinstance(loss, str):
            if settings["curvature"] not in (None, "gn"):
                raise ValueError("curvature: a residual callable supports only 'gn'")
            self.residual_fn = loss
            self.curvature: Curvature = GaussNewtonMSE()
        else:
            self.curvature = make_curvature(loss, settings["curvature"])
        subsampled = subsamples_curvature(settings["curvature_samples"])
        if subsampled and (self.residual_fn is not None or settings["geodesic"]):
            raise ValueError("curvature_samples: subsampled curvature needs loss='mse' or 'cross_entropy' and "
                             "geodesic=False")
        if settings["geodesic"] and not self.curvature.supports_geodesic:
            raise ValueError("geodesic: acceleration has no meaning for the empirical Fisher (curvature='ef')")
        self.preset = preset
        super().__init__(self.layout.params, {**settings, "loss": loss if isinstance(loss, str) else "residual"})
        self._engine = self._make_engine(settings["engine"])
        self._output_shapes: dict[tuple, tuple[int, tuple[int, ...]]] = {}
        self._block_cache: list[torch.Tensor] | None = None
        # per input shape: whether the fast engine can keep this model's rows factored (FastPathJacobian.factorable)
        self._factorable: dict[tuple, bool] = {}
        self._batch_factorable = False  # ... for the batch of the step in progress
        self._dual_workspace: dict[str, torch.Tensor] = {}  # m × m buffers reused from step to step
        self._comm = Communicator(settings["distributed"])
        self._last_batch: tuple | None = None
        self._checked_ranks = False

    # ----------------------------------------------------------------------------------------- setup
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if len(self.param_groups) > 0:
            raise ValueError("LevenbergMarquardt works on one flat parameter vector; it has one param group")
        super().add_param_group(param_group)

    @property
    def settings(self) -> dict[str, Any]:
        return self.param_groups[0]

    def _make_engine(self, kind: str):
        if self.residual_fn is not None or kind == "full":
            return FullJacobian(self._functional_outputs, self.layout)
        if kind in ("auto", "fast"):
            try:
                return FastPathJacobian(self.model, self.layout)
            except NotApplicable as exc:
                if kind == "fast":
                    raise ValueError(f"engine='fast' cannot handle this model: {exc}") from exc
        return FunctorchJacobian(self.model, self.layout)

    def _functional_outputs(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor | None):
        z = functional_call(self.model, params, (x,))
        if self.residual_fn is not None:
            z = self.residual_fn(z, y)
            return z.reshape(z.shape[0], -1) if z.dim() > 0 else z.reshape(1, 1)
        return z

    def _outputs(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        z = self.model(x)
        if self.residual_fn is not None:
            z = self.residual_fn(z, y)
            z = z.reshape(z.shape[0], -1) if z.dim() > 0 else z.reshape(1, 1)
        return z

    @property
    def _state(self) -> dict[str, Any]:
        # Global LM state lives with the first parameter (as torch.optim.LBFGS does), so state_dict() and
        # load_state_dict() carry it.
        state = self.state[self.layout.params[0]]
        if not state:
            s = self.settings
            state["lam"] = float(s["lam_init"])
            state["nu"] = 2.0
            # d lives in float64 whatever the solve dtype: it is an n-vector, and it must not lose the
            # running maximum to rounding.
            state["d"] = torch.full(
                (self.layout.numel,), float(s["d_init"]), dtype=torch.float64, device=self.layout.device
            )
            state["s_prev"] = None
            state["step"] = 0
            state["forward_passes"] = 0
            state["solves"] = 0
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch.optim casts floating state to the parameter dtype; d is kept in the curvature dtype so that
        # a resumed run is bit-identical to an uninterrupted one.
        saved = state_dict["state"].get(0, {})
        super().load_state_dict(state_dict)
        state = self.state[self.layout.params[0]]
        if "d" in saved:
            state["d"] = saved["d"].to(device=self.layout.device, dtype=saved["d"].dtype).clone()

    # ---------------------------------------------------------------------------------- validation
    def _check_batch(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> None:
        for name, t in (("inputs", inputs), ("targets", targets)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.device != self.layout.device:
                raise ValueError(f"{name}: on {t.device} but the model's parameters are on {self.layout.device}")
            if t.is_floating_point() and t.dtype != self.layout.dtype:
                raise ValueError(f"{name}: dtype {t.dtype} does not match the model's parameters ({self.layout.dtype})")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: contains NaN or Inf")
        if inputs.dim() == 0 or inputs.shape[0] == 0:
            raise ValueError(f"inputs: expected a non-empty batch [N, ...], got shape {tuple(inputs.shape)}")
        if self.residual_fn is None:
            if targets is None:
                raise ValueError("targets: required for loss='mse' or 'cross_entropy'")
            if targets.shape[0] != inputs.shape[0]:
                raise ValueError(
                    f"targets: batch size {targets.shape[0]} does not match inputs' batch size {inputs.shape[0]}"
                )

    # ---------------------------------------------------------------------------------- evaluation
    def _chunks(self, inputs: torch.Tensor, targets: torch.Tensor | None, size: int):
        for start in range(0, inputs.shape[0], size):
            y = targets[start : start + size] if targets is not None else None
            yield inputs[start : start + size], y

    def _loss_at(self, theta: torch.Tensor, batch, noise: NoiseReplay, scale: float) -> float:
        """f(θ) on the batch, with the iteration's noise; leaves θ written into the model."""
        self.layout.set_flat(theta)
        noise.replay()
        total = 0.0
        with torch.no_grad():
            for x, y in batch:
                z = self._outputs(x, y)
                yy = torch.zeros_like(z) if self.residual_fn is not None else y
                total += float(self.curvature.per_sample_loss(z, yy).double().sum())
        total = self._comm.sum_float(total, self.layout.device)  # every rank compares the same batch loss
        self._state["forward_passes"] += 1
        self._forward_passes += 1
        return total * scale if math.isfinite(total) else math.inf

    # ---------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> StepResult:  # type: ignore[override]
        """One LM iteration on this batch. Returns a :class:`StepResult`."""
        self._check_batch(inputs, targets)
        theta0 = self.layout.get_flat()
        noise = NoiseReplay(self.layout.device)
        d_before = self._state["d"].clone()
        try:
            return self._iterate(inputs, targets, theta0, noise)
        except BaseException:
            self.layout.set_flat(theta0)  # never leave parameters half-updated
            self._state["d"].copy_(d_before)
            raise
        finally:
            noise.finish()

    def _probe(self, inputs: torch.Tensor, targets: torch.Tensor | None, noise: NoiseReplay) -> tuple[int, int]:
        """(samples N, outputs per sample), checking the targets.

        The output shape comes from a one-sample forward pass, cached per input shape. In residual mode the
        samples are the rows of the residual callable's output (N = its leading size).
        """
        key = (tuple(inputs.shape), None if targets is None else tuple(targets.shape))
        if key not in self._output_shapes:
            noise.replay()
            if self.residual_fn is None:
                z1 = self._outputs(inputs[:1], targets[:1] if targets is not None else None)
                self._output_shapes[key] = (inputs.shape[0], tuple(z1.shape[1:]))
                engine = self._engine
                self._factorable[key] = isinstance(engine, FastPathJacobian) and engine.factorable(inputs[:1])
            else:
                z = self._outputs(inputs, targets)
                self._output_shapes[key] = (z.shape[0], tuple(z.shape[1:]))
        n_samples, sample_shape = self._output_shapes[key]
        self._batch_factorable = self._factorable.get(key, False)
        if self.residual_fn is None:
            assert targets is not None  # _check_batch refused a missing target for a model loss
            self.curvature.check_targets(torch.empty((n_samples,) + sample_shape, device="meta"), targets)
        return n_samples, int(torch.Size(sample_shape).numel())

    def _plan(self, n_samples: int, per_sample: int, rows_total: int) -> dict[str, Any]:
        """Solve form, dtypes and chunk size for this batch, checked against memory_budget before allocating.

        The n x n (primal) or m x (m + n) (dual) system is charged first; row chunks get what is left, so one
        step's peak is about the system plus one chunk, however many rows the batch has.
        """
        s = self.settings
        n = self.layout.numel
        budget = s["memory_budget"]
        acc_dtype = s["accumulate_dtype"] or self.layout.dtype
        acc_elt = torch.finfo(acc_dtype).bits // 8

        def solve_dtype(size: int) -> torch.dtype:
            return s["solve_dtype"] or (torch.float64 if size <= s["solve_float64_max"] else acc_dtype)

        def per_entry(size: int) -> int:
            # the accumulated matrix, its converted copy when the dtypes differ, and the factorisation workspace
            solve_elt = torch.finfo(solve_dtype(size)).bits // 8
            return 2 * solve_elt + (acc_elt if solve_elt != acc_elt else 0)

        primal_bytes = n * n * per_entry(n)
        factored = self._factored_dual(rows_total)
        if factored:
            # the factored dual: K̃, its two Gram buffers and its factor (plus a float64 copy and factor should
            # the float32 one fail), and the per-layer factors of the rows instead of the rows
            width = self._engine.factor_width
            dual_bytes = rows_total * rows_total * (4 * acc_elt + 16) + rows_total * width * 2 * acc_elt
        else:
            # dual: K, and the rows with their scaled copy
            dual_bytes = rows_total * rows_total * per_entry(rows_total) + rows_total * n * 2 * acc_elt
        form = s["solver"]
        if form == "auto":
            if rows_total < n and dual_bytes <= budget and not self._comm.active:
                form = "dual"  # (not with torch.distributed: the dual form needs every rank's rows)
            elif primal_bytes <= budget:
                form = "primal"
            else:
                form = "block_diagonal"
        blocks = None
        if form == "primal" and primal_bytes > budget:
            raise ValueError(
                f"problem too large for the dense solve: the {n} x {n} curvature needs {primal_bytes / 2**20:.1f} MiB "
                f"but memory_budget is {budget / 2**20:.1f} MiB. Options: raise memory_budget; solver='dual' "
                f"(this batch has {rows_total} residual rows for {n} parameters); solver='block_diagonal'."
            )
        if form == "dual" and dual_bytes > budget:
            raise ValueError(
                f"problem too large for the dual solve: {rows_total} rows x {n} parameters need "
                f"{dual_bytes / 2**20:.1f} MiB but memory_budget is {budget / 2**20:.1f} MiB. Options: raise "
                f"memory_budget, use smaller batches, solver='primal' ({primal_bytes / 2**20:.1f} MiB) or "
                "solver='block_diagonal'."
            )
        if form == "block_diagonal":
            blocks = self._blocks(budget, per_entry)
            largest = max(int(b.numel()) for b in blocks)
            system_bytes = sum(int(b.numel()) ** 2 for b in blocks) * per_entry(largest)
            dtype = solve_dtype(largest)
        else:
            system_bytes = primal_bytes if form == "primal" else dual_bytes
            dtype = solve_dtype(n if form == "primal" else rows_total)
        # Per sample while its rows are formed: the output Jacobian, the rows and a converted copy (for the
        # factored dual, the layer inputs and signals instead of the rows; for the Kronecker accumulation, the
        # rows and the pair products, plus each large weight's pair GEMM result).
        row_width = self._engine.factor_width if form == "dual" and factored else n
        factored_primal = form == "primal" and self._factored_primal()
        if factored_primal:
            for m in self._kronecker_layers():
                fixed, per_row = kronecker_workspace(m.out_features, m.in_features)
                system_bytes += fixed * acc_elt
                row_width += per_row
        bytes_per_sample = 3 * per_sample * row_width * acc_elt
        left = budget - system_bytes
        if self.residual_fn is not None:
            chunk = n_samples  # a residual callable sees the whole batch at once
        elif left < bytes_per_sample:
            raise ValueError(
                f"memory_budget {budget / 2**20:.1f} MiB leaves {max(left, 0) / 2**20:.2f} MiB after the {form} "
                "system, "
                f"less than the {bytes_per_sample / 2**20:.2f} MiB that the Jacobian rows of one sample need "
                f"({per_sample} outputs x {n} parameters); raise memory_budget"
            )
        else:
            chunk = int(min(n_samples, left // bytes_per_sample))
        if form == "dual" and self.settings["dual_method"] == "pcg" and not factored:
            raise self._not_factorable("dual_method='pcg'", "'cholesky'")
        return {"form": form, "dtype": dtype, "acc_dtype": acc_dtype, "chunk": chunk, "blocks": blocks,
                "factored": form == "dual" and factored, "factored_primal": factored_primal}

    def _blocks(self, budget: int, per_entry) -> list[torch.Tensor]:
        """The block partition for solver='block_diagonal', computed once (it depends on the model only)."""
        if self._block_cache is None:
            blocks = make_blocks(self.settings["blocks"], self.layout)
            self._block_cache = fit_to_budget(blocks, self.layout, budget, per_entry(max(b.numel() for b in blocks)))
        return self._block_cache

    def _build_system(self, batch, plan: dict[str, Any], noise: NoiseReplay, alpha: float, first: bool = True):
        """The curvature system of these chunks and α Σ ℓᵢ over them; ``first``: this pass covers the whole batch
        (it then marks where one forward pass leaves the random generator)."""
        n = self.layout.numel
        device = self.layout.device
        system: PrimalSystem | BlockDiagonalSystem | DualSystem
        if plan["form"] == "primal":
            system = PrimalSystem(n, alpha, plan["dtype"], device, accumulate_dtype=plan["acc_dtype"])
        elif plan["form"] == "block_diagonal":
            system = BlockDiagonalSystem(plan["blocks"], n, alpha, plan["dtype"], device, plan["acc_dtype"])
        elif plan["factored"]:
            system = FactoredDualSystem(n, alpha, plan["dtype"], device, accumulate_dtype=plan["acc_dtype"],
                                        tol=self.settings["dual_tol"], workspace=self._dual_workspace)
        else:
            system = DualSystem(n, alpha, plan["dtype"], device, accumulate_dtype=plan["acc_dtype"])
        noise.replay()
        total = 0.0
        for x, y in batch:
            if isinstance(system, FactoredDualSystem) or plan["factored_primal"]:
                rows, rho, losses = self._engine.factors(x, y, self.curvature)
                assert isinstance(system, (PrimalSystem, FactoredDualSystem))  # factored_primal: primal form only
                system.add_factors(rows, rho)
            else:
                rows, rho, losses = self._engine_rows(x, y)
                system.add_rows(rows, rho)
            total += float(losses.double().sum())
        system.reduce(self._comm)  # data-parallel: A, g and the loss summed over the ranks (marquardt.parallel)
        total = self._comm.sum_float(total, device)
        system.finalize()
        if first:
            noise.mark_first_evaluation_done()
        self._forward_passes += 1
        self._state["forward_passes"] += 1
        return system, (total * alpha if math.isfinite(total) else math.inf)

    def _rows_factorable(self) -> bool:
        """Whether this batch's rows can be kept as factors (the engine is re-checked: it falls back to
        torch.func for models the fast path turns out not to fit)."""
        return self._batch_factorable and isinstance(self._engine, FastPathJacobian)

    def _not_factorable(self, setting: str, alternative: str) -> ValueError:
        return ValueError(f"{setting} needs every trainable layer to be a Linear on [batch, features] inputs and "
                          f"the fast Jacobian engine (this model runs the {self._engine.name!r} engine); use "
                          f"'auto' or {alternative}")

    def _factored_dual(self, rows: int) -> bool:
        """Whether a dual system of this many rows would keep them factored and solve by PCG (dual_method)."""
        method = self.settings["dual_method"]
        if method == "cholesky" or not self._rows_factorable():
            return False
        shapes = [(m.out_features, m.in_features) for m in self._engine.modules]
        return method == "pcg" or factored_dual_pays(rows, self.layout.numel, shapes)

    def _kronecker_layers(self) -> list[nn.Linear]:
        """The layers whose diagonal block the Kronecker accumulation forms (a trainable weight where it pays)."""
        return [m for m in self._engine.modules
                if m.weight.requires_grad and kronecker_pays(m.out_features, m.in_features)]

    def _factored_primal(self) -> bool:
        """Whether the primal A is accumulated from factored rows (settings: primal_accumulation)."""
        method = self.settings["primal_accumulation"]
        if not self._rows_factorable():
            if method == "factored":
                raise self._not_factorable("primal_accumulation='factored'", "'rows'")
            return False
        if method == "factored":
            return True
        # The Kronecker products halve a large weight's flops but run them as GEMMs: on the CPU our AVX-512
        # SYRK of the explicit rows is faster at every size measured (1-w-w-1 MLPs, w = 16-64, 1,000-10,000
        # rows, one thread: 1.1-1.95x; BENCHMARKS.md §3), so 'auto' keeps the rows there.
        if self.layout.device.type == "cpu" and ops.cpu_syrk_kernel() == "avx512":
            return False
        return method == "auto" and bool(self._kronecker_layers())

    def _curvature_subset(self, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the m curvature samples, the others): every (n // m)-th sample, the offset rotating with the step.

        Evenly strided rather than the first m, so that an ordered full batch (a curve sampled on a grid) still
        gets curvature from its whole range; the rotation visits every sample over n // m steps.
        """
        stride = n // m
        offset = self._state["step"] % stride
        picked = torch.arange(offset, offset + stride * m, stride, device=self.layout.device)
        mask = torch.ones(n, dtype=torch.bool, device=self.layout.device)
        mask[picked] = False
        return picked, mask.nonzero().squeeze(1)

    def _gradient(self, batch, noise: NoiseReplay, alpha: float) -> tuple[torch.Tensor, float]:
        """The gradient g = α Σ ∇ℓᵢ and the loss α Σ ℓᵢ over these chunks (one backward pass per chunk).

        The chunks follow those of the curvature pass in the batch order, so the random generator is continued
        where that pass left it, not replayed."""
        g = torch.zeros(self.layout.numel, dtype=self.layout.dtype, device=self.layout.device)
        total = 0.0
        for x, y in batch:
            with torch.enable_grad():
                losses = self.curvature.per_sample_loss(self._outputs(x, y), y)
                grads = torch.autograd.grad(losses.sum(), self.layout.params, allow_unused=True)
            for i, grad in enumerate(grads):
                if grad is not None:
                    g[self.layout.slice_of(i)] += grad.reshape(-1)
            total += float(losses.detach().double().sum())
        self._comm.sum_(g)
        total = self._comm.sum_float(total, self.layout.device)
        noise.mark_first_evaluation_done()
        self._forward_passes += 1
        self._state["forward_passes"] += 1
        return g * alpha, (total * alpha if math.isfinite(total) else math.inf)

    def _engine_rows(self, x, y):
        if isinstance(self._engine, FullJacobian):
            # in residual mode the callable (inside _functional_outputs) gets y; the residuals are the outputs
            return self._engine.rows(x, y, self.curvature, residual_mode=self.residual_fn is not None)
        try:
            return self._engine.rows(x, y, self.curvature)
        except NotApplicable:  # e.g. a layer called twice in one forward pass
            self._engine = FunctorchJacobian(self.model, self.layout)
            return self._engine.rows(x, y, self.curvature)

    def _note_batch(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> None:
        """Records whether this step's batch differs from the previous one (mini-batch training).

        The fingerprint is the shapes and 64 evenly spaced entries of inputs and targets: a full batch passed
        again (full-batch training, curve fitting) matches it, a new batch almost surely does not (storage
        addresses are no use: the allocator hands a new batch the freed memory of the last one). The flag lives
        in the state, so a resumed run keeps the checkpoint's value until it has seen two batches.
        """

        def sample(t: torch.Tensor | None) -> tuple:
            if t is None or t.numel() == 0:
                return ()
            flat = t.detach().reshape(-1)
            index = torch.linspace(0, flat.numel() - 1, 64, device=flat.device).long()
            return (tuple(t.shape), *flat[index].double().tolist())

        fingerprint = sample(inputs) + sample(targets)
        if self._last_batch is not None:
            self._state["minibatch"] = fingerprint != self._last_batch
        self._last_batch = fingerprint

    def _iterate(self, inputs, targets, theta0, noise) -> StepResult:
        s = self.settings
        state = self._state
        self._note_batch(inputs, targets)
        self._forward_passes = 0
        n_local, per_sample = self._probe(inputs, targets, noise)
        if self._comm.active and not self._checked_ranks:
            self._comm.check_same_parameters([tuple(p.shape) for p in self.layout.params], self.layout.device)
            self._checked_ranks = True
        n_samples = int(round(self._comm.sum_float(float(n_local), self.layout.device)))  # over all ranks
        alpha = 1.0 / n_samples if s["loss_scale"] == "mean" else 1.0
        rows_per_sample = self.curvature.rows_per_sample(per_sample)
        # Subsampled curvature (ALGORITHM.md §9 item 6): A from m samples of the batch, g and every loss from
        # all of it.
        m_setting = curvature_samples_at(s["curvature_samples"], state["step"])
        if m_setting is None:
            m_local = n_local
        elif isinstance(m_setting, float):
            m_local = max(1, min(n_local, round(m_setting * n_local)))
        else:
            m_local = min(n_local, m_setting)
        # (no all-reduce on the default path: only a subsampling rank can make the step subsampled)
        subsampled = m_setting is not None and self._comm.sum_float(float(n_local - m_local), self.layout.device) > 0
        m_total = int(round(self._comm.sum_float(float(m_local), self.layout.device))) if subsampled else n_samples
        plan = self._plan(m_total, per_sample, rows_per_sample * m_total)
        chunk = min(plan["chunk"], inputs.shape[0]) if self.residual_fn is None else inputs.shape[0]
        if subsampled:
            # The curvature samples form the first chunks, so that replaying the noise gives them the same draw
            # in the curvature pass as in the gradient pass and in every trial evaluation.
            picked, rest = self._curvature_subset(n_local, m_local)
            curvature_batch = list(self._chunks(inputs[picked], targets[picked], chunk))
            rest_batch = list(self._chunks(inputs[rest], targets[rest], chunk))
            batch = curvature_batch + rest_batch
            alpha_curvature = 1.0 / m_total if s["loss_scale"] == "mean" else n_samples / m_total
            # One pass in the order of every trial evaluation: the curvature samples' rows, whose α𝒥ᵀρ is
            # their share of the gradient (Wρ = ∂ℓ/∂z), then plain backward passes over the other samples.
            system, c_curvature = self._build_system(curvature_batch, plan, noise, alpha_curvature, first=False)
            g_rest, c_rest = self._gradient(rest_batch, noise, alpha)
            share = alpha / alpha_curvature
            system.set_gradient(system.g.to(g_rest.dtype) * share + g_rest)
            c0 = c_curvature * share + c_rest
        else:
            batch = list(self._chunks(inputs, targets, chunk))
            system, c0 = self._build_system(batch, plan, noise, alpha)
        g = system.g
        grad_inf = float(g.abs().max())
        theta_norm = float(theta0.double().norm())
        result = StepResult(
            loss_before=c0, loss_after=c0, accepted=False, reason="rejected", lam=state["lam"], multiplier=0.0,
            attempts=0, forward_passes=0, jacobian_passes=1, solves=0, form=system.form,
            engine=self._engine.name, momentum_used=False, geodesic_used=False, grad_norm_inf=grad_inf,
            step_norm=0.0, theta_norm=theta_norm, curvature_samples=m_total if self.residual_fn is None else None,
        )
        if not math.isfinite(c0) or not bool(torch.isfinite(g).all()):
            result.notes.append("loss or gradient not finite at the current parameters; no step taken")
            return self._finish(result, theta0, accepted_step=None)
        if grad_inf == 0.0:
            result.reason = "zero_gradient"
            return self._finish(result, theta0, accepted_step=None)

        d_saved = state["d"].clone()
        lam, nu = state["lam"], state["nu"]
        d64 = update_damping(s["damping"], state["d"], system, s["d_floor"])
        d = d64.to(system.dtype)
        system.set_damping(d)
        lam_min = s["lam_min"]
        if state.get("minibatch", False) and s["lam_min_minibatch"] is not None:
            lam_min = max(lam_min, s["lam_min_minibatch"])
            lam = max(lam, lam_min)
        rule = LambdaRule(s["lambda_rule"], s["lambda_up"], s["lambda_down"], lam_min, s["lam_max"],
                          s["lam_skip_outside"])
        lmam = None
        if s["momentum"] is not None:
            lmam = LMAM(s["momentum"], s["delta_p_mode"], s["delta_p"], s["kappa"], s["xi"],
                        paper_code_factor2=s["paper_code_factor2"])
        s_prev = state["s_prev"]
        s_prev_c = s_prev.to(system.g.dtype) if s_prev is not None else None
        eta = s["step_multiplier"]
        accepted_step = None

        for attempt in range(s["max_attempts"]):
            result.attempts = attempt + 1
            # With geodesic acceleration the factor is kept: the correction solves a second right-hand side.
            delta_lm, ok = system.lm_step(lam, keep_factor=s["geodesic"])
            result.solves += 1
            if not ok:
                result.notes.append(f"factorisation failed at lambda={lam:.3g}")
                lam, nu = rule.rejected(lam, nu)
                continue
            delta = delta_lm
            if lmam is not None and s_prev_c is not None:
                i_ff = system.quadratic(s_prev_c) + lam * float((d * s_prev_c * s_prev_c).sum())
                mom = lmam.apply(delta_lm, g, s_prev_c, i_ff)
                delta = mom.step
                result.momentum_used = mom.used
            if s["geodesic"]:
                a, ok_a = self._geodesic_correction(system, delta, lam, batch, noise, theta0, alpha)
                if not (ok_a and geodesic.acceptable(delta, a, s["geodesic_alpha"])):
                    result.notes.append("geodesic correction too large: attempt rejected")
                    lam, nu = rule.rejected(lam, nu)
                    continue
                delta = delta + 0.5 * a
                result.geodesic_used = True
            step = (eta * delta).to(theta0.dtype)
            c1 = self._loss_at(theta0 + step, batch, noise, alpha)
            pred = float(-(g @ step.to(g.dtype)) - 0.5 * system.quadratic(step.to(g.dtype)))
            if c1 <= c0:
                accepted_step, result.reason, result.multiplier = step, "downhill", eta
            elif s["uphill"] and s_prev_c is not None:
                beta = acceptance.cosine(delta_lm, s_prev_c)
                if acceptance.accept_uphill(c0, c1, beta, s["uphill_b"], s["uphill_max_ratio"]):
                    accepted_step, result.reason, result.multiplier = step, "uphill", eta
            if accepted_step is not None:
                result.loss_after = c1
                result.predicted_reduction = pred
                gain = (c0 - c1) / pred if pred > 0 else None
                lam, nu = rule.accepted(lam, nu, gain)
                break
            lam, nu = rule.rejected(lam, nu)
            if s["line_search"] is not None:
                # The trial point is θ0 + η·δ: backtracking starts there (s = 1) and may double back to it,
                # so its known loss saves up to two forward passes over the batch.
                known = {eta: c1}

                def loss_along(m: float, direction: torch.Tensor = delta, known: dict = known) -> float:
                    if m not in known:
                        known[m] = self._loss_at(theta0 + (m * direction).to(theta0.dtype), batch, noise, alpha)
                    return known[m]

                s_star, c_star, _ = line_search.search(s["line_search"], loss_along, c0)
                if math.isfinite(c_star) and (c_star < c0 or s["line_search_apply_always"]):
                    accepted_step = (s_star * delta).to(theta0.dtype)
                    result.reason, result.multiplier, result.loss_after = "line_search", s_star, c_star
                    break

        if isinstance(system, FactoredDualSystem):
            result.cg_iterations = sum(system.cg_iterations)
        if accepted_step is None and s["revert_d_on_reject"]:
            state["d"].copy_(d_saved)
        state["lam"], state["nu"] = lam, nu
        result.lam = lam
        return self._finish(result, theta0, accepted_step)

    def _finish(self, result: StepResult, theta0: torch.Tensor, accepted_step: torch.Tensor | None) -> StepResult:
        state = self._state
        if accepted_step is not None and bool(torch.isfinite(accepted_step).all()):
            theta1 = theta0 + accepted_step
            if bool(torch.isfinite(theta1).all()):
                self.layout.set_flat(theta1)
                state["s_prev"] = accepted_step.clone()
                result.accepted = True
                result.step_norm = float(accepted_step.double().norm())
            else:
                accepted_step = None
        if not result.accepted:
            self.layout.set_flat(theta0)
            result.loss_after = result.loss_before
            if result.reason != "zero_gradient":
                result.reason = "rejected"
            result.multiplier = 0.0
        state["step"] += 1
        state["solves"] += result.solves
        result.forward_passes = self._forward_passes
        return result

    # ------------------------------------------------------------------------------------ geodesic
    def _geodesic_correction(self, system, v, lam, batch, noise, theta0, alpha):
        """a = −(A + λ diag d)⁻¹ α 𝒥ᵀ ρ_vv with ρ_vv,ᵢ = Wᵢᵀ z_vv,ᵢ (policy/geodesic.py)."""
        v_p = v.to(theta0.dtype)
        noise.replay()
        rho_vv_parts, rhs = [], torch.zeros_like(system.g)
        for x, y in batch:
            outputs = lambda t, xx=x, yy=y: self._functional_outputs(self.layout.as_dict(t), xx, yy)  # noqa: E731
            with torch.enable_grad():
                z_vv = geodesic.second_directional_derivative(outputs, theta0, v_p)
                theta_req = theta0.detach().requires_grad_(True)
                z = outputs(theta_req)
            L = self.curvature.hessian_factor(z.detach()) if self.residual_fn is None else None
            zf = z_vv.reshape(z_vv.shape[0], -1)
            rho_vv = zf if L is None else torch.einsum("scq,sc->sq", L, zf)  # Wᵀ z_vv
            if isinstance(system, DualSystem):
                rho_vv_parts.append(rho_vv.T.reshape(-1))
            else:
                cot = rho_vv if L is None else torch.einsum("scq,sq->sc", L, rho_vv)  # W Wᵀ z_vv
                (grad,) = torch.autograd.grad(z, theta_req, grad_outputs=cot.reshape(z.shape).to(z.dtype))
                rhs += alpha * grad.to(rhs.dtype)
        if isinstance(system, DualSystem):
            x_sol, ok = system.solve_rows(lam, torch.cat(rho_vv_parts).to(system.dtype))
            return -x_sol, ok
        x_sol, ok = system.solve(lam, rhs)
        return -x_sol, ok
