"""Jacobian rows of Linear layers held as per-layer factors: the dual solve that never forms them, and the
primal accumulation that exploits their Kronecker structure.

For a ``Linear`` layer applied to one feature vector per sample, the columns of residual row r that belong to
the layer are the outer product of its backpropagated signal δ_r (out) and its input a_r (in):

    weight: vec(δ_r a_rᵀ)  (the [out, in] layout of the weight),   bias: δ_r.

So the m × n rows 𝒥 never need to exist: with the m × out signals Δ and the m × in inputs 𝒜 of each layer,

    𝒥 v    = Σ_layers rowsum((Δ V) ∘ 𝒜) + Δ b           (V, b: the layer's part of v)
    𝒥ᵀ y   = [ Δᵀ diag(y) 𝒜 , Δᵀ y ]  per layer
    diag(𝒥ᵀ𝒥) = [ (Δ∘Δ)ᵀ (𝒜∘𝒜) , (Δ∘Δ)ᵀ 1 ]  per layer

each at the cost of one GEMM the size of the layer's weight times m, instead of m × n per product with the rows
themselves, and m × m × n to form the dual matrix K = 𝒥 D⁻¹ 𝒥ᵀ.

The dual system (K + μI) y = v (ALGORITHM.md §3.5) is then solved by preconditioned conjugate gradients with
the exact K applied through the factors. The preconditioner is K with D⁻¹ replaced, per layer, by the nearest
rank-one matrix u vᵀ in the log domain (bias as an extra input column of ones): then the layer's part of K is a
Hadamard product of two small Grams (the neural-tangent-kernel identity),

    Σ_{o,k} δ_ro u_o δ_so · a_rk v_k a_sk = (Δ diag(u) Δᵀ) ∘ (𝒜 diag(v) 𝒜ᵀ),

formed in m² (out + in) instead of m² · out · in. When D⁻¹ lies within a factor c of that rank-one fit entry
by entry, the preconditioned matrix has condition number at most c (both sides are sums of the same positive
terms), and CG converges in a few iterations: on the sine MLP (1-64-64-1, max-diagonal damping) the measured
condition numbers were 1.3-3.2 and CG needed 7-18 iterations for a relative residual of 1e-10.

In the primal form (more rows than parameters), :func:`accumulate_gram_` forms A = α 𝒥ᵀ𝒥 with each large
weight's diagonal block from the pair products vech(δ_r δ_rᵀ) and vech(a_r a_rᵀ): one GEMM with half the flops
of that block's share of a SYRK.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import ops


def factored_dual_pays(m: int, n: int, layer_shapes: list[tuple[int, int]]) -> bool:
    """Whether the factored PCG dual should replace the formed K for m rows, n parameters and Linear layers of
    these (out, in) shapes (dual_method='auto').

    Forming K costs m² n / 2; the factored solve costs m² Σ(out + in + 1) / 2 for its Grams plus ~12-16 CG
    iterations with a fixed overhead of ~0.2 ms each. Measured per step on one core (sine MLPs, ms, formed K /
    PCG): n = 481: m = 100 1.6 / 4.4, m = 400 4.1 / 6.9; n = 1153: m = 250 3.9 / 6.5, m = 800 20.5 / 15.6;
    n = 4353: m = 100 4.6 / 4.9, m = 250 13.1 / 7.0, m = 500 34 / 11; n = 16897, m = 250 48 / 10."""
    width = sum(out + inp + 1 for out, inp in layer_shapes)
    return m * n >= 300_000 and n >= 4 * width


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


@dataclass
class CGResult:
    x: torch.Tensor
    converged: bool
    iterations: int
    relative_residual: float


def preconditioned_cg(
    apply: Callable[[torch.Tensor], torch.Tensor],
    precondition: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    tol: float,
    max_iter: int,
) -> CGResult:
    """x with apply(x) = b (symmetric positive definite), by CG preconditioned with ``precondition`` ≈ apply⁻¹;
    stops when ‖b − apply(x)‖ ≤ tol ‖b‖ (the recursively updated residual)."""
    x = torch.zeros_like(b)
    b_norm = float(b.norm())
    if b_norm == 0.0:
        return CGResult(x, True, 0, 0.0)
    r = b.clone()
    z = precondition(r)
    p = z.clone()
    rz = r @ z
    rel = 1.0
    for it in range(1, max_iter + 1):
        Ap = apply(p)
        curvature = p @ Ap
        if not bool(curvature > 0):  # not positive definite (or non-finite): give up, the caller raises λ
            return CGResult(x, False, it, rel)
        step = rz / curvature
        x += step * p
        r -= step * Ap
        rel = float(r.norm()) / b_norm
        if rel <= tol:
            return CGResult(x, True, it, rel)
        z = precondition(r)
        rz_next = r @ z
        p = z + (rz_next / rz) * p
        rz = rz_next
    return CGResult(x, False, max_iter, rel)


class RankOnePreconditioner:
    """(K̃ + μI)⁻¹ by a Cholesky factor of the approximate Gram, kept for the last μ."""

    def __init__(self, K_approx: torch.Tensor) -> None:
        self.K = K_approx
        self._mu: float | None = None
        self._U: torch.Tensor | None = None

    def factor(self, mu: float) -> torch.Tensor | None:
        """The upper factor of K̃ + μI (None if it is not positive definite even in float64)."""
        if self._mu != mu:
            self._mu, self._U = mu, None
            for dtype in dict.fromkeys((self.K.dtype, torch.float64)):
                K = self.K.to(dtype)
                U, info = ops.damped_cholesky_factor(K, torch.ones(K.shape[0], dtype=dtype, device=K.device), mu)
                if int(info) == 0:
                    self._U = U
                    break
        return self._U

    def apply(self, mu: float, r: torch.Tensor) -> torch.Tensor:
        U = self.factor(mu)
        assert U is not None
        # Two triangular solves: a third of cholesky_solve's time at m = 1000 (it copies the factor each call).
        z = torch.linalg.solve_triangular(U.mT, r.to(U.dtype).unsqueeze(1), upper=False)
        return torch.linalg.solve_triangular(U, z, upper=True).squeeze(1).to(r.dtype)


def kronecker_workspace(out_features: int, in_features: int) -> tuple[int, int]:
    """Entries accumulate_gram_ holds for one weight: (fixed: the pair GEMM's result M, per row: the signal and
    input pair products)."""
    out_pairs, in_pairs = out_features * (out_features + 1) // 2, in_features * (in_features + 1) // 2
    return out_pairs * in_pairs, out_pairs + in_pairs


def kronecker_pays(out_features: int, in_features: int) -> bool:
    """Whether a weight's diagonal block of 𝒥ᵀ𝒥 is cheaper from symmetric Kronecker products (accumulate_gram_)
    than from its rows. Measured per accumulation on one core (sine MLPs 1-w-w-1, rows / factored, ms):
    w = 16: 4.8 / 5.7 (1,000 rows), 11.8 / 18.9 (5,000); w = 24: 8.6 / 15.1, 43.9 / 43.3; w = 32: 21.0 / 19.5,
    114.5 / 90.7; w = 48: 99.6 / 71.1, 524 / 325; w = 64: 315 / 218, 1,436 / 909."""
    return min(out_features, in_features) >= 8 and out_features * in_features >= 1024


def _pair_index(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(the upper-triangle index pairs of a size × size matrix, and the size × size map (o, o') → pair number)."""
    upper = torch.triu_indices(size, size, device=device)
    pairs = torch.zeros(size, size, dtype=torch.long, device=device)
    pairs[upper[0], upper[1]] = torch.arange(upper.shape[1], device=device)
    return upper, torch.maximum(pairs, pairs.T)


