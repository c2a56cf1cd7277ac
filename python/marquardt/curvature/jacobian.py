"""Jacobian engines: chunks of generalized Jacobian rows 𝒥 = Wᵀ J_z for any ``nn.Module``.

Three engines behind one interface (:class:`Engine`), all returning the same rows (tests/curvature checks them
against each other and against
``torch.func.jacrev``):

* :class:`FastPathJacobian` - for models whose trainable parameters all live in ``Linear``/``Conv1d``/``Conv2d``
  layers (any parameter-free modules in between: activations, pooling, flatten, RReLU, dropout). One forward
  pass with hooks records each layer's input aᵢ; then one backward pass per column k of W gives each layer's
  backpropagated signal δᵢ and the per-sample rows are δᵢ ⊗ aᵢ (correlated over positions for convolutions), as
  per-sample-gradient libraries do. It needs no ``vmap``, so it works with train-mode RReLU, whose noise the
  backward pass reuses from the forward pass.
* :class:`FunctorchJacobian` - any per-sample-separable model: ``vmap(jacrev(f_single))`` over the samples.
* :class:`FullJacobian` - anything: the Jacobian of the whole chunk's output, by ``jacfwd`` when the
  parameters are fewer than the outputs, else ``jacrev`` (used for residual callables and for models whose
  samples interact, e.g. train-mode BatchNorm).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import jacfwd, jacrev, vjp, vmap

from ..types.layout import ParameterLayout
from ..types.rows import FactoredRows, LinearFactors
from . import structure
from .losses import Curvature

OutputFn = Callable[[dict[str, torch.Tensor], torch.Tensor, Any], torch.Tensor]


class NotApplicable(Exception):
    """The fast path cannot handle this model (the caller falls back to torch.func)."""


class Engine:
    """What the objective asks of a Jacobian engine: rows [q·S, n], ρ [q·S] and the per-sample losses [S] of a
    chunk, and, where the engine can keep them as per-layer factors, those (:meth:`factors`)."""

    name = "base"

    def rows(self, x: torch.Tensor, y: Any, curvature: Curvature) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def factorable(self, x: torch.Tensor) -> bool:
        """Whether :meth:`factors` applies to inputs like x."""
        return False

    @property
    def may_factor(self) -> bool:
        """Whether :meth:`factors` can apply to any input (then inputs of [batch, features] decide)."""
        return False

    def factors(self, x: torch.Tensor, y: Any, curvature: Curvature) -> tuple[FactoredRows, torch.Tensor, torch.Tensor]:
        raise NotApplicable(f"the {self.name!r} engine does not keep rows as factors")

    def factor_layout(self) -> tuple[int, tuple[tuple[int, int], ...], tuple[bool, ...]]:
        """(Σ (out + in), the layers' (out, in), whether each weight trains) of the factored rows."""
        raise NotApplicable(f"the {self.name!r} engine does not keep rows as factors")


def _combine(W: torch.Tensor, Jz: torch.Tensor) -> torch.Tensor:
    """Rows [q*S, n] (k-major) from weights W [S, c, q] and output Jacobians Jz [S, c, n]."""
    q = W.shape[2]
    return torch.einsum("scq,scn->qsn", W.to(Jz.dtype), Jz).reshape(q * Jz.shape[0], Jz.shape[2])


def _flat_rho(rho: torch.Tensor) -> torch.Tensor:
    """ρ [S, q] in the k-major order of the rows."""
    return rho.T.reshape(-1)


def _rows_from_output_jacobian(
    curvature: Curvature, z: torch.Tensor, y: torch.Tensor | None, Jz: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, ρ and per-sample losses from the outputs z and their Jacobian Jz [S, c, n]."""
    if curvature.identity_weights:  # W = I: the rows are the output Jacobian's, k-major, and ρ = z − y
        rows = Jz.transpose(0, 1).reshape(Jz.shape[0] * Jz.shape[1], Jz.shape[2])
        return rows, _flat_rho(curvature.residuals(z, y)), curvature.per_sample_loss(z, y)
    y = y if y is not None else torch.zeros_like(z)  # residual mode: the outputs are the residuals
    W, rho = curvature.weights(z, y)
    return _combine(W, Jz), _flat_rho(rho), curvature.per_sample_loss(z, y)


def _per_sample_weight_grad_by_grouped_conv(
    a: torch.Tensor, delta: torch.Tensor, kernel: tuple, dilation: tuple, padding: tuple, stride: tuple
) -> torch.Tensor:
    """Per-sample, per-direction weight gradients [S, q, Cout·Cin·kh·kw] of a 2-d convolution from its input
    a [S, Cin, H, W] and signals δ [S, q, Cout, Ho, Wo], as one grouped convolution: the input channels act as
    the batch, each sample is a group, and the signals are the filters (correlating an input with its output
    gradient gives the weight gradient; stride and dilation trade places). The result can run past the kernel
    size when the stride does not divide the input evenly, hence the narrowing."""
    S, q, c_out = delta.shape[:3]
    filters = delta.reshape(S * q * c_out, 1, *delta.shape[3:])
    out = F.conv2d(a.transpose(0, 1), filters, stride=dilation, padding=padding, dilation=stride, groups=S)
    out = out[:, :, : kernel[0], : kernel[1]]  # [Cin, S·q·Cout, kh, kw]
    c_in = a.shape[1]
    return out.reshape(c_in, S, q, c_out, -1).permute(1, 2, 3, 0, 4).reshape(S, q, -1)


class FastPathJacobian(Engine):
    """Per-sample rows from layer inputs and backpropagated signals (see the module docstring)."""

    name = "fast"
    #: On the CPU a convolution whose weight has at most this many entries per output channel (Cin·kh·kw) forms
    #: its per-sample weight gradients by one grouped convolution instead of unfold + bmm: measured on one thread
    #: (batch 600, 36-72 output rows), 2.4-2.8× faster at Cin·k² = 25-50, 1.5× at 27 with 32×32 inputs, and
    #: 1.6-2.7× slower at 72-100 (the paper CNN's first layer, 25, takes it; its second, 100, does not).
    GROUPED_CONV_MAX_PATCH = 64
    SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)

    def __init__(self, model: nn.Module, layout: ParameterLayout) -> None:
        self.model = model
        self.layout = layout
        owner: dict[int, tuple[nn.Module, str]] = {}
        self.modules: list[nn.Module] = []
        for module in model.modules():
            direct = list(module.named_parameters(recurse=False))
            if not any(p.requires_grad for _, p in direct):
                continue
            if not isinstance(module, self.SUPPORTED):
                raise NotApplicable(f"{type(module).__name__} has trainable parameters")
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                    raise NotApplicable("grouped, non-zero-padded or 'same'-padded convolution")
            self.modules.append(module)
            for pname, p in direct:
                if id(p) in owner:  # rows from one layer's signals would drop the other layers' share
                    raise NotApplicable("a parameter is held by several layers (tied weights)")
                owner[id(p)] = (module, pname)
        self.columns: dict[tuple[int, str], slice] = {}
        for i, p in enumerate(layout.params):  # (each is some module's direct parameter: owned, or refused above)
            module, pname = owner[id(p)]
            self.columns[(id(module), pname)] = layout.slice_of(i)

    @property
    def may_factor(self) -> bool:
        return self.all_linear

    @property
    def all_linear(self) -> bool:
        """Every trainable layer is a Linear (then :meth:`factors` applies when their inputs are [batch, features])."""
        return all(isinstance(m, nn.Linear) for m in self.modules)

    def factorable(self, x: torch.Tensor) -> bool:
        """Whether :meth:`factors` applies to inputs like x (a sample or a few): every layer a Linear, run once,
        on [batch, features] inputs. One forward pass without gradients."""
        if not self.all_linear:
            return False
        dims: dict[int, list[int]] = {id(m): [] for m in self.modules}
        handles = [m.register_forward_hook(lambda mod, inputs, out: dims[id(mod)].append(inputs[0].dim()))
                   for m in self.modules]
        try:
            with torch.no_grad():
                structure.call(self.model, x)
        finally:
            for h in handles:
                h.remove()
        return all(d == [2] for d in dims.values())

    def factor_layout(self) -> tuple[int, tuple[tuple[int, int], ...], tuple[bool, ...]]:
        linear = [m for m in self.modules if isinstance(m, nn.Linear)]
        shapes = tuple((m.out_features, m.in_features) for m in linear)
        return sum(o + i for o, i in shapes), shapes, tuple(bool(m.weight.requires_grad) for m in linear)

    def _forward_and_signals(self, x: torch.Tensor, y: torch.Tensor, curvature: Curvature):
        """One forward pass with hooks and the backward passes: each layer's input and signals δ [S, q, ...]
        (None for a layer that does not reach the output), ρ [S, q], the per-sample losses, W [S, c, q] and the
        outputs z."""
        records: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {id(m): [] for m in self.modules}

        def hook(module, inputs, output):
            records[id(module)].append((inputs[0].detach(), output))

        handles = [m.register_forward_hook(hook) for m in self.modules]
        try:
            with torch.enable_grad():
                z = structure.call(self.model, x)
        finally:
            for h in handles:
                h.remove()
        for m in self.modules:
            if len(records[id(m)]) != 1:
                raise NotApplicable(f"{type(m).__name__} ran {len(records[id(m)])} times in one forward pass")
        z_detached = z.detach()
        losses = curvature.per_sample_loss(z_detached, y)
        W, rho = curvature.weights(z_detached, y)
        outputs = [records[id(m)][0][1] for m in self.modules]
        inputs = [records[id(m)][0][0] for m in self.modules]
        return inputs, self._signals(z, outputs, W), rho, losses, W, z_detached

    def rows(
        self, x: torch.Tensor, y: torch.Tensor, curvature: Curvature
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows [q*S, n], ρ [q*S] and the per-sample losses [S] at the current parameters."""
        inputs, deltas, rho, losses, W, z = self._forward_and_signals(x, y, curvature)
        S, q = W.shape[0], W.shape[2]
        # Every column is written below (each parameter belongs to one recorded layer) unless a layer does not
        # reach the output, in which case its columns are zeroed there; so no up-front zero fill is needed.
        rows = z.new_empty(q, S, self.layout.numel)
        for m, a, delta in zip(self.modules, inputs, deltas):
            if delta is None:  # the layer does not reach the output: its columns are zero
                for pname in ("weight", "bias"):
                    cols = self.columns.get((id(m), pname))
                    if cols is not None:
                        rows[:, :, cols] = 0
                continue
            # the per-sample products for all q columns at once (one bmm or grouped convolution per layer)
            self._fill(rows, m, a, delta)
        return rows.reshape(q * S, -1), _flat_rho(rho), losses

    def factors(
        self, x: torch.Tensor, y: torch.Tensor, curvature: Curvature
    ) -> tuple[FactoredRows, torch.Tensor, torch.Tensor]:
        """The rows of :meth:`rows` as per-layer factors (types/rows.py), ρ and the per-sample losses; only
        for Linear layers applied to [batch, features] inputs (else NotApplicable). Row k·S + s is direction k
        of sample s, as in :meth:`rows`."""
        if not self.all_linear:
            raise NotApplicable("factored rows need every trainable layer to be a Linear")
        inputs, deltas, rho, losses, W, z = self._forward_and_signals(x, y, curvature)
        q = W.shape[2]
        layers = []
        for m, a, delta in zip(self.modules, inputs, deltas):
            if a.dim() != 2:
                raise NotApplicable("factored rows need Linear inputs of shape [batch, features]")
            if delta is None:  # does not reach the output: zero columns, no factors
                continue
            layers.append(LinearFactors(
                inputs=a,  # [S, in], once per sample
                signals=delta.transpose(0, 1).reshape(-1, delta.shape[2]),  # [q·S, out], k-major like the rows
                weight=self.columns.get((id(m), "weight")),
                bias=self.columns.get((id(m), "bias")),
            ))
        S = W.shape[0]
        sample_of_row = None if q == 1 else torch.arange(S, device=z.device).repeat(q)  # row k·S + s → s
        rows = FactoredRows(self.layout.numel, q * S, layers, z.dtype, sample_of_row)
        return rows, _flat_rho(rho), losses

    @staticmethod
    def _signals(z: torch.Tensor, outputs: list[torch.Tensor], W: torch.Tensor) -> list[torch.Tensor | None]:
        """Each layer's backpropagated signals δ [S, q, ...] for the q output-space directions W[:, :, k]
        (one backward pass per direction; ``is_grads_batched`` measured no faster on the paper's CNN). Sample-
        major, so that a convolution's signals reshape to the [S, q·Cout, L] operand of its bmm without a copy."""
        q = W.shape[2]
        per_direction = [
            torch.autograd.grad(z, outputs, grad_outputs=W[:, :, k].reshape(z.shape).to(z.dtype),
                                retain_graph=k < q - 1, allow_unused=True)
            for k in range(q)
        ]
        return [None if any(d is None for d in ds) else torch.stack(ds, dim=1) for ds in zip(*per_direction)]

    def _fill(self, out: torch.Tensor, m: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> None:
        """Writes layer m's columns of the rows out [q, S, n] from its input a [S, ...] and signals δ [S, q, ...]."""
        S, q = delta.shape[0], delta.shape[1]
        if isinstance(m, nn.Linear) and a.dim() == 2:
            # One position per sample: the per-sample weight gradient is an outer product δᵢ aᵢᵀ, written
            # straight into the rows (a broadcast multiply; bmm with an inner size of 1 is several times slower).
            cols = self.columns.get((id(m), "weight"))
            if cols is not None:
                view = out[:, :, cols].view(q, S, delta.shape[2], a.shape[1])
                torch.mul(delta.transpose(0, 1).unsqueeze(3), a.unsqueeze(1), out=view)
            cols = self.columns.get((id(m), "bias"))
            if cols is not None:
                out[:, :, cols] = delta.transpose(0, 1)
            return
        if isinstance(m, nn.Linear):  # inputs with extra positions [S, ..., in]
            a3 = a.reshape(S, -1, a.shape[-1])  # [S, P, in]
            d3 = delta.reshape(S, q, -1, delta.shape[-1]).transpose(2, 3).reshape(S, -1, a3.shape[1])
            grad_w = torch.bmm(d3, a3).view(S, q, -1)  # [S, q·out, P] x [S, P, in]
            grad_b = d3.sum(dim=2).view(S, q, -1)
        else:
            if isinstance(m, nn.Conv1d):  # as a 2-d convolution of height 1
                a = a.unsqueeze(2)
                delta = delta.unsqueeze(3)  # [S, q, Cout, 1, L]
                kernel, dilation = (1, *m.kernel_size), (1, *m.dilation)
                padding, stride = (0, *m.padding), (1, *m.stride)
            else:
                # the fast path admits Linear, Conv1d and Conv2d only, and no 'same'/'valid' padding strings
                assert isinstance(m, nn.Conv2d) and not isinstance(m.padding, str)
                kernel, dilation, padding, stride = m.kernel_size, m.dilation, m.padding, m.stride
            d3 = delta.reshape(S, q * delta.shape[2], -1)  # [S, q·Cout, L], a view
            if a.device.type == "cpu" and a.shape[1] * kernel[0] * kernel[1] <= self.GROUPED_CONV_MAX_PATCH:
                grad_w = _per_sample_weight_grad_by_grouped_conv(a, delta, kernel, dilation, padding, stride)
            else:
                patches = F.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride).transpose(1, 2)
                grad_w = torch.bmm(d3, patches).view(S, q, -1)  # [S, q·Cout, L] x [S, L, Cin·k]
            grad_b = d3.sum(dim=2).view(S, q, -1)
        for pname, grad in (("weight", grad_w), ("bias", grad_b)):
            cols = self.columns.get((id(m), pname))
            if cols is not None:
                out[:, :, cols] = grad.transpose(0, 1)


class FunctorchJacobian(Engine):
    """``vmap(jacrev(...))`` over samples, for per-sample-separable models."""

    name = "functorch"

    def __init__(self, model: nn.Module, layout: ParameterLayout) -> None:
        self.model = model
        self.layout = layout

    def rows(
        self, x: torch.Tensor, y: torch.Tensor, curvature: Curvature
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        theta = self.layout.get_flat()

        def output_single(flat: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = structure.functional(self.model, self.layout.as_dict(flat), structure.take(xi, None)).squeeze(0)
            return z.reshape(-1), z

        with torch.enable_grad():
            Jz, z = vmap(jacrev(output_single, has_aux=True), in_dims=(None, 0))(theta, x)  # [S, c, n], [S, ...]
        return _rows_from_output_jacobian(curvature, z, y, Jz)


def _jacobian_by_double_vjp(outputs: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                            batched: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [*z_shape, n], z) of z = outputs() with respect to the leaf tensors ``params`` (flattened in order), by
    reverse mode twice: g(u) = Jᵀu is linear in u, so ∂g_k/∂u = J[..., k], a backward pass through the first
    backward pass's graph per parameter (forward mode without vmap). With ``batched`` the n passes run as one
    vmap'd pass (``is_grads_batched``, the units e_k as its batch), 1.3-4x faster on one thread for the
    Moré-Garbow-Hillstrom residuals and the exponential of tests/models.py, with the same columns; it raises
    where an operation's backward has no batching rule, and the caller then asks for ``batched=False``."""
    z = outputs()
    n = sum(p.numel() for p in params)
    if not z.requires_grad:  # z does not depend on θ at all
        return torch.zeros(*z.shape, n, dtype=z.dtype, device=z.device), z.detach()
    u = torch.zeros_like(z, requires_grad=True)
    grads = torch.autograd.grad(z, params, grad_outputs=u, create_graph=True, materialize_grads=True)
    g = torch.cat([grad.reshape(-1) for grad in grads])
    if not g.requires_grad:  # no path from θ to z has a derivative (e.g. through round()): J = 0
        return torch.zeros(*z.shape, n, dtype=z.dtype, device=z.device), z.detach()
    if batched:
        units = torch.eye(n, dtype=g.dtype, device=g.device)
        (columns,) = torch.autograd.grad(g, u, grad_outputs=units, is_grads_batched=True, materialize_grads=True)
        if columns.dim() == u.dim():  # (g does not reach u, e.g. through round(): the zeros come without the batch)
            columns = columns.expand(n, *u.shape)
        return columns.movedim(0, -1), z.detach()
    rows = [torch.autograd.grad(g[k], u, retain_graph=True, materialize_grads=True)[0] for k in range(n)]
    return torch.stack(rows, dim=-1), z.detach()


ParameterOwners = list[list[tuple[nn.Module, str]]]


def parameter_owners(model: nn.Module, params: list[nn.Parameter]) -> ParameterOwners:
    """For each parameter, every (module, attribute name) that holds it: a tied parameter has several."""
    index = {id(p): i for i, p in enumerate(params)}
    owners: ParameterOwners = [[] for _ in params]
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and id(p) in index:
                owners[index[id(p)]].append((module, name))
    return owners


def _make_dual(primal: torch.Tensor, tangent: torch.Tensor, level: int) -> torch.Tensor:
    """``fwAD.make_dual`` without its per-call overhead: it reads an environment variable and passes the export
    pre-dispatch layer on every call (8 µs against 1.4 µs for the op itself, measured on one thread). The caller
    makes its first dual through ``fwAD.make_dual``, which also loads the forward-mode decompositions once."""
    return torch._make_dual(primal, tangent, level=level)


def _dual_if_floating(t: Any, level: int) -> Any:
    """t as a dual tensor with a zero tangent (so that no operation meets an implicit zero tangent, whose Python
    fallbacks cost several times the operation); anything else as it is."""
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return _make_dual(t, torch.zeros_like(t), level)
    return t


def _unit_tangents(q: torch.Tensor) -> list[torch.Tensor]:
    """e_j shaped like q, one per entry (kept per shape, dtype and device: a Jacobian asks for them every step)."""
    key = (tuple(q.shape), q.dtype, q.device)
    units = _UNIT_TANGENTS.get(key)
    if units is None:
        if len(_UNIT_TANGENTS) > 256:
            _UNIT_TANGENTS.clear()
        units = _UNIT_TANGENTS[key] = list(torch.eye(q.numel(), dtype=q.dtype, device=q.device).view(-1, *q.shape))
    return units


_UNIT_TANGENTS: dict[tuple, list[torch.Tensor]] = {}


def _jacobian_by_dual_passes(outputs: Callable[[Any, Any], torch.Tensor], owners: ParameterOwners,
                             params: list[nn.Parameter], x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [*z_shape, n], z) of z = outputs(x, y) by forward mode, one pass per parameter entry: every parameter
    is swapped for a dual tensor (tangent e_k on entry k, zero elsewhere) in each module that holds it, and put
    back after the pass whatever happens."""
    columns, z = [], None
    primals = [p.detach() for p in params]
    with fwAD.dual_level() as level:
        # parameters not being differentiated in a pass carry zero tangents, made once (the first through the
        # public fwAD.make_dual, which loads the forward-mode decompositions)
        still = [fwAD.make_dual(primals[0], torch.zeros_like(primals[0]))]
        still += [_make_dual(q, torch.zeros_like(q), level) for q in primals[1:]]
        x_dual, y_dual = _dual_if_floating(x, level), _dual_if_floating(y, level)
        passes = [(i, unit) for i, q in enumerate(primals) for unit in _unit_tangents(q)]
        for i, unit in passes:
            duals = [*still[:i], _make_dual(primals[i], unit, level), *still[i + 1:]]
            try:
                for h, holders in enumerate(owners):
                    for module, name in holders:
                        module._parameters[name] = duals[h]  # type: ignore[assignment]
                out = outputs(x_dual, y_dual)
            finally:
                for h, holders in enumerate(owners):
                    for module, name in holders:
                        module._parameters[name] = params[h]
            z, tangent_out = torch._unpack_dual(out, level=level)
            columns.append(tangent_out if tangent_out is not None else torch.zeros_like(z))
    assert z is not None
    return torch.stack(columns, dim=-1), z.detach()


def _faster_of(forward: Callable[[], Any], reverse: Callable[[], Any], margin: float) -> tuple[bool, Any]:
    """Whether ``forward`` should be kept (False only when ``reverse`` runs ``margin`` times faster; the best of two
    timed runs of each, after one untimed run of each), and what the kept one returned on its last run."""
    def best(run: Callable[[], Any]) -> tuple[float, Any]:
        run()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            value = run()
            times.append(time.perf_counter() - start)
        return min(times), value

    (reverse_time, by_reverse), (forward_time, by_forward) = best(reverse), best(forward)
    keep_forward = not margin * reverse_time < forward_time
    return keep_forward, by_forward if keep_forward else by_reverse


@dataclass
class SmallJacobianModes:
    """Which mode computes a small model's Jacobian (:meth:`FullJacobian._small_jacobian`): whether forward mode
    pays (None until timed) and whether it failed. Engines that differentiate the same model's outputs share one,
    so the two modes are timed once per model, not once per engine (``fit``'s solution and polish differentiate
    the whole batch with an engine of their own)."""

    forward_pays: bool | None = None
    forward_failed: bool = False
    #: set when reverse mode's batched second pass fails (an operation without a batching rule for its backward)
    batched_reverse_failed: bool = False


class FullJacobian(Engine):
    """The Jacobian of a whole chunk's outputs (no per-sample separability assumed). With ``residual_mode`` the
    outputs of ``output_fn`` are residuals (the targets only feed ``output_fn``)."""

    name = "full"
    #: Up to this many parameters the Jacobian comes from one forward-mode pass per parameter on the model
    #: itself (_jacobian_by_dual_passes), or, where forward mode fails, from reverse mode twice. Measured on one
    #: thread for the 3-parameter exponential over 100 points: 0.14 ms, against 0.27 ms for reverse mode twice
    #: with a backward pass per parameter (0.19 ms with them batched, on a Xeon) and 0.65 ms for jacfwd, whose
    #: vmap'd forward mode runs Python fallbacks for the implicit zero tangents of the inputs and targets.
    SMALL_MAX_PARAMETERS = 8
    #: Forward mode's cost depends on the model's code: an arithmetic operation with a Python number takes a slow
    #: path on dual tensors (about 0.1 ms against microseconds), so a model written with many (Chebyshev
    #: polynomials as 2·y·T − T', Meyer's θ₂/(t + θ₃)) is 2.5-4x faster by reverse mode twice. The first small
    #: Jacobian times both (the best of two runs each) and keeps reverse mode only when it is this many times
    #: faster: a wide margin, so that timing noise cannot flip the choice on models like the exponential above
    #: (forward mode 2x faster) and change the last bits of their steps from run to run.
    FORWARD_MODE_MARGIN = 2.0

    def __init__(self, output_fn: OutputFn, layout: ParameterLayout, residual_mode: bool = False,
                 module_outputs: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
                 model: nn.Module | None = None, rows_of: Callable[[Any], int] | None = None,
                 modes: SmallJacobianModes | None = None) -> None:
        self.output_fn = output_fn
        # the number of output rows of a chunk before it is evaluated (its leading size unless told otherwise)
        self.rows_of = rows_of or structure.samples
        self.layout = layout
        self.residual_mode = residual_mode
        # the outputs at the model's own parameters (no functional_call: they are θ whenever rows are asked for)
        self.module_outputs = module_outputs
        self._owners = parameter_owners(model, layout.params) if model is not None else None
        self.modes = modes if modes is not None else SmallJacobianModes()

    @property
    def forward_mode_failed(self) -> bool:
        """Set when an operation of the model has no forward-mode derivative."""
        return self.modes.forward_failed

    @property
    def forward_mode_pays(self) -> bool | None:
        """Timed at the first small Jacobian (see FORWARD_MODE_MARGIN); None before."""
        return self.modes.forward_pays

    def rows(self, x: torch.Tensor, y: Any, curvature: Curvature) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        J, z = self.output_jacobian(x, y)
        Jz = J.reshape(z.shape[0], -1, self.layout.numel)
        return _rows_from_output_jacobian(curvature, z, None if self.residual_mode else y, Jz)

    def output_jacobian(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(J [*z_shape, n], z) of the chunk's outputs z (its residuals, in residual mode)."""
        def outputs(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = self.output_fn(self.layout.as_dict(flat), x, y)
            return z, z

        # Forward mode costs one pass per parameter, reverse mode one per output: with at least one output
        # per sample, forward mode wins when there are no more parameters than samples (curve fits). With a
        # handful of parameters, two reverse passes beat both (see _jacobian_by_double_vjp).
        n = self.layout.numel
        if n <= self.SMALL_MAX_PARAMETERS and self.module_outputs is not None:
            J, z = self._small_jacobian(self.module_outputs, x, y)
        else:
            with torch.enable_grad():
                engine = jacfwd if n <= self.rows_of(x) else jacrev
                theta = self.layout.get_flat()
                try:
                    J, z = engine(outputs, has_aux=True)(theta)  # [*z_shape, n]
                except RuntimeError:
                    J, z = self._reverse_jacobian(outputs, theta)
        return J, z

    def row_blocks(self, x: Any, block: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(first row, J [b, n], z [b]) of the flattened outputs in blocks of ``block`` rows, from one forward
        pass and a batched backward pass per block (reverse mode: the rows are what the memory budget counts);
        for functions torch.func cannot transform, by autograd's batched backward pass instead."""
        theta = self.layout.get_flat()

        def outputs(t: torch.Tensor) -> torch.Tensor:
            return self.output_fn(self.layout.as_dict(t), x, None).reshape(-1)

        with torch.enable_grad():
            try:
                z, pullback = vjp(outputs, theta)[:2]
                rows_for = vmap(lambda e: pullback(e)[0])
            except RuntimeError:  # (a function that makes tensors require grad)
                t = theta.detach().requires_grad_(True)
                z = outputs(t)
                rows_for = lambda e: torch.autograd.grad(z, t, e, retain_graph=True, is_grads_batched=True)[0]  # noqa: E731
            m = z.numel()
            for start in range(0, m, block):
                # the block's rows of the identity, b × M (the whole M × M would outgrow the budget it serves)
                b = min(block, m - start)
                units = torch.zeros(b, m, dtype=z.dtype, device=z.device)
                units[torch.arange(b, device=z.device), torch.arange(start, start + b, device=z.device)] = 1.0
                yield start, rows_for(units).detach(), z[start : start + block].detach()

    @staticmethod
    def _reverse_jacobian(outputs: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                          theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """J by plain autograd, for functions that torch.func cannot transform (random operations such as
        train-mode RReLU; residual functions that differentiate with ``torch.autograd.grad(...,
        create_graph=True)``, since transforms refuse a function that makes tensors require grad): one forward
        pass, then every output's backward pass batched in one vmap'd pass (``is_grads_batched``; only the
        backward pass is batched, so the forward pass may draw random numbers)."""
        last: list[torch.Tensor] = []

        def value(t: torch.Tensor) -> torch.Tensor:
            last[:] = [outputs(t)[0]]
            return last[0]

        J = torch.autograd.functional.jacobian(value, theta, vectorize=True)
        return J, last[0].detach()

    def _small_jacobian(self, outputs: Callable[[torch.Tensor, Any], torch.Tensor], x: torch.Tensor,
                        y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        params = list(self.layout.params)

        def by_reverse_mode() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad():
                if not self.modes.batched_reverse_failed:
                    try:
                        return _jacobian_by_double_vjp(lambda: outputs(x, y), params)
                    except (RuntimeError, NotImplementedError):
                        self.modes.batched_reverse_failed = True
                return _jacobian_by_double_vjp(lambda: outputs(x, y), params, batched=False)

        if self.forward_mode_failed:
            return by_reverse_mode()
        assert self._owners is not None  # (module_outputs come with the model whose parameters they swap)
        owners = self._owners

        def by_forward_mode() -> tuple[torch.Tensor, torch.Tensor]:
            return _jacobian_by_dual_passes(outputs, owners, params, x, y)

        try:
            if self.modes.forward_pays is None:  # (the race's last run of the kept mode is this Jacobian)
                self.modes.forward_pays, jacobian = _faster_of(by_forward_mode, by_reverse_mode,
                                                               self.FORWARD_MODE_MARGIN)
                return jacobian
            if self.modes.forward_pays:
                return by_forward_mode()
        except (RuntimeError, NotImplementedError):  # e.g. an operation without a forward-mode formula
            self.modes.forward_failed = True
        return by_reverse_mode()


class GivenJacobian(FullJacobian):
    """The Jacobian that a residual function computes itself: ``jacobian(batch)`` returns (r [M], J [M, n]) in
    the layout's order, or None when it cannot for this model (physics-informed residuals on an MLP, by Taylor
    mode: ``marquardt.pde``); the whole-batch engine otherwise."""

    name = "given"

    def __init__(self, jacobian: Callable[[Any], tuple[torch.Tensor, torch.Tensor] | None], output_fn: OutputFn,
                 layout: ParameterLayout, **kwargs: Any) -> None:
        super().__init__(output_fn, layout, residual_mode=True, **kwargs)
        self.jacobian = jacobian

    def output_jacobian(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        given = self.jacobian(x)
        if given is None:
            return super().output_jacobian(x, y)
        r, J = given
        return J.reshape(r.numel(), 1, self.layout.numel), r.reshape(-1, 1)

    def row_blocks(self, x: Any, block: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        given = self.jacobian(x)
        if given is None:
            yield from super().row_blocks(x, block)
            return
        r, J = given  # (the whole J at once: it costs one pass, and its rows are what the blocks hold anyway)
        for start in range(0, r.numel(), block):
            yield start, J[start : start + block], r[start : start + block]
