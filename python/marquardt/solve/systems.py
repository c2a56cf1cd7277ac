"""The damped LM system in its two forms, behind one interface.

* :class:`PrimalSystem` holds A = α 𝒥ᵀ𝒥 (n × n) and g = α 𝒥ᵀρ, built by streaming row chunks through
  ``jtj_accumulate_``; a solve is ``damped_cholesky_solve`` (A is never modified, so retries with a larger λ
  reuse it).
* :class:`DualSystem` keeps the m < n rows and solves in row space (ALGORITHM.md §3.5): with
  K = 𝒥 diag(d)⁻¹ 𝒥ᵀ (m × m),

      δ = −diag(d)⁻¹ 𝒥ᵀ (K + λ/α · I)⁻¹ ρ,

  which equals the primal step exactly, max-diagonal damping included (α = 1/N for the mean loss).
* :class:`FactoredDualSystem` is the dual form for networks of Linear layers: the rows stay factored per
  layer and the m × m system is solved by preconditioned conjugate gradients (solve/pcg.py).

Each accepts a gradient from elsewhere (:meth:`set_gradient`): subsampled curvature (ALGORITHM.md §9 item 6)
builds A from a part of the batch and takes g from all of it. The dual form then needs the general Woodbury
identity, (A + λD)⁻¹ v = λ⁻¹ [D⁻¹v − D⁻¹𝒥ᵀ (K + λ/α · I)⁻¹ 𝒥 D⁻¹ v], because g is no longer α 𝒥ᵀρ.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .. import ops
from .factored import FactoredRows
from .kronecker import accumulate_gram_
from .pcg import RankOnePreconditioner, preconditioned_cg


class PrimalSystem:
    """A and g in parameter space (n × n)."""

    form = "primal"

    def __init__(
        self,
        n: int,
        alpha: float,
        dtype: torch.dtype,
        device: torch.device,
        accumulate_dtype: torch.dtype | None = None,
    ) -> None:
        self.alpha = alpha
        self.dtype = dtype
        acc = accumulate_dtype or dtype
        # Accumulation may run in a cheaper dtype (float32 rows: half the time and memory traffic); the
        # factorisation always runs in `dtype`.
        self.A = torch.zeros(n, n, dtype=acc, device=device)
        self.g = torch.zeros(n, dtype=acc, device=device)
        self.d: torch.Tensor | None = None
        self._factor: tuple[float, torch.Tensor] | None = None  # (λ, U) kept for a second right-hand side

    def add_rows(self, rows: torch.Tensor, rho: torch.Tensor) -> None:
        ops.jtj_accumulate_(self.A, rows.to(self.A.dtype), rho.to(self.A.dtype), self.g, alpha=self.alpha)

    def add_factors(self, rows: FactoredRows, rho: torch.Tensor) -> None:
        """The rows of Linear layers as factors: large weights' diagonal blocks by symmetric Kronecker products
        (solve/kronecker.py), the rest from the explicit rows."""
        accumulate_gram_(self.A, self.g, rows, rho, self.alpha)

    def reduce(self, comm) -> None:
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

    def set_gradient(self, g: torch.Tensor) -> None:
        """Replaces g = α 𝒥ᵀρ with a gradient computed elsewhere (subsampled curvature)."""
        self.g = g.to(self.dtype)

    def update_max_diagonal(self, d: torch.Tensor, floor: float) -> torch.Tensor:
        if d.dtype == self.A.dtype:
            return ops.max_diag_update_(d, self.A, floor)
        d.copy_(torch.maximum(d, self.A.diagonal().to(d.dtype)).clamp_min(floor))
        return d

    def set_damping(self, d: torch.Tensor) -> None:
        self.d = d

    def solve(self, lam: float, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x with (A + λ diag d) x = rhs, and whether the factorisation succeeded.

        Reuses the factor that :meth:`lm_step` kept for this λ (the geodesic correction's second solve).
        """
        assert self.d is not None
        if self._factor is not None and self._factor[0] == lam:
            x = torch.cholesky_solve(rhs.unsqueeze(1), self._factor[1], upper=True).squeeze(1)
            return x, bool(torch.isfinite(x).all())
        x, info = ops.damped_cholesky_solve(self.A, self.d, lam, rhs)
        ok = int(info) == 0 and bool(torch.isfinite(x).all())
        return x, ok

    def lm_step(self, lam: float, keep_factor: bool = False) -> tuple[torch.Tensor, bool]:
        """δ_LM = −(A + λ diag d)⁻¹ g; with keep_factor the factor stays for further solves at this λ."""
        self._factor = None
        if keep_factor:
            assert self.d is not None
            U, info = ops.damped_cholesky_factor(self.A, self.d, lam)
            if int(info) != 0:
                return torch.zeros_like(self.g), False
            self._factor = (lam, U)
        return self.solve(lam, -self.g)

    def quadratic(self, s: torch.Tensor) -> float:
        """sᵀ A s."""
        return float(s @ (self.A @ s))


