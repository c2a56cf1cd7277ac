r"""The objective: everything that evaluates the model on a batch, so that the optimizer never calls it.

For a batch it gives the loss f(θ) = α Σᵢ ℓᵢ (α = 1/N for the mean loss, 1 for the sum), the gradient, and the
generalized Jacobian rows 𝒥 and residuals ρ (A = α𝒥ᵀ𝒥, g = α𝒥ᵀρ) in chunks, folded into a solver's system.
It also validates batches, probes the output shape, replays the iteration's noise (curvature/noise.py), picks
the samples of a subsampled curvature, and forms the geodesic correction's second-order residuals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..parallel import Communicator
from ..solve.system import Problem, System
from ..types.layout import ParameterLayout
from ..types.rows import FactoredRows
from . import structure
from .batch import Batch, Chunks, SameBatch, fingerprint
from .jacobian import (
    Engine,
    FastPathJacobian,
    FullJacobian,
    FunctorchJacobian,
    GivenJacobian,
    NotApplicable,
    SmallJacobianModes,
    _rows_from_output_jacobian,
)
from .losses import Curvature
from .residual_function import ModelResidualFn, ResidualFunction
from .second_order import SecondOrderResidual
from .separable import mixes_samples

# fn(outputs, targets) -> residuals; targets are what step() was given, None when it was given none
ResidualFn = Callable[[torch.Tensor, Any], torch.Tensor]


def _checked_output(z: Any) -> torch.Tensor:
    """The model's output, refused unless it is one real floating-point tensor."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(
            f"model output: expected one tensor, got {type(z).__name__}; for a model that returns several "
            "(a tuple, a dict), wrap it in a module that returns the one to fit, or pass a residual callable"
        )
    if not z.is_floating_point():
        raise TypeError(f"model output: expected a real floating-point tensor, got dtype {z.dtype}")
    return z


def _check_residuals(r: Any, z: torch.Tensor, targets: Any) -> None:
    """A residual callable's output: a tensor of residuals, shaped like the targets or like the model output.

    A scalar is a loss, not residuals (LM would minimise its square), and an element count that matches
    neither the targets nor the model output is almost always broadcasting ([N, 1] − [N] gives [N, N])."""
    if not isinstance(r, torch.Tensor):
        raise TypeError(f"residual callable: expected a tensor of residuals, got {type(r).__name__}")
    if r.dim() == 0:
        raise ValueError(
            "residual callable: it returned a scalar; LM needs the residuals themselves (one per sample or output), "
            "not a loss: for a loss module such as nn.MSELoss use loss='mse', for nn.CrossEntropyLoss "
            "loss='cross_entropy'"
        )
    if not r.is_floating_point():
        raise TypeError(f"residual callable: expected floating-point residuals, got dtype {r.dtype}")
    allowed = {z.numel()} | ({targets.numel()} if isinstance(targets, torch.Tensor) else set())
    if r.numel() not in allowed:
        target_shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else None
        raise ValueError(
            f"residual callable: it returned {r.numel()} residuals of shape {tuple(r.shape)}, but the model output "
            f"has shape {tuple(z.shape)} and the targets {target_shape}; the residuals must have as many entries "
            "as the targets or the model output (is a [N, 1] output broadcast against [N] targets? reshape one "
            "of them)"
        )


def _residual_rows(r: torch.Tensor) -> torch.Tensor:
    """A residual callable's output as [samples, residuals per sample] (a scalar is refused with names by
    :func:`_check_residuals` when a batch shape is first seen)."""
    return r.reshape(r.shape[0], -1)


def _tensors(batch: Any) -> list[torch.Tensor]:
    """The tensors among a residual function's batch arguments."""
    return [t for t in batch if isinstance(t, torch.Tensor)]


