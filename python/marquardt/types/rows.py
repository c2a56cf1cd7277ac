"""The rows 𝒥 of the generalized Jacobian, as the solvers see them: explicit (:class:`DenseRows`) or, for Linear
layers, as per-layer factors (:class:`FactoredRows`). Both give the products a dual solve needs
(:class:`RowOperator`).

For a ``Linear`` layer applied to one feature vector per sample, the columns of residual row r that belong to
the layer are the outer product of its backpropagated signal δ_r (out) and its input a_r (in):

    weight: vec(δ_r a_rᵀ)  (the [out, in] layout of the weight),   bias: δ_r.

So the m × n rows 𝒥 never need to exist: with the m × out signals Δ and the m × in inputs 𝒜 of each layer,

    𝒥 v    = Σ_layers rowsum((Δ V) ∘ 𝒜) + Δ b           (V, b: the layer's part of v)
    𝒥ᵀ y   = [ Δᵀ diag(y) 𝒜 , Δᵀ y ]  per layer
    diag(𝒥ᵀ𝒥) = [ (Δ∘Δ)ᵀ (𝒜∘𝒜) , (Δ∘Δ)ᵀ 1 ]  per layer

each at the cost of one GEMM the size of the layer's weight times m, instead of m × n per product with the rows
themselves, and m × m × n to form the dual matrix K = 𝒥 D⁻¹ 𝒥ᵀ.

:meth:`FactoredRows.approximate_gram` is the preconditioner of the dual solve (``solve/pcg.py``): K with D⁻¹
replaced, per layer, by the nearest rank-one matrix u vᵀ in the log domain (bias as an extra input column of
ones). Then the layer's part of K is a Hadamard product of two small Grams (the neural-tangent-kernel identity),

    Σ_{o,k} δ_ro u_o δ_so · a_rk v_k a_sk = (Δ diag(u) Δᵀ) ∘ (𝒜 diag(v) 𝒜ᵀ),

formed in m² (out + in) instead of m² · out · in. When D⁻¹ lies within a factor c of that rank-one fit entry
by entry, the preconditioned matrix has condition number at most c (both sides are sums of the same positive
terms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .. import ops


class RowOperator(Protocol):
    """What a dual solve needs of the rows 𝒥: products with 𝒥 and 𝒥ᵀ, and diag(𝒥ᵀ𝒥)."""

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...
    def rmatvec(self, y: torch.Tensor) -> torch.Tensor: ...
    def column_sq_norms(self) -> torch.Tensor: ...


class DenseRows:
    """Explicit rows 𝒥 (m × n, stored in the accumulation dtype), with the products a dual solve needs; vectors
    keep their own dtype."""

    def __init__(self, J: torch.Tensor) -> None:
        self.J = J

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """𝒥 v."""
        return (self.J @ v.to(self.J.dtype)).to(v.dtype)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """𝒥ᵀ y."""
        return (self.J.T @ y.to(self.J.dtype)).to(y.dtype)

    def column_sq_norms(self) -> torch.Tensor:
        """diag(𝒥ᵀ𝒥)."""
        return (self.J * self.J).sum(dim=0)


@dataclass
class LinearFactors:
    """One Linear layer's share of the rows: row r is vec(signals[r] ⊗ inputs[sample(r)]) on the weight's columns
    and signals[r] on the bias's (either slice may be None: frozen or absent). The inputs are kept once per
    sample: with q residuals per sample (classification, multi-output regression) q rows share one input."""

    inputs: torch.Tensor  # [S, in]
    signals: torch.Tensor  # [m, out]
    weight: slice | None
    bias: slice | None


class FactoredRows:
    """The m × n rows 𝒥 of a stack of Linear layers, as per-layer factors (see the module docstring).

    ``sample_of_row`` [m] maps each row to its sample (the row of the layers' inputs); None when the rows are
    the samples (one residual per sample). Columns of layers that do not reach the output are zero (they have
    no factors here)."""

    def __init__(self, n: int, m: int, layers: list[LinearFactors], dtype: torch.dtype,
                 sample_of_row: torch.Tensor | None = None) -> None:
        self.n = n
        self.m = m
        self.layers = layers
        self.dtype = dtype
        self.sample_of_row = sample_of_row

    @staticmethod
    def cat(chunks: list[FactoredRows]) -> FactoredRows:
        """The rows of several chunks stacked in order (the layers line up: the same model made them)."""
        if len(chunks) == 1:
            return chunks[0]
        layers = [
            LinearFactors(torch.cat([c.layers[i].inputs for c in chunks]),
                          torch.cat([c.layers[i].signals for c in chunks]), first.weight, first.bias)
            for i, first in enumerate(chunks[0].layers)
        ]
        sample_of_row = None
        if any(c.sample_of_row is not None for c in chunks) and layers:
            parts, offset = [], 0
            for c in chunks:
                samples = c.layers[0].inputs.shape[0]
                rows = c.sample_of_row if c.sample_of_row is not None else torch.arange(
                    samples, device=c.layers[0].inputs.device)
                parts.append(rows + offset)
                offset += samples
            sample_of_row = torch.cat(parts)
        return FactoredRows(chunks[0].n, sum(c.m for c in chunks), layers, chunks[0].dtype, sample_of_row)

    def scaled(self, s: torch.Tensor) -> FactoredRows:
        """The rows each multiplied by s [m] (row r = vec(δ_r ⊗ a): its signals carry the factor)."""
        layers = [LinearFactors(f.inputs, f.signals * s.to(f.signals.dtype).unsqueeze(1), f.weight, f.bias)
                  for f in self.layers]
        return FactoredRows(self.n, self.m, layers, self.dtype, self.sample_of_row)

    def to(self, dtype: torch.dtype) -> FactoredRows:
        layers = [LinearFactors(f.inputs.to(dtype), f.signals.to(dtype), f.weight, f.bias) for f in self.layers]
        return FactoredRows(self.n, self.m, layers, dtype, self.sample_of_row)

    def _to_rows(self, t: torch.Tensor) -> torch.Tensor:
        """[S, k] per sample → [m, k] per row."""
        return t if self.sample_of_row is None else t.index_select(0, self.sample_of_row)

    def _to_samples(self, t: torch.Tensor, samples: int) -> torch.Tensor:
        """[m, k] per row → [S, k], summed over each sample's rows."""
        if self.sample_of_row is None:
            return t
        return t.new_zeros(samples, t.shape[1]).index_add_(0, self.sample_of_row, t)

    def dense(self) -> torch.Tensor:
        """The explicit rows 𝒥 (m × n) in the factors' dtype."""
        device = self.layers[0].signals.device if self.layers else None
        J = torch.zeros(self.m, self.n, dtype=self.dtype, device=device)
        for f in self.layers:
            if f.weight is not None:
                inputs = self._to_rows(f.inputs)
                view = J[:, f.weight].view(self.m, f.signals.shape[1], inputs.shape[1])
                torch.mul(f.signals.unsqueeze(2), inputs.unsqueeze(1), out=view)
            if f.bias is not None:
                J[:, f.bias] = f.signals
        return J

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """𝒥 v (m), computed in the factors' dtype and returned in v's (as DenseRows does)."""
        v_ = v.to(self.dtype)
        out = v_.new_zeros(self.m)
        for f in self.layers:
            if f.weight is not None:
                V = v_[f.weight].view(f.signals.shape[1], f.inputs.shape[1])
                out += (f.signals * self._to_rows(f.inputs @ V.T)).sum(dim=1)  # δ_rᵀ V a_s
            if f.bias is not None:
                out += f.signals @ v_[f.bias]
        return out.to(v.dtype)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """𝒥ᵀ y (n), computed in the factors' dtype and returned in y's."""
        y_ = y.to(self.dtype)
        out = y_.new_zeros(self.n)
        for f in self.layers:
            if f.weight is not None:
                weighted = self._to_samples(f.signals * y_.unsqueeze(1), f.inputs.shape[0])  # Σ_rows of s: y_r δ_r
                out[f.weight] = (weighted.T @ f.inputs).reshape(-1)
            if f.bias is not None:
                out[f.bias] = f.signals.T @ y_
        return out.to(y.dtype)

    def column_sq_norms(self) -> torch.Tensor:
        """diag(𝒥ᵀ𝒥) (n)."""
        out = torch.zeros(self.n, dtype=self.dtype, device=self.layers[0].signals.device if self.layers else None)
        for f in self.layers:
            s2 = f.signals * f.signals
            if f.weight is not None:
                out[f.weight] = (self._to_samples(s2, f.inputs.shape[0]).T @ (f.inputs * f.inputs)).reshape(-1)
            if f.bias is not None:
                out[f.bias] = s2.sum(dim=0)
        return out

    def approximate_gram(
        self, d_inv: torch.Tensor, dtype: torch.dtype, workspace: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """K̃ ≈ 𝒥 diag(d_inv) 𝒥ᵀ (m × m) with each layer's d_inv replaced by its log-domain rank-one fit.

        ``workspace``: m × m buffers kept from an earlier call and reused (the result is one of them). Fresh
        buffers of a few MiB come back from the allocator as new pages, and faulting them in cost as much as
        the Grams themselves (~5 of 12 ms at m = 1000 on one core). With several rows per sample the inputs'
        Gram is formed per sample (S × S) and spread to the rows."""
        shape = (self.m, self.m)
        K = _buffer(workspace, "gram", shape, dtype, d_inv.device).zero_()
        gram_signals = _buffer(workspace, "gram_signals", shape, dtype, d_inv.device)
        gram_inputs = _buffer(workspace, "gram_inputs", shape, dtype, d_inv.device)
        for f in self.layers:
            signals, inputs = f.signals.to(dtype), f.inputs.to(dtype)
            out_features = signals.shape[1]
            blocks, columns = [], []  # d_inv as [out, in'] and the input columns it weights (ones for the bias)
            if f.weight is not None:
                blocks.append(d_inv[f.weight].view(out_features, -1))
                columns.append(inputs)
            if f.bias is not None:
                blocks.append(d_inv[f.bias].view(out_features, 1))
                columns.append(inputs.new_ones(inputs.shape[0], 1))
            u, v = _rank_one_log_fit(torch.cat(blocks, dim=1).to(torch.float64))
            # Each Gram by jtj_accumulate_ (one triangle), then K += Gram_δ ∘ Gram_a in place.
            ops.jtj_accumulate_(gram_signals.zero_(), (signals * u.sqrt().to(dtype)).T)
            scaled_columns = (torch.cat(columns, dim=1) * v.sqrt().to(dtype)).T
            if self.sample_of_row is None:
                ops.jtj_accumulate_(gram_inputs.zero_(), scaled_columns)
            else:
                samples = inputs.shape[0]
                per_sample = ops.jtj_accumulate_(inputs.new_zeros(samples, samples), scaled_columns)
                rows = self.sample_of_row
                torch.index_select(per_sample.index_select(0, rows), 1, rows, out=gram_inputs)
            K.addcmul_(gram_signals, gram_inputs)
        return K


def _buffer(workspace: dict[str, torch.Tensor] | None, name: str, shape: tuple[int, int], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    """workspace[name] when it has this shape, dtype and device (else a new one, kept there)."""
    if workspace is None:
        return torch.empty(shape, dtype=dtype, device=device)
    t = workspace.get(name)
    if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
        t = workspace[name] = torch.empty(shape, dtype=dtype, device=device)
    return t


def _rank_one_log_fit(E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive u, v with log(u_o v_k) the least-squares fit of log E_ok (exact when E has one row or column)."""
    L = E.log()
    row = L.mean(dim=1)
    col = L.mean(dim=0) - L.mean()
    return row.exp(), col.exp()
