"""The damped LM system in its two forms, behind one interface.

* :class:`PrimalSystem` holds A = α 𝒥ᵀ𝒥 (n × n) and g = α 𝒥ᵀρ, built by streaming row chunks through
  ``jtj_accumulate_``; a solve is ``damped_cholesky_solve`` (A is never modified, so retries with a larger λ
  reuse it).
* :class:`DualSystem` keeps the m < n rows and solves in row space (ALGORITHM.md §3.5): with
  K = 𝒥 diag(d)⁻¹ 𝒥ᵀ (m × m),

      δ = −diag(d)⁻¹ 𝒥ᵀ (K + λ/α · I)⁻¹ ρ,

  which equals the primal step exactly, max-diagonal damping included (α = 1/N for the mean loss).

Both accept a gradient from elsewhere (:meth:`set_gradient`): subsampled curvature (ALGORITHM.md §9 item 6)
builds A from a part of the batch and takes g from all of it. The dual form then needs the general Woodbury
identity, (A + λD)⁻¹ v = λ⁻¹ [D⁻¹v − D⁻¹𝒥ᵀ (K + λ/α · I)⁻¹ 𝒥 D⁻¹ v], because g is no longer α 𝒥ᵀρ.
"""

from __future__ import annotations

import torch

from .. import ops


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
        self.dtype = dtype  # of the m x m factorisation
        self.acc_dtype = accumulate_dtype or dtype  # of the rows and of K's accumulation
        self.device = device
        self._rows: list[torch.Tensor] = []
        self._rho: list[torch.Tensor] = []
        self.J = torch.empty(0, n, dtype=self.acc_dtype, device=device)
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

    def finalize(self) -> None:
        self.J = self._rows[0] if len(self._rows) == 1 else torch.cat(self._rows)
        self.rho = torch.cat(self._rho)
        self._rows, self._rho = [], []
        self.g = self.alpha * (self.J.T @ self.rho.to(self.acc_dtype)).to(self.dtype)

    def set_gradient(self, g: torch.Tensor) -> None:
        """Replaces g = α 𝒥ᵀρ with a gradient computed elsewhere; steps then use the general Woodbury solve."""
        self.g = g.to(self.dtype)
        self._external_gradient = True

    def diagonal(self) -> torch.Tensor:
        return (self.alpha * (self.J * self.J).sum(dim=0)).to(self.dtype)  # column squared norms

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
        assert self.K is not None and self.d is not None
        y, ok = self._solve_gram(lam, rho_like)
        x = (self.J.T @ y.to(self.acc_dtype)).to(self.dtype) / self.d
        return x, ok and bool(torch.isfinite(x).all())

    def solve(self, lam: float, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x = (A + λ diag d)⁻¹ rhs for any rhs ∈ ℝⁿ (the general Woodbury identity of the module docstring)."""
        assert self.K is not None and self.d is not None
        scaled = rhs.to(self.dtype) / self.d  # D⁻¹ v
        y, ok = self._solve_gram(lam, (self.J @ scaled.to(self.acc_dtype)).to(self.dtype))
        x = (scaled - (self.J.T @ y.to(self.acc_dtype)).to(self.dtype) / self.d) / lam
        return x, ok and bool(torch.isfinite(x).all())

    def lm_step(self, lam: float, keep_factor: bool = False) -> tuple[torch.Tensor, bool]:
        self._factor = None
        if keep_factor:
            assert self.K is not None
            ones = torch.ones(self.K.shape[0], dtype=self.dtype, device=self.device)
            U, info = ops.damped_cholesky_factor(self.K, ones, lam / self.alpha)
            if int(info) != 0:
                return torch.zeros_like(self.g), False
            self._factor = (lam, U)
        if self._external_gradient:
            return self.solve(lam, -self.g)
        x, ok = self.solve_rows(lam, self.rho)
        return -x, ok

    def quadratic(self, s: torch.Tensor) -> float:
        """sᵀ A s = α ‖𝒥 s‖²."""
        return float(self.alpha * (self.J @ s.to(self.acc_dtype)).double().pow(2).sum())
