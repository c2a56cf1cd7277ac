r"""The QR form: the damped step as a linear least-squares problem, solved without ever forming 𝒥ᵀ𝒥.

The LM step δ solves (A + λD²) δ = −g with A = α𝒥ᵀ𝒥, g = α𝒥ᵀρ and D² = diag(d). That is the normal equation
of the stacked least-squares problem

.. math::

    \min_\delta \left\| \begin{bmatrix} \sqrt\alpha\,\mathcal{J} \\ \sqrt\lambda\,D \end{bmatrix}\delta
    + \begin{bmatrix} \sqrt\alpha\,\rho \\ 0 \end{bmatrix} \right\|,

and solving it by orthogonal factorisation loses accuracy in proportion to κ(𝒥), where the Cholesky factorisation of
the normal equations loses it in proportion to κ(𝒥)² (Moré 1978, "The Levenberg-Marquardt algorithm: implementation
and theory", §3; MINPACK's ``qrfac``/``qrsolv``). A curve fit with κ(𝒥) = 1e9 still gets a Gauss-Newton step to
about seven digits here; its normal equations are singular in float64.

How: once per step, 𝒥 = Q₀R₀ (Householder, ``torch.linalg.qr``) and c = Q₀ᵀρ. For each λ the rule asks about,
the (k + n) × n matrix [√α R₀; √λ D] = Q_λ R_λ is factored again (O(n³), independent of the number of rows) and
cached, so that

* the LM step is δ = −R_λ⁻¹ Q_λᵀ [√α c; 0];
* any other right-hand side v is solved by R_λᵀR_λ x = v (A + λD² = R_λᵀR_λ), two triangular solves;
* a row-space right-hand side r (the geodesic correction) is solved as a least-squares problem as the step is.

The rows are kept (m × n), so the form is for small n; ``solver='auto'`` picks it for up to
:data:`QR_MAX_PARAMETERS` parameters (:mod:`marquardt.solve.choose`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import ops
from ..types.rows import FactoredRows
from .primal import PrimalSystem
from .system import Footprint, Precision, Problem, System

#: solver='auto' takes the QR form up to this many parameters (and while the rows fit the memory budget)
QR_MAX_PARAMETERS = 64


class QRSystem(System):
    """The rows 𝒥 (m × n) and ρ, solved by orthogonal factorisations (see the module docstring)."""

    form = "qr"
    keeps_rows = True

    def __init__(self, n: int, alpha: float, dtype: torch.dtype, device: torch.device,
                 accumulate_dtype: torch.dtype | None = None) -> None:
        self.alpha = alpha
        self.n = n
        self.dtype = dtype  # the rows are kept and factored in the solve dtype (float64 at these sizes)
        self.device = device
        self._rows: list[torch.Tensor] = []
        self._rho: list[torch.Tensor] = []
        self.J = torch.empty(0, n, dtype=dtype, device=device)
        self.g = torch.zeros(n, dtype=dtype, device=device)
        self.d = None
        self._q0: torch.Tensor | None = None  # Q₀ (m × k) of 𝒥 = Q₀R₀
        self._r0: torch.Tensor | None = None  # R₀ (k × n)
        self._c: torch.Tensor | None = None  # Q₀ᵀρ (k)
        self._rho_full = torch.empty(0, dtype=dtype, device=device)
        self._external_gradient = False
        self._factor: tuple[float, torch.Tensor, torch.Tensor] | None = None  # (λ, Q_λ's top k rows, R_λ)

    @classmethod
    def footprint(cls, problem: Problem, precision: Precision) -> Footprint:
        m, n = problem.rows, problem.parameters
        solve_bytes = torch.finfo(precision.solve_dtype(n)).bits // 8
        # the rows (and a converted copy while they arrive), Q₀, and the (k + n) x n factorisations
        return Footprint(m * n * (2 * solve_bytes + precision.accumulate_bytes) + 6 * n * n * solve_bytes, n)

    def add(self, rows: torch.Tensor | FactoredRows, rho: torch.Tensor) -> None:
        assert isinstance(rows, torch.Tensor)
        self._rows.append(rows.to(self.dtype))
        self._rho.append(rho.to(self.dtype))

    def reduce(self, comm: Any) -> None:
        if comm.active:
            raise ValueError("solver='qr' keeps every rank's rows and cannot be summed across ranks; use "
                             "solver='primal' or 'block_diagonal' with torch.distributed")

    def finalize(self) -> None:
        self.J = self._rows[0] if len(self._rows) == 1 else torch.cat(self._rows)
        rho = torch.cat(self._rho)
        self._rows, self._rho = [], []
        self.g = self.alpha * (self.J.T @ rho)
        self._rho_full = rho
        self._q0 = self._r0 = self._c = None  # (factored at the first solve: a Cholesky system's fallback may never)

    def _orthogonal(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q₀, R₀ and c = Q₀ᵀρ of 𝒥 = Q₀R₀, once per step."""
        if self._q0 is None:
            self._q0, self._r0 = torch.linalg.qr(self.J, mode="reduced")
            self._c = self._q0.T @ self._rho_full
        assert self._r0 is not None and self._c is not None
        return self._q0, self._r0, self._c

    def set_gradient(self, g: torch.Tensor) -> None:
        """Replaces g = α𝒥ᵀρ with a gradient computed elsewhere; steps then solve R_λᵀR_λ δ = −g."""
        self.g = g.to(self.dtype)
        self._external_gradient = True

    def diagonal(self) -> torch.Tensor:
        return self.alpha * self.J.pow(2).sum(0)

    def set_damping(self, d: torch.Tensor) -> None:
        super().set_damping(d.to(self.dtype))
        self._factor = None  # (R_λ depends on d)

    def _factorize(self, lam: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(Q_λ's first k rows, R_λ) of [√α R₀; √λ D], kept for further solves at this λ; None when R_λ is
        singular to working precision (λ = 0 with a rank-deficient 𝒥)."""
        if self._factor is not None and self._factor[0] == lam:
            return self._factor[1], self._factor[2]
        assert self.d is not None
        r0 = self._orthogonal()[1]
        k = r0.shape[0]
        stacked = torch.cat([self.alpha**0.5 * r0, torch.diag((lam * self.d).sqrt())])
        q, r = torch.linalg.qr(stacked, mode="reduced")
        diagonal = r.diagonal().abs()
        scale = float(diagonal.max()) if diagonal.numel() else 0.0
        if not (scale > 0 and torch.isfinite(r).all()) or bool(
                (diagonal <= torch.finfo(self.dtype).eps * self.n * scale).any()):
            self._factor = None
            return None
        self._factor = (lam, q[:k], r)
        return q[:k], r

    def _least_squares(self, lam: float, top: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x minimising ‖[√α𝒥; √λD] x − [√α y; 0]‖ where Q₀ᵀy = ``top``."""
        factor = self._factorize(lam)
        if factor is None:
            return torch.zeros_like(self.g), False
        q_top, r = factor
        x = torch.linalg.solve_triangular(r, (q_top.T @ (self.alpha**0.5 * top)).unsqueeze(1), upper=True).squeeze(1)
        return x, bool(torch.isfinite(x).all())

    def lm_step(self, lam: float, keep_factor: bool = False) -> tuple[torch.Tensor, bool]:
        if self._external_gradient:
            return self.solve(lam, -self.g)
        x, ok = self._least_squares(lam, self._orthogonal()[2])
        return -x, ok

    def solve(self, lam: float, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x = (R_λᵀR_λ)⁻¹ rhs for any rhs ∈ ℝⁿ."""
        factor = self._factorize(lam)
        if factor is None:
            return torch.zeros_like(self.g), False
        r = factor[1]
        y = torch.linalg.solve_triangular(r.T, rhs.to(self.dtype).unsqueeze(1), upper=False)
        x = torch.linalg.solve_triangular(r, y, upper=True).squeeze(1)
        return x, bool(torch.isfinite(x).all())

    def solve_rows(self, lam: float, row_rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x = (A + λ diag d)⁻¹ α𝒥ᵀ r, as the least-squares problem of the step with r in place of −ρ."""
        return self._least_squares(lam, self._orthogonal()[0].T @ row_rhs.to(self.dtype))

    def quadratic(self, s: torch.Tensor) -> float:
        """sᵀ A s = α ‖𝒥 s‖²."""
        return float(self.alpha * (self.J @ s.to(self.dtype)).double().pow(2).sum())


class GuardedPrimalSystem(PrimalSystem):
    """The primal (Cholesky) form that turns to the QR form for the rest of the step when the normal equations
    lose accuracy: the factorisation of A + λD² fails, or its estimated condition number exceeds
    :data:`CONDITION_LIMIT`. ``solver='auto'`` uses it for small problems; :attr:`form` says which ran.

    The estimate is (‖U‖_F ‖U⁻¹‖_F)² of the Cholesky factor U (A + λD² = UᵀU): at least κ₂(A + λD²) and at most
    n² times it, an O(n³) triangular inverse that is cheap at the sizes this system is used for. Past the limit a
    Cholesky step keeps at most about four correct digits in float64.
    """

    #: κ(A + λD²) past which the normal equations are abandoned for the QR form (about 1e-4 relative accuracy)
    CONDITION_LIMIT = 1e12

    def __init__(self, n: int, alpha: float, dtype: torch.dtype, device: torch.device,
                 accumulate_dtype: torch.dtype | None = None) -> None:
        super().__init__(n, alpha, dtype, device, accumulate_dtype)
        self._qr = QRSystem(n, alpha, dtype, device)
        self.form = "primal"
        self._verdict: tuple[torch.Tensor | None, bool] = (None, False)  # (the factor judged, whether it holds)

    @classmethod
    def footprint(cls, problem: Problem, precision: Precision) -> Footprint:
        primal, qr = PrimalSystem.footprint(problem, precision), QRSystem.footprint(problem, precision)
        return Footprint(primal.system_bytes + qr.system_bytes, primal.row_width)

    def add(self, rows: torch.Tensor | FactoredRows, rho: torch.Tensor) -> None:
        super().add(rows, rho)
        self._qr.add(rows, rho)

    def finalize(self) -> None:
        super().finalize()
        self._qr.finalize()

    def set_gradient(self, g: torch.Tensor) -> None:
        super().set_gradient(g)
        self._qr.set_gradient(g)

    def set_damping(self, d: torch.Tensor) -> None:
        super().set_damping(d)
        self._qr.set_damping(d)

    def _cholesky_holds(self, lam: float) -> bool:
        """Factors A + λD² (kept for this λ) and says whether its accuracy is acceptable; False turns to QR. The
        verdict is kept with the factor it judged: the trust region's search solves twice at each λ."""
        if self._factor is not None and self._factor[0] == lam and self._verdict[0] is self._factor[1]:
            return self._verdict[1]
        if self._factor is None or self._factor[0] != lam:
            assert self.d is not None
            U, info = ops.damped_cholesky_factor(self.A, self.d, lam)
            if int(info) != 0:
                return False
            self._factor = (lam, U)
        U = self._factor[1]
        inverse = torch.linalg.solve_triangular(U, torch.eye(U.shape[0], dtype=U.dtype, device=U.device), upper=True)
        estimate = float(torch.linalg.matrix_norm(U) * torch.linalg.matrix_norm(inverse)) ** 2
        holds = math.isfinite(estimate) and estimate <= self.CONDITION_LIMIT
        self._verdict = (U, holds)
        return holds

    def _solves_by_qr(self, lam: float) -> bool:
        """Whether this λ's solves go through the QR form (once it does, for the rest of the step)."""
        if self.form == "primal" and not self._cholesky_holds(lam):
            self.form = "qr"
        return self.form == "qr"

    def lm_step(self, lam: float, keep_factor: bool = False) -> tuple[torch.Tensor, bool]:
        if self._solves_by_qr(lam):
            return self._qr.lm_step(lam, keep_factor)
        return super().lm_step(lam, keep_factor=True)

    def solve(self, lam: float, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if self._solves_by_qr(lam):
            return self._qr.solve(lam, rhs)
        return super().solve(lam, rhs)