class RowOperator(Protocol):
    """What a dual solve needs of the rows 𝒥: products with 𝒥 and 𝒥ᵀ, and diag(𝒥ᵀ𝒥)."""

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...
    def rmatvec(self, y: torch.Tensor) -> torch.Tensor: ...
    def column_sq_norms(self) -> torch.Tensor: ...


class DenseRows:
    """Explicit rows 𝒥 (m × n, stored in the accumulation dtype), with the products a dual solve needs; vectors
    keep their own dtype. :class:`~marquardt.solve.factored.FactoredRows` is the same interface without 𝒥."""

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


class DualSystem:
    """The rows themselves (m × n, m < n) and a solve in row space."""

    form = "dual"

    def __init__(
        self,
        n: int,
        alpha: float,
        dtype: torch.dtype,
        device: torch.device,
        accumulate_dtype: torch.dtype | None = None,
    ) -> None:
        self.alpha = alpha
        self.n = n
        self.dtype = dtype  # of the m x m factorisation and of the row-space vectors
        self.acc_dtype = accumulate_dtype or dtype  # of the rows and of K's accumulation
        self.device = device
        self._rows: list = []
        self._rho: list[torch.Tensor] = []
        self._row_operator: RowOperator | None = None  # set by finalize
        self.rho = torch.empty(0, dtype=dtype, device=device)
        self.g = torch.zeros(n, dtype=dtype, device=device)
        self.K: torch.Tensor | None = None
        self.d: torch.Tensor | None = None
        self._factor: tuple[float, torch.Tensor] | None = None  # (λ, U) of K + λ/α I
        self._external_gradient = False  # g does not come from these rows (see set_gradient)

    def add_rows(self, rows: torch.Tensor, rho: torch.Tensor) -> None:
        self._rows.append(rows.to(self.acc_dtype))
        self._rho.append(rho.to(self.dtype))

    def reduce(self, comm) -> None:
        if comm.active:
            raise ValueError("solver='dual' keeps every rank's rows and cannot be summed across ranks; use "
                             "solver='primal' or 'block_diagonal' with torch.distributed")

    def _stack_rows(self) -> RowOperator:
        return DenseRows(self._rows[0] if len(self._rows) == 1 else torch.cat(self._rows))

    @property
    def rows(self) -> RowOperator:
        """The row operator 𝒥 (DenseRows here, FactoredRows in the factored subclass)."""
        if self._row_operator is None:
            raise RuntimeError("DualSystem: finalize() must run before the rows are used")
        return self._row_operator

    def finalize(self) -> None:
        self._row_operator = self._stack_rows()
        self.rho = torch.cat(self._rho)
        self._rows, self._rho = [], []
        self.g = self.alpha * self.rows.rmatvec(self.rho)

    @property
    def J(self) -> torch.Tensor:
        """The explicit rows (dense form only)."""
        rows = self.rows
        assert isinstance(rows, DenseRows)
        return rows.J

    def set_gradient(self, g: torch.Tensor) -> None:
        """Replaces g = α 𝒥ᵀρ with a gradient computed elsewhere; steps then use the general Woodbury solve."""
        self.g = g.to(self.dtype)
        self._external_gradient = True

    def diagonal(self) -> torch.Tensor:
        return (self.alpha * self.rows.column_sq_norms()).to(self.dtype)

    def update_max_diagonal(self, d: torch.Tensor, floor: float) -> torch.Tensor:
        d.copy_(torch.maximum(d, self.diagonal().to(d.dtype)).clamp_min(floor))
        return d

    def set_damping(self, d: torch.Tensor) -> None:
        self.d = d
        scaled = self.J * d.rsqrt().to(self.acc_dtype)  # 𝒥 diag(d)^(-1/2)
        m = self.J.shape[0]
        K = torch.zeros(m, m, dtype=self.acc_dtype, device=self.device)
        ops.jtj_accumulate_(K, scaled.T)  # K = (𝒥 D^-1/2)(𝒥 D^-1/2)ᵀ, symmetric half only
        self.K = K.to(self.dtype)

    def _keep_factor(self, lam: float) -> bool:
        """Factors K + λ/α I once for the solves that follow at this λ; False if it is not positive definite."""
        assert self.K is not None
        ones = torch.ones(self.K.shape[0], dtype=self.dtype, device=self.device)
        U, info = ops.damped_cholesky_factor(self.K, ones, lam / self.alpha)
        if int(info) != 0:
            return False
        self._factor = (lam, U)
        return True

    def _solve_gram(self, lam: float, v: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(K + λ/α · I)⁻¹ v in row space, reusing a factor kept for this λ."""
        assert self.K is not None
        if self._factor is not None and self._factor[0] == lam:
            y = torch.cholesky_solve(v.unsqueeze(1), self._factor[1], upper=True).squeeze(1)
            return y, True
        ones = torch.ones(self.K.shape[0], dtype=self.dtype, device=self.device)
        y, info = ops.damped_cholesky_solve(self.K, ones, lam / self.alpha, v)
        return y, int(info) == 0

    def solve_rows(self, lam: float, rho_like: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x = (A + λ diag d)⁻¹ α 𝒥ᵀ ρ_like, through the m × m system (reusing a kept factor at this λ)."""
        assert self.d is not None
        y, ok = self._solve_gram(lam, rho_like)
        x = self.rows.rmatvec(y) / self.d
        return x, ok and bool(torch.isfinite(x).all())

    def solve(self, lam: float, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x = (A + λ diag d)⁻¹ rhs for any rhs ∈ ℝⁿ (the general Woodbury identity of the module docstring)."""
        assert self.d is not None
        scaled = rhs.to(self.dtype) / self.d  # D⁻¹ v
        y, ok = self._solve_gram(lam, self.rows.matvec(scaled))
        x = (scaled - self.rows.rmatvec(y) / self.d) / lam
        return x, ok and bool(torch.isfinite(x).all())

    def lm_step(self, lam: float, keep_factor: bool = False) -> tuple[torch.Tensor, bool]:
        self._factor = None
        if keep_factor and not self._keep_factor(lam):
            return torch.zeros_like(self.g), False
        if self._external_gradient:
            return self.solve(lam, -self.g)
        x, ok = self.solve_rows(lam, self.rho)
        return -x, ok

    def quadratic(self, s: torch.Tensor) -> float:
        """sᵀ A s = α ‖𝒥 s‖²."""
        return float(self.alpha * self.rows.matvec(s).double().pow(2).sum())


class FactoredDualSystem(DualSystem):
    """The dual form for networks of Linear layers: the rows stay factored (solve/factored.py) and the m × m
    system is solved by conjugate gradients with the exact K, preconditioned by a Hadamard-product Gram.

    The same step as :class:`DualSystem` up to the CG tolerance (a relative residual of ``tol`` in the row-space
    system, in float64 by default), at m² (out + in) per layer to set up instead of m² n; it never holds 𝒥.
    A CG run that does not converge counts as a failed factorisation (λ goes up, which also speeds CG up)."""

    #: m × m buffers are kept in the caller's workspace between steps up to this many bytes in all.
    WORKSPACE_MAX_BYTES = 64 * 2**20

    def __init__(self, *args, tol: float | None = None, max_iter: int = 200,
                 workspace: dict[str, torch.Tensor] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # None: below the rounding of a K formed in the rows' dtype, which the Cholesky path would factor
        self.tol = tol if tol is not None else (1e-12 if self.acc_dtype == torch.float64 else 1e-10)
        self.max_iter = max_iter
        self.workspace = workspace
        self._preconditioner: RankOnePreconditioner | None = None
        self.cg_iterations: list[int] = []  # of every solve since set_damping (for the step result and tests)

    def add_factors(self, rows: FactoredRows, rho: torch.Tensor) -> None:
        self._rows.append(rows)
        self._rho.append(rho.to(self.dtype))

    def _stack_rows(self) -> FactoredRows:
        return FactoredRows.cat(self._rows).to(self.acc_dtype)  # products in the rows' dtype, as DenseRows

    @property
    def factored_rows(self) -> FactoredRows:
        rows = self.rows
        assert isinstance(rows, FactoredRows)
        return rows

    @property
    def J(self) -> torch.Tensor:
        raise AttributeError("the factored dual system has no explicit rows")

    def set_damping(self, d: torch.Tensor) -> None:
        self.d = d
        self._d_inv = 1.0 / d
        m = self.factored_rows.m
        buffer_bytes = 3 * m * m * torch.finfo(self.acc_dtype).bits // 8
        keep = self.workspace is not None and buffer_bytes <= self.WORKSPACE_MAX_BYTES
        K_approx = self.factored_rows.approximate_gram(self._d_inv, self.acc_dtype, self.workspace if keep else None)
        self._preconditioner = RankOnePreconditioner(K_approx)
        self.cg_iterations = []

    def _keep_factor(self, lam: float) -> bool:
        assert self._preconditioner is not None
        return self._preconditioner.factor(lam / self.alpha) is not None

    def _solve_gram(self, lam: float, v: torch.Tensor) -> tuple[torch.Tensor, bool]:
        assert self._preconditioner is not None
        mu = lam / self.alpha
        if self._preconditioner.factor(mu) is None:
            return torch.zeros_like(v), False

        def apply(p: torch.Tensor) -> torch.Tensor:  # (K + μI) p with K = 𝒥 D⁻¹ 𝒥ᵀ through the factors
            return self.rows.matvec(self._d_inv * self.rows.rmatvec(p)) + mu * p

        # In float32 (row spaces above solve_float64_max) no residual much below the rounding is meaningful,
        # and asking for one could only run CG to max_iter and fail the step.
        tol = max(self.tol, 4 * torch.finfo(v.dtype).eps)
        preconditioner = self._preconditioner
        result = preconditioned_cg(apply, lambda r: preconditioner.apply(mu, r), v, tol, self.max_iter)
        self.cg_iterations.append(result.iterations)
        return result.x, result.converged
