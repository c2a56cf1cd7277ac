"""Block-diagonal LM (docs/algorithm.md, "Solves"): the curvature kept as blocks along the diagonal.

Each block is a set of parameter indices (a layer, one output unit of a layer — a row of its weight with its
bias — or a fixed-size group). A block holds its own A_b = α 𝒥_bᵀ𝒥_b and is damped with its own part of the
max-diagonal d; all blocks share λ and the acceptance, momentum and line-search logic of the iteration.
Memory is Σ n_b² instead of n², time Σ n_b³ instead of n³; the step is the exact LM step of the
block-diagonal approximation (A with its off-diagonal blocks dropped).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import ops
from ..types.layout import ParameterLayout
from ..types.rows import FactoredRows
from .system import Footprint, Precision, Problem, System

BLOCK_KINDS = ("layer", "unit")
#: partitions are index lists made on the host (whatever the default device); the system moves them once
HOST = torch.device("cpu")


def layer_blocks(layout: ParameterLayout) -> list[torch.Tensor]:
    """One block per module: all trainable parameters whose names share the module prefix."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(layout.names):
        owner = name.rsplit(".", 1)[0] if "." in name else name
        groups.setdefault(owner, []).extend(range(layout.offsets[i], layout.offsets[i] + layout.params[i].numel()))
    return [torch.tensor(ix, dtype=torch.long, device=HOST) for ix in groups.values()]


def unit_blocks(layout: ParameterLayout) -> list[torch.Tensor]:
    """One block per output unit: row j of a weight [out, ...] together with bias[j] of the same module."""
    blocks: list[torch.Tensor] = []
    bias_of: dict[str, int] = {}
    for i, name in enumerate(layout.names):
        if name.endswith(".bias") or name == "bias":
            bias_of[name[: -len("bias")]] = i
    used_bias: set[int] = set()
    for i, (name, p) in enumerate(zip(layout.names, layout.params)):
        if name.endswith(".bias") or name == "bias":
            continue
        start = layout.offsets[i]
        if p.dim() < 2:
            blocks.append(torch.arange(start, start + p.numel(), device=HOST))
            continue
        out, per_unit = p.shape[0], p[0].numel()
        b = bias_of.get(name[: -len("weight")]) if name.endswith("weight") else None
        if b is not None and layout.params[b].numel() != out:
            b = None
        if b is not None:
            used_bias.add(b)
        for j in range(out):
            ix = torch.arange(start + j * per_unit, start + (j + 1) * per_unit, device=HOST)
            if b is not None:
                ix = torch.cat([ix, torch.tensor([layout.offsets[b] + j], device=HOST)])
            blocks.append(ix)
    for i in bias_of.values():
        if i not in used_bias:
            blocks.append(torch.arange(layout.offsets[i], layout.offsets[i] + layout.params[i].numel(), device=HOST))
    return blocks


def group_blocks(n: int, size: int) -> list[torch.Tensor]:
    """Consecutive groups of ``size`` parameters."""
    if size < 1:
        raise ValueError(f"blocks: a group size must be >= 1, got {size}")
    return [torch.arange(s, min(s + size, n), device=HOST) for s in range(0, n, size)]


def make_blocks(kind: str | int, layout: ParameterLayout) -> list[torch.Tensor]:
    if isinstance(kind, int):
        return group_blocks(layout.numel, kind)
    if kind == "layer":
        return layer_blocks(layout)
    if kind == "unit":
        return unit_blocks(layout)
    raise ValueError(f"blocks: expected 'layer', 'unit' or a group size (int), got {kind!r}")


def fit_to_budget(blocks: list[torch.Tensor], layout: ParameterLayout, budget: int, elt: int) -> list[torch.Tensor]:
    """Split the largest blocks into output-unit blocks until Σ n_b² · elt fits the budget."""

    def cost(bs: list[torch.Tensor]) -> int:
        return sum(int(b.numel()) ** 2 for b in bs) * elt

    units = unit_blocks(layout)
    result = list(blocks)
    while cost(result) > budget:
        i = max(range(len(result)), key=lambda k: result[k].numel())
        members = set(result[i].tolist())
        parts = [u for u in units if int(u[0]) in members]
        if len(parts) <= 1:
            break  # this block cannot be split into units
        result = result[:i] + result[i + 1 :] + parts
    if cost(result) > budget:
        largest = max(int(b.numel()) for b in result)
        raise ValueError(
            f"block-diagonal curvature needs {cost(result) / 2**20:.1f} MiB (largest block {largest} parameters) "
            f"but memory_budget is {budget / 2**20:.1f} MiB; raise memory_budget or use blocks=<group size>"
        )
    return result