class Objective:
    """The model, its loss or residual callable, the curvature mode and the Jacobian engine.

    Three kinds of objective: a model loss (``'mse'``, ``'cross_entropy'``: the batch is (inputs, targets)), a
    residual callable ``fn(outputs, targets)``, and a residual function of the model ``fn(model, *batch)``
    (held as a :class:`ResidualFunction` module and the batch is the tuple of its arguments, never
    split into chunks: its residuals need not come one per sample)."""

    def __init__(self, model: nn.Module, layout: ParameterLayout, curvature: Curvature,
                 residual_fn: ResidualFn | None, engine: str, comm: Communicator,
                 residuals: ModelResidualFn | None = None) -> None:
        self.model = ResidualFunction(model, residuals) if residuals is not None else model
        self.layout = layout
        self.curvature = curvature
        self.residual_fn = residual_fn
        self.residual_function = self.model if isinstance(self.model, ResidualFunction) else None
        #: residuals instead of a model loss: targets (if any) only feed the residuals, the curvature is GN
        self.residual_mode = residual_fn is not None or self.residual_function is not None
        self.comm = comm
        self.engine_choice = engine
        #: a small model's Jacobian mode, timed once for every engine that differentiates its outputs
        self._small_jacobian_modes = SmallJacobianModes()
        self.engine = self._make_engine(engine)
        self.whole_batch = self.residual_mode  # chunks of the whole batch (residuals, train-mode BatchNorm)
        self._batch_rows = 0  # M of the batch in use, for a residual function (its batch has no leading size)
        self.row_block = 0  # residual rows formed at once (a residual function's, under the memory budget)
        self.forward_passes = 0  # counted over the objective's life; the optimizer reads the difference
        self._shapes: dict[tuple, tuple[int, tuple[int, ...], bool]] = {}  # probe cache per batch shape
        self._group_shapes: dict[tuple, Any] = {}  # a residual function's group shapes per batch shape
        self._mixing: str | None = None  # why the model was found not to keep its samples apart (separable.py)
        self._last_fingerprint: tuple | None = None
        self._pending_fingerprint: tuple | None = None
        self._last_batch = SameBatch()  # the batch checked last, to skip rescanning it when passed again
        self._checked_against: tuple | None = None  # the model's (device, dtype) when it was checked
        self._checked_ranks = False
        self._least_squares_engine: FullJacobian | None = None  # r and J of the whole batch (fit's solution)
        #: what must agree across torch.distributed ranks besides the parameters (the optimizer's settings)
        self.setup: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ engines
    def _make_engine(self, kind: str) -> Engine:
        if self.residual_mode or kind == "full":
            rows = (lambda x: self._batch_rows) if self.residual_function is not None else None
            function = self.residual_function
            given = getattr(function.fn, "jacobian", None) if function is not None else None
            if function is not None and given is not None and kind == "auto":  # (it knows its Jacobian)
                model = function.model
                return GivenJacobian(lambda batch: given(model, self.layout.params, *batch),
                                     self._functional_outputs, self.layout, module_outputs=self.outputs,
                                     model=self.model, rows_of=rows, modes=self._small_jacobian_modes)
            return FullJacobian(self._functional_outputs, self.layout, residual_mode=self.residual_mode,
                                module_outputs=self.outputs, model=self.model, rows_of=rows,
                                modes=self._small_jacobian_modes)
        if kind in ("auto", "fast"):
            try:
                return FastPathJacobian(self.model, self.layout)
            except NotApplicable as exc:
                if kind == "fast":
                    raise ValueError(f"engine='fast' cannot handle this model: {exc}") from exc
        return FunctorchJacobian(self.model, self.layout)

    def _functional_outputs(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: Any) -> torch.Tensor:
        if self.residual_function is not None:  # (its parameters are those of the model it holds)
            return functional_call(self.model, {"model." + name: t for name, t in params.items()}, tuple(x))
        if self.whole_batch and not self.residual_mode:  # train-mode BatchNorm: it updates its running statistics,
            # which a torch.func transform may not mutate; copies made inside the transform take the update
            params = {**params, **{name: b.clone() for name, b in self.model.named_buffers()}}
        return self._as_residuals(structure.functional(self.model, params, x), y)

    def _as_residuals(self, z: torch.Tensor, y: Any) -> torch.Tensor:
        if self.residual_fn is None:
            return z
        return _residual_rows(self.residual_fn(z, y))

    def outputs(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        """The model's outputs on x (the residuals, for a residual callable or function)."""
        if self.residual_function is not None:
            return self.model(*x)
        return self._as_residuals(structure.call(self.model, x), y)

    # --------------------------------------------------------------------------------- validation
    def check_batch(self, inputs: Any, targets: Any) -> None:
        """Refuses a batch that the model cannot take, before anything changes. The finiteness scan is skipped
        for the batch checked last when it comes again unchanged (same tensors, same version counters)."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if len(trainable) != len(self.layout.params) or any(p is not q for p, q in zip(trainable, self.layout.params)):
            raise ValueError(
                f"model: its trainable parameters changed since the optimizer was built ({len(self.layout.params)} "
                f"then, {len(trainable)} now, or other tensors: a layer replaced, frozen or unfrozen); the optimizer "
                "would update the old ones. Build a new optimizer for the changed model"
            )
        same = self._last_batch.matches(inputs, targets)
        if same and self._checked_against == (self.layout.device, self.layout.dtype):
            return  # checked already, and neither the batch nor the model's dtype or device changed since
        if self.residual_function is not None:
            for i, t in enumerate(inputs):
                if isinstance(t, torch.Tensor):
                    self._check_tensor(f"batch[{i}]", t, scan=not same)
        else:
            self._check_model_batch(inputs, targets, same)
        self._last_batch.remember(inputs, targets)
        self._checked_against = (self.layout.device, self.layout.dtype)

    def _check_tensor(self, name: str, t: torch.Tensor, scan: bool) -> None:
        """One tensor of a batch: real, on the parameters' device, floating point only in their dtype, and
        (when ``scan``) finite."""
        if t.is_complex():
            raise TypeError(f"{name}: complex tensors are not supported (dtype {t.dtype}); LM here works on "
                            "real residuals (split real and imaginary parts into two outputs)")
        if t.device != self.layout.device:
            raise ValueError(f"{name}: on {t.device} but the model's parameters are on {self.layout.device}")
        if t.is_floating_point() and t.dtype != self.layout.dtype:
            raise ValueError(f"{name}: dtype {t.dtype} does not match the model's parameters ({self.layout.dtype})")
        if scan and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: contains NaN or Inf")

    def _check_model_batch(self, inputs: Any, targets: Any, same: bool) -> None:
        """The model's inputs (a tensor, or a tuple, list or dict of tensors: positional or keyword arguments)
        and the targets (a tensor; a residual callable's may be structured too), every tensor holding the same
        number N ≥ 1 of samples along its first dimension."""
        if not isinstance(inputs, torch.Tensor) and not structure.is_structured(inputs):
            raise TypeError(f"inputs: expected a torch.Tensor [N, ...] (or a tuple, list or dict of them), got "
                            f"{type(inputs).__name__}")
        structured_targets = self.residual_fn is not None and structure.is_structured(targets)
        if targets is not None and not isinstance(targets, torch.Tensor) and not structured_targets:
            raise TypeError(f"targets: expected a torch.Tensor, got {type(targets).__name__}")
        named = [("inputs" + name, t) for name, t in self._tensors_of(inputs, "inputs")]
        named += [("targets" + name, t) for name, t in self._tensors_of(targets, "targets")]
        for name, t in named:
            self._check_tensor(name, t, scan=not same)
        first_name, first = named[0]
        if first.dim() == 0 or first.shape[0] == 0:
            raise ValueError(f"{first_name}: expected a non-empty batch [N, ...], got shape {tuple(first.shape)}")
        if self.residual_fn is None and targets is None:
            raise ValueError("targets: required for loss='mse' or 'cross_entropy'")
        for name, t in named[1:]:
            if t.dim() == 0 or t.shape[0] != first.shape[0]:
                what = "targets" if name.startswith("targets") else name
                raise ValueError(f"{what}: batch size {t.shape[0] if t.dim() else 0} does not match inputs' batch "
                                 f"size {first.shape[0]}")

    @staticmethod
    def _tensors_of(x: Any, name: str) -> list[tuple[str, torch.Tensor]]:
        """The tensors of a structured batch entry (named by position or key), refusing anything else in it."""
        if x is None or isinstance(x, torch.Tensor):
            return [] if x is None else [("", x)]
        entries = list(enumerate(x)) if isinstance(x, (tuple, list)) else list(x.items())
        if not entries:
            raise ValueError(f"{name}: expected at least one tensor, got an empty {type(x).__name__}")
        for key, value in entries:
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name}[{key!r}]: expected a torch.Tensor, got {type(value).__name__}")
        return [(f"[{key!r}]", value) for key, value in entries]

    def batch_changed(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> bool | None:
        """Whether this batch differs from the previous one (None for the first): mini-batch training.

        The fingerprint is the shapes and 64 evenly spaced entries of inputs and targets: a full batch passed
        again (full-batch training, curve fitting) matches it, a new batch almost surely does not (storage
        addresses are no use: the allocator hands a new batch the freed memory of the last one). The same
        tensors passed again unchanged are the same batch without a look."""
        if self._last_fingerprint is not None and self._last_batch.matches_previous_step(inputs, targets):
            self._pending_fingerprint = self._last_fingerprint
            return False
        new = fingerprint(inputs) + fingerprint(targets)
        self._pending_fingerprint = new
        return None if self._last_fingerprint is None else new != self._last_fingerprint

    def commit_batch(self) -> None:
        """The step on the batch of the last :meth:`batch_changed` succeeded: it becomes the previous batch (a
        refused step leaves no trace in mini-batch detection)."""
        self._last_fingerprint = self._pending_fingerprint
        self._last_batch.commit()

    # ------------------------------------------------------------------------------------ the batch
    def _samples_coupled(self) -> bool:
        """Whether the model mixes the samples of a batch (BatchNorm in training mode): then only the 'full'
        engine, on the whole batch at once, gives its rows; anything else is refused before a forward pass."""
        training = [name for name, m in self.model.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if not training:
            return False
        if self.engine.name != "full":
            raise ValueError(
                f"model: {training[0]!r} is a BatchNorm in training mode, which mixes the samples of a batch; the "
                "per-sample Jacobian engines cannot follow that. Call model.eval() for the LM steps (its running "
                "statistics are then used), or pass engine='full', which differentiates the whole batch at once"
            )
        return True

    def _check_separable(self, inputs: Any, z1: torch.Tensor, noise: Any) -> bool:
        """Whether the model was found to mix its samples (separable.py); engine='auto' then differentiates the
        whole batch at once, a per-sample engine asked for by name is refused."""
        reason = mixes_samples(self.model, inputs, z1)
        noise.replay()
        if reason is None:
            return False
        if self.engine_choice != "auto":
            raise ValueError(f"model: {reason}, so engine={self.engine_choice!r}, which differentiates one sample at "
                             "a time, would give the Jacobian of another function; pass engine='full' or 'auto'")
        self._mixing = reason
        self.engine = self._whole_batch_engine()
        return True

    def _whole_batch_engine(self) -> FullJacobian:
        """The engine that differentiates the model's outputs on the whole batch at once."""
        return FullJacobian(self._functional_outputs, self.layout, model=self.model)

    def _settle_engine(self, x1: torch.Tensor, y1: Any, noise: Any) -> None:
        """Tries the engine on one sample before the step uses it: the fast path gives way to torch.func for
        models it cannot follow (a layer run twice), and with engine='auto' torch.func gives way to the 'full'
        engine for models vmap cannot batch (a GRU, for example)."""
        while True:
            noise.replay()
            try:
                with torch.enable_grad():
                    self.engine.rows(x1, y1, self.curvature)
                return
            except NotApplicable:
                self.engine = FunctorchJacobian(self.model, self.layout)
            except RuntimeError:
                if self.engine_choice != "auto" or self.engine.name != "functorch":
                    raise
                self.engine = self._whole_batch_engine()

    def _probe(self, inputs: Any, targets: torch.Tensor | None, noise: Any) -> tuple[int, tuple, bool]:
        """(samples N, the shape of one sample's outputs, whether the rows can be factored), checking the
        targets. One forward pass on one sample, cached per input shape; in residual mode the samples are the
        rows of the residual callable's output (N = its leading size)."""
        if self.residual_function is not None:
            return self._probe_residual_function(inputs, noise)
        key = (structure.shapes(inputs), structure.shapes(targets))
        coupled = self._samples_coupled() or self._mixing is not None
        if key not in self._shapes:
            noise.replay()
            n = structure.samples(inputs)
            if self.residual_fn is None and not coupled:
                first = structure.take(inputs, slice(0, 1))
                z1 = _checked_output(structure.call(self.model, first))
                coupled = self._check_separable(inputs, z1, noise)
            if self.residual_fn is None and not coupled:
                assert targets is not None  # check_batch refused a missing target for a model loss
                self.curvature.check_targets(torch.empty((n,) + z1.shape[1:], device="meta"), targets)
                sample_targets = self.curvature.batch_targets(targets[:1], int(z1[0].numel()))[0]
                self._settle_engine(first, sample_targets, noise)
                self._shapes[key] = (n, tuple(z1.shape[1:]), self.engine.factorable(first))
            elif self.residual_fn is None:  # the samples are coupled (train-mode BatchNorm): one pass on all
                z = _checked_output(structure.call(self.model, inputs))
                self._shapes[key] = (n, tuple(z.shape[1:]), False)
            else:
                z = _checked_output(structure.call(self.model, inputs))
                r = self.residual_fn(z, targets)
                _check_residuals(r, z, targets)
                r = _residual_rows(r)
                self._shapes[key] = (r.shape[0], tuple(r.shape[1:]), False)
        n_samples, sample_shape, factorable = self._shapes[key]
        self.whole_batch = self.residual_fn is not None or coupled
        if self.residual_fn is None:
            assert targets is not None  # check_batch refused a missing target for a model loss
            self.curvature.check_targets(torch.empty((n_samples,) + sample_shape, device="meta"), targets)
        return n_samples, sample_shape, factorable

    def _probe_residual_function(self, batch: tuple, noise: Any) -> tuple[int, tuple, bool]:
        """(M residuals, (1,), False): one evaluation of the function per new shape of its arguments, which
        records its groups' shapes; later batches of those shapes must give the same ones."""
        assert self.residual_function is not None
        key = tuple(tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in batch)
        if key not in self._shapes:
            noise.replay()
            count = self.residual_function.probe(*batch)
            self._shapes[key] = (count, (1,), False)
            self._group_shapes[key] = self.residual_function.expected_shapes
        self.residual_function.expected_shapes = self._group_shapes[key]
        self._batch_rows = self._shapes[key][0]
        return self._shapes[key]

    def prepare(self, inputs: Any, targets: torch.Tensor | None, noise: Any,
                curvature_samples: int | float | None, loss_scale: str, weights: Any = None) -> Batch:
        """Sizes over all ranks, α, and the subsampled curvature's sample count for this batch."""
        n_local, sample_shape, factorable = self._probe(inputs, targets, noise)
        weights = self._checked_weights(weights, n_local)
        per_sample = int(torch.Size(sample_shape).numel())
        if self.comm.active and not self._checked_ranks:
            self.comm.check_same_setup({"parameters": [tuple(p.shape) for p in self.layout.params],
                                        "dtype": str(self.layout.dtype), **self.setup})
            self._checked_ranks = True
        n_samples = int(round(self.comm.sum_float(float(n_local), self.layout.device)))
        normaliser: float = n_samples
        if not self.residual_mode:  # a loss module's class weights, ignored class, label smoothing
            targets, module_weights, module_normaliser = self.curvature.batch_targets(targets, per_sample)
            if module_weights is not None:
                targets = targets.to(self.layout.dtype)
                module_weights = module_weights.to(self.layout.dtype)
                weights = module_weights if weights is None else weights * module_weights
            if module_normaliser is not None:
                normaliser = self.comm.sum_float(module_normaliser, self.layout.device)
        alpha = self.curvature.scale(per_sample) * (1.0 / normaliser if loss_scale == "mean" else 1.0)
        if curvature_samples is None:
            m_local = n_local
        elif isinstance(curvature_samples, float):
            m_local = max(1, min(n_local, round(curvature_samples * n_local)))
        else:
            m_local = min(n_local, curvature_samples)
        # (no all-reduce on the default path: only a subsampling rank can make the step subsampled)
        subsampled = curvature_samples is not None and self.comm.sum_float(float(n_local - m_local),
                                                                           self.layout.device) > 0
        m_total = int(round(self.comm.sum_float(float(m_local), self.layout.device))) if subsampled else n_samples
        factors: dict[str, Any] = {}
        # (the engine is asked again: it falls back to torch.func for models the fast path turns out not to fit)
        if factorable and self.engine.may_factor:
            width, shapes, trainable = self.engine.factor_layout()
            factors = {"factor_width": width, "linear_shapes": shapes, "trainable_weights": trainable}
        problem = Problem(
            parameters=self.layout.numel, rows=self.curvature.rows_per_sample(per_sample) * m_total, samples=m_total,
            outputs_per_sample=per_sample, dtype=self.layout.dtype, device=self.layout.device,
            distributed=self.comm.active, whole_batch_chunks=self.whole_batch, **factors,
        )
        return Batch(inputs, targets, n_samples, n_local, per_sample, alpha, loss_scale == "mean", m_total, m_local,
                     subsampled, problem, weights)

    def _checked_weights(self, weights: Any, samples: int) -> torch.Tensor | None:
        """Per-sample weights as a tensor of the parameters' dtype, refused by name unless they are [samples]
        finite numbers ≥ 0 on the parameters' device (the samples of a residual callable are the rows of its
        output; of a residual function, its residuals)."""
        if weights is None:
            return None
        if not isinstance(weights, torch.Tensor):
            raise TypeError(f"weight: expected a torch.Tensor of per-sample weights, got {type(weights).__name__}")
        if weights.shape != (samples,):
            what = "residuals" if self.residual_function is not None else "samples"
            raise ValueError(f"weight: expected shape ({samples},), one weight per {what[:-1]} of the batch, got "
                             f"{tuple(weights.shape)}")
        if weights.is_complex() or weights.dtype == torch.bool:
            raise TypeError(f"weight: expected real numbers, got dtype {weights.dtype}")
        if weights.device != self.layout.device:
            raise ValueError(f"weight: on {weights.device} but the model's parameters are on {self.layout.device}")
        weights = weights.to(self.layout.dtype)
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError("weight: expected finite weights >= 0")
        return weights

    def _chunks(self, inputs: Any, targets: torch.Tensor | None, size: int,
                weights: torch.Tensor | None = None) -> Iterator[tuple]:
        if self.whole_batch:  # residuals, or samples coupled by train-mode BatchNorm: one chunk
            yield inputs, targets, weights
            return
        for start in range(0, structure.samples(inputs), size):
            part = slice(start, start + size)
            yield (structure.take(inputs, part), structure.take(targets, part),
                   weights[part] if weights is not None else None)

    def curvature_subset(self, n: int, m: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the m curvature samples, the others): every (n // m)-th sample, the offset rotating with the step.

        Evenly strided rather than the first m, so that an ordered full batch (a curve sampled on a grid) still
        gets curvature from its whole range; the rotation visits every sample over n // m steps.
        """
        stride = n // m
        offset = step % stride
        picked = torch.arange(offset, offset + stride * m, stride, device=self.layout.device)
        mask = torch.ones(n, dtype=torch.bool, device=self.layout.device)
        mask[picked] = False
        return picked, mask.nonzero().squeeze(1)

    # ------------------------------------------------------------------------------- evaluations
    def build_system(self, batch: Batch, plan: Any, noise: Any, step: int) -> tuple[System, float]:
        """The system of this batch (``plan.build(α)``) filled with its rows, and the loss C₀.

        With subsampled curvature (docs/algorithm.md, "Subsampled curvature and noise") A comes from m samples of
        the batch and g and the loss from all of it: the curvature samples' rows, whose α𝒥ᵀρ is their share of the
        gradient (Wρ = ∂ℓ/∂z), then plain backward passes over the other samples. The curvature samples form the
        first chunks, so that replaying the noise gives them the same draw in every evaluation of the step."""
        inputs, targets, weights = batch.inputs, batch.targets, batch.weights
        chunk = 0 if self.whole_batch else min(plan.chunk, structure.samples(inputs))  # (0: whole, see _chunks)
        self.row_block = plan.chunk  # (a residual function's rows come in blocks of this many)
        if not batch.subsampled:
            batch.chunks = list(self._chunks(inputs, targets, chunk, weights))
            return self._accumulate(plan.build(batch.alpha), batch.chunks, noise, first=True)
        assert targets is not None  # subsampling needs a model loss (checked at construction)
        picked, rest = self.curvature_subset(batch.local_samples, batch.local_curvature_samples, step)
        curvature_chunks = list(self._chunks(structure.take(inputs, picked), targets[picked], chunk,
                                             weights[picked] if weights is not None else None))
        rest_chunks = list(self._chunks(structure.take(inputs, rest), targets[rest], chunk,
                                        weights[rest] if weights is not None else None))
        batch.chunks = curvature_chunks + rest_chunks
        alpha_curvature = (1.0 if batch.mean_loss else batch.samples) / batch.curvature_samples
        system, c_curvature = self._accumulate(plan.build(alpha_curvature), curvature_chunks, noise, first=False)
        g_rest, c_rest = self.gradient(rest_chunks, noise, batch.alpha)
        share = batch.alpha / alpha_curvature
        system.set_gradient(system.g.to(g_rest.dtype) * share + g_rest)
        return system, c_curvature * share + c_rest

    def _accumulate(self, system: System, chunks: Chunks, noise: Any, first: bool) -> tuple[System, float]:
        """Folds the rows of these chunks into the system; returns it and α Σ ℓᵢ over them. ``first``: the pass
        covers the whole batch (it then marks where one forward pass leaves the random generator)."""
        noise.replay()
        total = 0.0
        rows: torch.Tensor | FactoredRows
        for x, y, w in chunks:
            for rows, rho, losses, part_w in self._rows_of_chunk(system, x, y, w):
                if part_w is not None:  # sample i's rows and residuals times √wᵢ: A = α Σ wᵢ 𝒥ᵢᵀ𝒥ᵢ, g = α Σ wᵢ 𝒥ᵢᵀρᵢ
                    per_row = part_w.sqrt().repeat(rho.numel() // part_w.numel())  # (rows k-major: row k·S + s)
                    rows, rho, losses = rows.scaled(per_row) if isinstance(rows, FactoredRows) else \
                        rows * per_row.to(rows.dtype).unsqueeze(1), rho * per_row.to(rho.dtype), losses * part_w
                system.add(rows, rho)
                total += float(losses.double().sum())
        system.reduce(self.comm)  # data-parallel: A, g and the loss summed over the ranks (marquardt.parallel)
        total = self.comm.sum_float(total, self.layout.device)
        system.finalize()
        if first:
            noise.mark_first_evaluation_done()
        self.forward_passes += 1
        return system, (total * system.alpha if math.isfinite(total) else math.inf)

    def _rows_of_chunk(self, system: System, x: Any, y: Any, w: Any) -> Iterator[tuple[Any, Any, Any, Any]]:
        """(rows, ρ, losses, weights) of a chunk: in one piece, or, for a residual function whose Jacobian does
        not fit the memory budget (``row_block`` residuals of it do), in blocks of rows of one forward pass."""
        if system.takes_factors:
            yield (*self.engine.factors(x, y, self.curvature), w)
        elif self.residual_function is not None and 0 < self.row_block < self._batch_rows:
            assert isinstance(self.engine, FullJacobian)
            for start, J, z in self.engine.row_blocks(x, self.row_block):
                part = slice(start, start + z.shape[0])
                yield (*_rows_from_output_jacobian(self.curvature, z.unsqueeze(1), None, J.unsqueeze(1)),
                       w[part] if w is not None else None)
        else:
            yield (*self._rows(x, y), w)

    def _rows(self, x: torch.Tensor, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            return self.engine.rows(x, y, self.curvature)
        except NotApplicable:  # e.g. a layer called twice in one forward pass: torch.func from now on
            self.engine = FunctorchJacobian(self.model, self.layout)
            return self.engine.rows(x, y, self.curvature)

    def gradient(self, chunks: Chunks, noise: Any, alpha: float) -> tuple[torch.Tensor, float]:
        """The gradient g = α Σ ∇ℓᵢ and the loss α Σ ℓᵢ over these chunks (one backward pass per chunk).

        The chunks follow those of the curvature pass in the batch order, so the random generator is continued
        where that pass left it, not replayed."""
        g = torch.zeros(self.layout.numel, dtype=self.layout.dtype, device=self.layout.device)
        total = 0.0
        for x, y, w in chunks:
            with torch.enable_grad():
                losses = self.curvature.per_sample_loss(self.outputs(x, y), None if self.residual_mode else y)
                losses = losses * w if w is not None else losses
                grads = torch.autograd.grad(losses.sum(), self.layout.params, allow_unused=True)
            for i, grad in enumerate(grads):
                if grad is not None:
                    g[self.layout.slice_of(i)] += grad.reshape(-1)
            total += float(losses.detach().double().sum())
        self.comm.sum_(g)
        total = self.comm.sum_float(total, self.layout.device)
        noise.mark_first_evaluation_done()
        self.forward_passes += 1
        return g * alpha, (total * alpha if math.isfinite(total) else math.inf)

    def loss_at(self, theta: torch.Tensor, batch: Batch, noise: Any) -> float:
        """f(θ) on the batch, with the iteration's noise; leaves θ written into the model."""
        assert batch.chunks is not None
        self.layout.set_flat(theta)
        noise.replay()
        total = 0.0
        for x, y, w in batch.chunks:  # (no graph is built: the optimizer's step runs under torch.no_grad)
            z = self.outputs(x, y)
            # (a residual callable's outputs are residuals: no targets to subtract; gn reads None so)
            losses = self.curvature.per_sample_loss(z, None if self.residual_mode else y)
            total += float((losses * w if w is not None else losses).double().sum())
        total = self.comm.sum_float(total, self.layout.device)  # every rank compares the same batch loss
        self.forward_passes += 1
        return total * batch.alpha if math.isfinite(total) else math.inf

    def least_squares(self, inputs: Any, targets: Any, noise: Any,
                      weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(r [M], J [M, n]) at the current θ: the residuals of a least-squares objective (loss 'mse', a residual
        callable or function) in the order of the batch's entries, and their Jacobian, from the whole batch at
        once with the iteration's noise; with sample weights, √wᵢ rᵢ and √wᵢ Jᵢ."""
        if not self.curvature.least_squares:
            raise ValueError(f"residuals and their Jacobian: only a least-squares objective has them (loss 'mse', "
                             f"a residual callable or function), not this one (curvature {self.curvature.name!r})")
        if self._least_squares_engine is None:  # (built once; a small model's Jacobian mode is the step engine's)
            # (the whole batch's rows: a residual function's batch has no leading size to count them by)
            self._least_squares_engine = FullJacobian(
                self._functional_outputs, self.layout, module_outputs=self.outputs, model=self.model,
                rows_of=(lambda x: self._batch_rows) if self.residual_function is not None else None,
                modes=self._small_jacobian_modes)
        noise.replay()
        J, z = self._least_squares_engine.output_jacobian(inputs, targets)
        r = self.curvature.residuals(z, None if self.residual_mode else targets)  # [S, c]
        J = J.reshape(*r.shape, self.layout.numel)
        row_scale = self.curvature.jacobian_scale(z, None if self.residual_mode else targets)
        if row_scale is not None:  # a robust loss: the corrected Jacobian, whose JᵀJ is the curvature
            J = J * row_scale.reshape(*r.shape, 1)
        if weights is not None:
            root_w = weights.sqrt().unsqueeze(1)  # (weights are in the parameters' dtype, as r)
            r, J = r * root_w, J * root_w.unsqueeze(2)
        return r.reshape(-1), J.reshape(r.numel(), self.layout.numel)

    def second_order_residual(self, v: torch.Tensor, theta: torch.Tensor, batch: Batch, noise: Any,
                              dtype: torch.dtype) -> SecondOrderResidual:
        """ρ_vv = Wᵀ z_vv of the direction v at θ (policy/geodesic.py), computed when asked for."""
        return SecondOrderResidual(self, v.to(theta.dtype), theta, batch, noise, dtype)