def _symmetric_products(x: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Rows vech(x_r x_rᵀ): [rows, size (size + 1) / 2]."""
    return x[:, upper[0]] * x[:, upper[1]]


def accumulate_gram_(A: torch.Tensor, g: torch.Tensor, rows: FactoredRows, rho: torch.Tensor, alpha: float) -> None:
    """A += α 𝒥ᵀ𝒥 and g += α 𝒥ᵀρ for factored rows, the whole of A written (symmetric), in A's dtype.

    The diagonal block of a large Linear weight (out × in) is Σ_r (δ_r δ_rᵀ) ⊗ (a_r a_rᵀ): each entry
    Σ_r δ_ro δ_ro' a_rk a_rk' is symmetric in (o, o') and in (k, k') separately, so the block is the
    [out(out+1)/2] × [in(in+1)/2] GEMM  M = Σ_r vech(δ_r δ_rᵀ) vech(a_r a_rᵀ)ᵀ  spread to its out·in × out·in
    entries, about half the flops of the block's share of a SYRK, and in one large GEMM. Every other entry
    (other layers, biases, the blocks between two layers) comes from the explicit rows by SYRK and GEMMs.
    (Measured at 10,000 rows of a 64 × 64 weight on one core: 1.36 s instead of 1.92 s.)"""
    dtype = A.dtype
    J = rows.dense().to(dtype)
    g.addmv_(J.T, rho.to(dtype), alpha=alpha)
    big = [f for f in rows.layers if f.weight is not None and kronecker_pays(f.signals.shape[1], f.inputs.shape[1])]
    in_big = torch.zeros(rows.n, dtype=torch.bool, device=A.device)
    for f in big:
        in_big[f.weight] = True
    rest = (~in_big).nonzero().squeeze(1)
    if rest.numel():
        J_rest = J.index_select(1, rest)
        block = ops.jtj_accumulate_(A.new_zeros(rest.numel(), rest.numel()), J_rest, alpha=alpha)
        A.index_put_((rest.unsqueeze(1), rest.unsqueeze(0)), block, accumulate=True)
        for f in big:  # the blocks between the large weight and everything else, and their transposes
            cross = alpha * (J[:, f.weight].T @ J_rest)
            A[f.weight].index_add_(1, rest, cross)
            A[:, f.weight].index_add_(0, rest, cross.T)
    for i, f in enumerate(big):
        for h in big[i + 1:]:  # between two large weights
            cross = alpha * (J[:, f.weight].T @ J[:, h.weight])
            A[f.weight, h.weight] += cross
            A[h.weight, f.weight] += cross.T
        out_f, in_f = f.signals.shape[1], f.inputs.shape[1]
        upper_o, pairs_o = _pair_index(out_f, A.device)
        upper_i, pairs_i = _pair_index(in_f, A.device)
        signal_products = rows._to_samples(_symmetric_products(f.signals.to(dtype), upper_o), f.inputs.shape[0])
        M = signal_products.T @ _symmetric_products(f.inputs.to(dtype), upper_i)  # [out pairs, in pairs]
        block = A[f.weight, f.weight].view(out_f, in_f, out_f, in_f)  # [o, k, o', k']
        pairs_i_flat = pairs_i.reshape(-1)
        for o in range(out_f):  # one output row at a time: an out × in² temporary instead of (out · in)²
            spread = M.index_select(0, pairs_o[o]).index_select(1, pairs_i_flat).view(out_f, in_f, in_f)  # [o', k, k']
            block[o].add_(spread.permute(1, 0, 2), alpha=alpha)
