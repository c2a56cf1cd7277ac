"""A = α 𝒥ᵀ𝒥 (the primal form) from factored rows, by symmetric Kronecker products for large weights.

The diagonal block of a Linear weight (out × in) is Σ_r (δ_r δ_rᵀ) ⊗ (a_r a_rᵀ); its entries are symmetric in
the output pair and in the input pair separately, so it is one GEMM of the pair products vech(δ_r δ_rᵀ) and
vech(a_r a_rᵀ), with half the flops of that block's share of a SYRK.
"""

from __future__ import annotations

import torch

from .. import ops
from ..types.rows import FactoredRows


def kronecker_workspace(out_features: int, in_features: int) -> tuple[int, int]:
    """Entries accumulate_gram_ holds for one weight: (fixed: the pair GEMM's result M, per row: the signal and
    input pair products)."""
    out_pairs, in_pairs = out_features * (out_features + 1) // 2, in_features * (in_features + 1) // 2
    return out_pairs * in_pairs, out_pairs + in_pairs


def kronecker_pays(out_features: int, in_features: int) -> bool:
    """Whether a weight's diagonal block of 𝒥ᵀ𝒥 is cheaper from symmetric Kronecker products (accumulate_gram_)
    than from its rows. Measured per accumulation on one core (sine MLPs 1-w-w-1, rows / factored, ms):
    w = 16: 4.8 / 5.7 (1,000 rows), 11.8 / 18.9 (5,000); w = 24: 8.6 / 15.1, 43.9 / 43.3; w = 32: 21.0 / 19.5,
    114.5 / 90.7; w = 48: 99.6 / 71.1, 524 / 325; w = 64: 315 / 218, 1,436 / 909. Those rows ran on the GEMM
    kernel; where jtj_accumulate_ runs the AVX-512 SYRK the rows win at every size (BENCHMARKS.md §3), and
    primal_accumulation='auto' does not ask."""
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
