"""The dual form: the m < n rows are kept and the step is solved in row space (docs/algorithm.md, "Solves").

With K = 𝒥 diag(d)⁻¹ 𝒥ᵀ (m × m),

    δ = −diag(d)⁻¹ 𝒥ᵀ (K + λ/α · I)⁻¹ ρ,

which equals the primal step exactly, max-diagonal damping included (α = 1/N for the mean loss). When g comes
from elsewhere (subsampled curvature builds A from part of the batch and g from all of it), g is no longer
α𝒥ᵀρ and the general Woodbury identity is used:
(A + λD)⁻¹ v = λ⁻¹ [D⁻¹v − D⁻¹𝒥ᵀ (K + λ/α · I)⁻¹ 𝒥 D⁻¹ v].

* :class:`DualSystem` forms K from explicit rows and factors it.
* :class:`FactoredDualSystem` keeps the rows of Linear layers as factors and solves (K + λ/α I) y = v by
  preconditioned conjugate gradients with the exact K (solve/pcg.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import ops
from ..types.rows import DenseRows, FactoredRows, RowOperator
from .pcg import RankOnePreconditioner, preconditioned_cg
from .system import Footprint, Precision, Problem, System


class DualSystem(System):
    """The rows themselves (m × n, m < n) and a solve in row space, K formed and factored."""

    form = "dual"
    keeps_rows = True

    def __init__(self, n: int, alpha: float, dtype: torch.dtype, device: torch.device,
                 accumulate_dtype: torch.dtype | None = None) -> None:
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
        self.d = None
        self._factor: tuple[float, torch.Tensor] | None = None  # (λ, U) of K + λ/α I
        self._external_gradient = False  # g does not come from these rows (see set_gradient)
        self._diagonal: torch.Tensor | None = None  # diag(A) from the rows, once (the damping and fit's tests ask)

    @classmethod
    def footprint(cls, problem: Problem, precision: Precision) -> Footprint:
        m, n = problem.rows, problem.parameters
        # K, and the rows with their scaled copy
        return Footprint(m * m * precision.bytes_per_entry(m) + m * n * 2 * precision.accumulate_bytes, n)

    def add(self, rows: torch.Tensor | FactoredRows, rho: torch.Tensor) -> None:
        self._rows.append(rows.to(self.acc_dtype))
        self._rho.append(rho.to(self.dtype))

    def reduce(self, comm: Any) -> None:
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
        """Replaces g = α𝒥ᵀρ with a gradient computed elsewhere; steps then use the general Woodbury solve."""
        self.g = g.to(self.dtype)
        self._external_gradient = True

    def diagonal(self) -> torch.Tensor:
        if self._diagonal is None:  # (the rows are fixed once finalized)
            self._diagonal = (self.alpha * self.rows.column_sq_norms()).to(self.dtype)
        return self._diagonal

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

    def solve_rows(self, lam: float, row_rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x = (A + λ diag d)⁻¹ α𝒥ᵀ r through the m × m system (reusing a kept factor at this λ)."""
        assert self.d is not None
        y, ok = self._solve_gram(lam, row_rhs.to(self.dtype))  # the rows may be in the model's dtype
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

    def scaled_step_norm(self, lam: float) -> float | None:
        """As the base class, keeping y = (K + λ/α I)⁻¹ρ of the step δ = −D⁻²𝒥ᵀy for the slope. (The norm itself is
        taken of the n-vector: yᵀKy in row space loses digits as κ(K) = κ(J)² grows.)"""
        if self.K is None or self._external_gradient:
            return super().scaled_step_norm(lam)
        assert self.d is not None
        self._factor = None
        if not self._keep_factor(lam):
            return None
        y, ok = self._solve_gram(lam, self.rho)
        scaled_step = self.rows.rmatvec(y) * self.d.rsqrt()  # (= −Dδ)
        if not (ok and bool(torch.isfinite(scaled_step).all())):
            return None
        self._row_step = (lam, y)
        return float(torch.linalg.vector_norm(scaled_step, dtype=torch.float64))

    def scaled_step_slope(self, lam: float) -> float:
        """In row space, without the two n-column products of the general solve: with D²δ = −𝒥ᵀy and A = α𝒥ᵀ𝒥,
        (D²δ)ᵀ(A + λD²)⁻¹(D²δ) = α⁻¹ (Ky)ᵀ(K + λ/α I)⁻¹y (push-through identity), and Ky = ρ − (λ/α)y."""
        if self.K is None or self._external_gradient:
            return super().scaled_step_slope(lam)
        at, y = self._row_step
        if at != lam:
            raise RuntimeError("scaled_step_slope: call scaled_step_norm at the same λ first")
        if lam == 0.0:  # (A has rank ≤ m < n: singular, so the Gauss-Newton step gives no lower bound on λ, as
            return math.nan  # in MINPACK's lmpar for a rank-deficient J)
        z, ok = self._solve_gram(lam, y)
        Ky = self.rho.double() - (lam / self.alpha) * y.double()
        return float(Ky @ z.double()) / self.alpha if ok else math.nan


class FactoredDualSystem(DualSystem):
    """The dual form for networks of Linear layers: the rows stay factored (types/rows.py) and the m × m
    system is solved by conjugate gradients with the exact K, preconditioned by a Hadamard-product Gram.

    The same step as :class:`DualSystem` up to the CG tolerance (a relative residual of ``tol`` in the row-space
    system, in float64 by default), at m² (out + in) per layer to set up instead of m² n; it never holds 𝒥.
    A CG run that does not converge counts as a failed factorisation (λ goes up, which also speeds CG up)."""

    takes_factors = True
    #: m × m buffers are kept in the caller's workspace between steps up to this many bytes in all.
    WORKSPACE_MAX_BYTES = 64 * 2**20

    def __init__(self, *args: Any, tol: float | None = None, max_iter: int = 200,
                 workspace: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # None: below the rounding of a K formed in the rows' dtype, which the Cholesky path would factor
        self.tol = tol if tol is not None else (1e-12 if self.acc_dtype == torch.float64 else 1e-10)
        self.max_iter = max_iter
        self.workspace = workspace
        self._preconditioner: RankOnePreconditioner | None = None
        self.cg_iterations: list[int] = []  # of every solve since set_damping (for the step result and tests)

    @classmethod
    def footprint(cls, problem: Problem, precision: Precision) -> Footprint:
        m, width, elt = problem.rows, problem.factor_width or 0, precision.accumulate_bytes
        # K̃, its two Gram buffers and its factor (plus a float64 copy and factor should the float32 one fail),
        # and the per-layer factors of the rows instead of the rows
        return Footprint(m * m * (4 * elt + 16) + m * width * 2 * elt, width)

    def add(self, rows: torch.Tensor | FactoredRows, rho: torch.Tensor) -> None:
        self._rows.append(rows)  # converted once, after stacking
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

    def statistics(self) -> dict[str, Any]:
        return {"cg_iterations": sum(self.cg_iterations)}
