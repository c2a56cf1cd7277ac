"""The primal form: A = α𝒥ᵀ𝒥 (n × n) and g = α𝒥ᵀρ in parameter space, solved by a damped Cholesky factorisation.

Rows are streamed into A by ``jtj_accumulate_`` (one triangle, then mirrored); a solve is
``damped_cholesky_solve``, which never modifies A, so retries with a larger λ reuse it.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import ops
from ..types.rows import FactoredRows
from .kronecker import accumulate_gram_, kronecker_pays, kronecker_workspace
from .system import Footprint, Precision, Problem, System


class PrimalSystem(System):
    """A and g in parameter space (n × n)."""

    form = "primal"

    def __init__(self, n: int, alpha: float, dtype: torch.dtype, device: torch.device,
                 accumulate_dtype: torch.dtype | None = None) -> None:
        self.alpha = alpha
        self.dtype = dtype
        acc = accumulate_dtype or dtype
        # Accumulation may run in a cheaper dtype (float32 rows: half the time and memory traffic); the
        # factorisation always runs in `dtype`.
        self.A = torch.zeros(n, n, dtype=acc, device=device)
        self.g = torch.zeros(n, dtype=acc, device=device)
        self.d = None
        self._factor: tuple[float, torch.Tensor] | None = None  # (λ, U) kept for a second right-hand side

    @classmethod
    def footprint(cls, problem: Problem, precision: Precision) -> Footprint:
        n = problem.parameters
        return Footprint(n * n * precision.bytes_per_entry(n), n)

    def add(self, rows: torch.Tensor | FactoredRows, rho: torch.Tensor) -> None:
        assert isinstance(rows, torch.Tensor)
        ops.jtj_accumulate_(self.A, rows.to(self.A.dtype), rho.to(self.A.dtype), self.g, alpha=self.alpha)

    def reduce(self, comm: Any) -> None:
        """Sums A (its upper triangle: half the bytes) and g over the ranks, then mirrors A again."""
        if not comm.active:
            return
        n = self.A.shape[0]
        rows, cols = torch.triu_indices(n, n, device=self.A.device)
        packed = torch.cat([self.A[rows, cols], self.g])
        comm.sum_(packed)
        self.A[rows, cols] = packed[: rows.numel()]
        self.A.T[rows, cols] = packed[: rows.numel()]
        self.g.copy_(packed[rows.numel() :])

    def finalize(self) -> None:
        self.A = self.A.to(self.dtype)
        self.g = self.g.to(self.dtype)

    def diagonal(self) -> torch.Tensor:
        return self.A.diagonal()

    def solve(self, lam: float, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Reuses the factor that :meth:`lm_step` kept for this λ (the geodesic correction's second solve)."""
        assert self.d is not None
        if self._factor is not None and self._factor[0] == lam:
            x = torch.cholesky_solve(rhs.unsqueeze(1), self._factor[1], upper=True).squeeze(1)
            return x, bool(torch.isfinite(x).all())
        x, info = ops.damped_cholesky_solve(self.A, self.d, lam, rhs)
        return x, int(info) == 0 and bool(torch.isfinite(x).all())

    def set_damping(self, d: torch.Tensor) -> None:
        super().set_damping(d)
        self._factor = None  # (a factor of A + λ diag d is a factor for this d only)

    def lm_step(self, lam: float, keep_factor: bool = False) -> tuple[torch.Tensor, bool]:
        if self._factor is not None and self._factor[0] == lam:  # (the trust region's choice of λ factored it)
            return self.solve(lam, -self.g)
        self._factor = None
        if keep_factor:
            assert self.d is not None
            U, info = ops.damped_cholesky_factor(self.A, self.d, lam)
            if int(info) != 0:
                return torch.zeros_like(self.g), False
            self._factor = (lam, U)
        return self.solve(lam, -self.g)

    def quadratic(self, s: torch.Tensor) -> float:
        return float(s @ (self.A @ s))


class KroneckerPrimalSystem(PrimalSystem):
    """The primal form with the rows of Linear layers as factors: each large weight's diagonal block of A from
    symmetric Kronecker products (solve/kronecker.py), about half its flops, the rest from the explicit rows."""

    takes_factors = True

    @classmethod
    def footprint(cls, problem: Problem, precision: Precision) -> Footprint:
        plain = PrimalSystem.footprint(problem, precision)
        system_bytes, row_width = plain.system_bytes, plain.row_width
        for (out, inp), trains in zip(problem.linear_shapes, problem.trainable_weights):
            if trains and kronecker_pays(out, inp):
                fixed, per_row = kronecker_workspace(out, inp)
                system_bytes += fixed * precision.accumulate_bytes
                row_width += per_row
        return Footprint(system_bytes, row_width)

    def add(self, rows: torch.Tensor | FactoredRows, rho: torch.Tensor) -> None:
        assert isinstance(rows, FactoredRows)
        accumulate_gram_(self.A, self.g, rows, rho, self.alpha)