class BlockDiagonalSystem(System):
    """Σ_b A_b on the diagonal; solves are independent per block.

    ``batched``: blocks of equal size are solved together, one batched Cholesky per size (chosen on the GPU,
    where one launch for hundreds of small blocks beats hundreds of launches)."""

    form = "block_diagonal"

    def __init__(
        self,
        n: int,
        alpha: float,
        dtype: torch.dtype,
        device: torch.device,
        accumulate_dtype: torch.dtype | None = None,
        *,
        blocks: list[torch.Tensor],
        batched: bool = False,
    ) -> None:
        self.batched = batched
        self.alpha = alpha
        self.dtype = dtype
        self.acc_dtype = accumulate_dtype or dtype
        self.device = device
        self.n = n
        self.blocks = [b.to(device) for b in blocks]
        # A block of consecutive indices is a cheap column slice of the rows; others need a gather.
        self._slices = [
            slice(int(b[0]), int(b[-1]) + 1) if int(b[-1]) - int(b[0]) + 1 == b.numel() else None for b in blocks
        ]
        self.A = [torch.zeros(len(b), len(b), dtype=self.acc_dtype, device=device) for b in blocks]
        self._g = [torch.zeros(len(b), dtype=self.acc_dtype, device=device) for b in blocks]
        self.g = torch.zeros(n, dtype=dtype, device=device)
        self.d: torch.Tensor | None = None

    def _cols(self, rows: torch.Tensor, i: int) -> torch.Tensor:
        s = self._slices[i]
        return rows[:, s] if s is not None else rows.index_select(1, self.blocks[i])

    @classmethod
    def footprint(cls, problem: Problem, precision: Precision, blocks: list[torch.Tensor] | None = None) -> Footprint:
        if blocks is None:
            raise ValueError("the block-diagonal footprint needs the block partition")
        largest = max(int(b.numel()) for b in blocks)
        return Footprint(sum(int(b.numel()) ** 2 for b in blocks) * precision.bytes_per_entry(largest),
                         problem.parameters, {"largest_block": largest})

    def add(self, rows: torch.Tensor | FactoredRows, rho: torch.Tensor) -> None:
        assert isinstance(rows, torch.Tensor)
        rows = rows.to(self.acc_dtype)
        rho = rho.to(self.acc_dtype)
        for i in range(len(self.blocks)):
            ops.jtj_accumulate_(self.A[i], self._cols(rows, i), rho, self._g[i], alpha=self.alpha)

    def reduce(self, comm: Any) -> None:
        """Sums every block and its gradient over the ranks in one all-reduce."""
        if not comm.active:
            return
        packed = torch.cat([t.reshape(-1) for t in self.A] + self._g)
        comm.sum_(packed)
        offset = 0
        for t in self.A + self._g:
            t.copy_(packed[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def finalize(self) -> None:
        self.A = [a.to(self.dtype) for a in self.A]
        for b, gb in zip(self.blocks, self._g):
            self.g[b] = gb.to(self.dtype)

    def diagonal(self) -> torch.Tensor:
        diag = torch.empty(self.n, dtype=self.dtype, device=self.device)
        for b, a in zip(self.blocks, self.A):
            diag[b] = a.diagonal()
        return diag

    def solve(self, lam: float, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x with (A_b + λ diag d_b) x_b = rhs_b for every block.

        On the GPU, blocks of equal size are solved together (one batched Cholesky per size: unit blocks of a
        layer all have the same size, and one launch for hundreds of small blocks beats hundreds of launches);
        on the CPU each block goes through ``damped_cholesky_solve`` (LAPACK per block either way).
        """
        assert self.d is not None
        if self.batched:
            return self.solve_batched(lam, rhs)
        x = torch.empty_like(rhs)
        ok = True
        for b, a in zip(self.blocks, self.A):
            xb, info = ops.damped_cholesky_solve(a, self.d[b].to(a.dtype), lam, rhs[b].to(a.dtype))
            ok &= int(info) == 0
            x[b] = xb.to(x.dtype)
        return x, ok and bool(torch.isfinite(x).all())

    def size_groups(self) -> dict[int, list[int]]:
        """Block size -> indices of the blocks of that size."""
        groups: dict[int, list[int]] = {}
        for i, b in enumerate(self.blocks):
            groups.setdefault(int(b.numel()), []).append(i)
        return groups

    def solve_batched(self, lam: float, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The same solves, one batched ``cholesky_ex`` + ``cholesky_solve`` per group of equal-sized blocks.

        The damped stack is the group's one workspace; the blocks themselves are not modified, and a block that
        is not positive definite reports through ``info`` (no exception, no host sync until the final check).
        """
        assert self.d is not None
        x = torch.empty_like(rhs)
        failed = torch.zeros((), dtype=torch.int32, device=self.device)
        for members in self.size_groups().values():
            index = torch.stack([self.blocks[i] for i in members])  # [k, b]
            damped = torch.stack([self.A[i] for i in members])
            damped.diagonal(dim1=1, dim2=2).add_(lam * self.d[index].to(damped.dtype))
            factor, info = torch.linalg.cholesky_ex(damped)
            xs = torch.cholesky_solve(rhs[index].to(damped.dtype).unsqueeze(2), factor).squeeze(2)
            x[index] = xs.to(x.dtype)
            failed = failed + (info != 0).sum(dtype=torch.int32)
        return x, int(failed) == 0 and bool(torch.isfinite(x).all())

    def quadratic(self, s: torch.Tensor) -> float:
        return float(sum(float(s[b].to(a.dtype) @ (a @ s[b].to(a.dtype))) for b, a in zip(self.blocks, self.A)))

    def memory_bytes(self) -> int:
        return sum(a.numel() * a.element_size() for a in self.A)
