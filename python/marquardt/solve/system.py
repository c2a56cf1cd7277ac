r"""The damped LM system behind one interface: every solver form (primal, dual, block-diagonal) is a
:class:`System`.

A system is filled with chunks of generalized Jacobian rows and residuals (:meth:`System.add`), summed over
the ranks (:meth:`System.reduce`) and finalized; then, for one damping vector d, it solves

.. math::

    (A + \lambda\,\mathrm{diag}(d))\,x = b,\qquad A = \alpha\,\mathcal{J}^\top\mathcal{J},
    \quad g = \alpha\,\mathcal{J}^\top\rho

for any λ the λ rule asks for. Solves return ``(x, ok)``; ``ok`` is False when a factorisation or an iterative
solve fails, and the caller raises λ instead of catching exceptions. A system also says how many bytes it needs
for a problem of a given size (:meth:`System.footprint`), which is how :mod:`marquardt.solve.choose` picks one.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from ..types.rows import FactoredRows


@dataclass(frozen=True)
class Problem:
    """The sizes a solver choice depends on (one step's batch, all ranks).

    ``factor_width`` is Σ (out + in) over the layers when the rows can be kept as per-layer factors (every
    trainable layer a Linear on [batch, features] inputs, the fast Jacobian engine), else None;
    ``linear_shapes`` are then those layers' (out, in) and ``trainable_weights`` whether each weight trains.
    """

    parameters: int
    rows: int
    samples: int
    outputs_per_sample: int
    dtype: torch.dtype
    device: torch.device
    distributed: bool = False
    whole_batch_chunks: bool = False  # a residual callable sees the whole batch at once
    factor_width: int | None = None
    linear_shapes: tuple[tuple[int, int], ...] = ()
    trainable_weights: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Precision:
    """Accumulation dtype, and the factorisation dtype for a system of a given size (float64 up to
    ``float64_max`` unless ``solve`` is fixed)."""

    accumulate: torch.dtype
    solve: torch.dtype | None
    float64_max: int

    def solve_dtype(self, size: int) -> torch.dtype:
        return self.solve or (torch.float64 if size <= self.float64_max else self.accumulate)

    @property
    def accumulate_bytes(self) -> int:
        return torch.finfo(self.accumulate).bits // 8

    def bytes_per_entry(self, size: int) -> int:
        """The accumulated matrix, its converted copy when the dtypes differ, and the factorisation workspace."""
        solve_bytes = torch.finfo(self.solve_dtype(size)).bits // 8
        return 2 * solve_bytes + (self.accumulate_bytes if solve_bytes != self.accumulate_bytes else 0)


@dataclass
class Footprint:
    """Bytes a system holds for the whole step, and numbers per row while a chunk of rows is formed."""

    system_bytes: int
    row_width: int
    detail: dict[str, Any] = field(default_factory=dict)


class System(ABC):
    """One damped LM system (see the module docstring)."""

    #: the name a StepResult reports ('primal', 'dual', 'block_diagonal', 'qr')
    form: str
    #: whether :meth:`add` takes the rows as per-layer factors (FactoredRows) instead of a dense tensor
    takes_factors: bool = False
    #: whether the system keeps the rows, so that α𝒥ᵀr for a row-space r is solved without forming it
    keeps_rows: bool = False

    alpha: float
    dtype: torch.dtype
    g: torch.Tensor
    d: torch.Tensor | None

    @abstractmethod
    def add(self, rows: torch.Tensor | FactoredRows, rho: torch.Tensor) -> None:
        """Fold in a chunk of rows [m, n] (or their factors) and their residuals ρ [m]."""

    def reduce(self, comm: Any) -> None:  # noqa: B027  (a no-op unless the form sums over ranks)
        """Sum the curvature and g over the ranks of ``comm`` (data-parallel)."""

    @abstractmethod
    def finalize(self) -> None:
        """Done adding: convert to the factorisation dtype and form g."""

    @abstractmethod
    def diagonal(self) -> torch.Tensor:
        """diag(A) (n)."""

    def set_gradient(self, g: torch.Tensor) -> None:
        """Replace g = α𝒥ᵀρ with a gradient computed elsewhere (subsampled curvature)."""
        self.g = g.to(self.dtype)

    def set_damping(self, d: torch.Tensor) -> None:
        """The damping vector of this step's solves (in the system's dtype)."""
        self.d = d

    @abstractmethod
    def solve(self, lam: float, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x with (A + λ diag d) x = rhs, and whether the solve succeeded."""

    def lm_step(self, lam: float, keep_factor: bool = False) -> tuple[torch.Tensor, bool]:
        """δ_LM = −(A + λ diag d)⁻¹ g; ``keep_factor`` keeps the factor for further solves at this λ."""
        return self.solve(lam, -self.g)

    def scaled_step_norm(self, lam: float) -> float | None:
        """‖Dδ(λ)‖ (D² = d) of the LM step δ(λ) = −(A + λ diag d)⁻¹ g, keeping the factor at λ for
        :meth:`scaled_step_slope`; None where A + λ diag d is not positive definite. With the slope, all that
        the trust region's search for λ (MINPACK's ``lmpar``) needs of the system."""
        assert self.d is not None
        delta, ok = self.lm_step(lam, keep_factor=True)
        if not ok:
            return None
        self._scaled_step = (lam, delta)
        return float(torch.linalg.vector_norm(delta * self.d.sqrt(), dtype=torch.float64))

    def scaled_step_slope(self, lam: float) -> float:
        """(D²δ)ᵀ(A + λ diag d)⁻¹(D²δ) for the δ(λ) of the last :meth:`scaled_step_norm` at this λ, which is
        −‖Dδ‖ · d‖Dδ‖/dλ (Moré 1978, eq. 5.5); NaN where the solve fails (the dual form: also at λ = 0, where its
        A of rank ≤ m < n is singular)."""
        assert self.d is not None
        at, delta = self._scaled_step
        if at != lam:
            raise RuntimeError("scaled_step_slope: call scaled_step_norm at the same λ first")
        d2delta = self.d * delta
        x, ok = self.solve(lam, d2delta)
        return float(d2delta.double() @ x.double()) if ok else math.nan

    def solve_rows(self, lam: float, row_rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """x = (A + λ diag d)⁻¹ α𝒥ᵀ r for a row-space r of any dtype (only where :attr:`keeps_rows`)."""
        raise NotImplementedError(f"the {self.form} system does not keep its rows")

    @abstractmethod
    def quadratic(self, s: torch.Tensor) -> float:
        """sᵀ A s."""

    def predicted_reduction(self, step: torch.Tensor) -> float:
        """The quadratic model's decrease −gᵀs − ½ sᵀAs for the step s."""
        s = step.to(self.g.dtype)
        return float(-(self.g @ s) - 0.5 * self.quadratic(s))

    def convergence_measures(self, d: torch.Tensor, loss: float) -> tuple[float, float, float]:
        """What fit's tests need besides the step, from diag A and g read once, in one device sync:
        (:meth:`model_reduction_bound`, :meth:`step_bound`, :meth:`gradient_cosine`)."""
        a, g = self.diagonal().double(), self.g.double()
        measures = torch.stack([_model_reduction_bound(a, g, d), _step_bound(a, g), _gradient_cosine(a, g, loss)])
        return tuple(value if math.isfinite(value) else math.inf for value in measures.tolist())  # type: ignore[return-value]

    def model_reduction_bound(self, d: torch.Tensor) -> float:
        """A lower bound on the Gauss-Newton model's largest decrease ½gᵀA⁻¹g: ‖D⁻¹g‖²/(2λ_max(D⁻¹AD⁻¹)), with the
        largest eigenvalue at most the trace Σⱼ Aⱼⱼ/dⱼ (D² = d > 0). fit's ftol test needs it small."""
        return self.convergence_measures(d, 0.0)[0]

    def step_bound(self) -> float:
        """A lower bound on the Gauss-Newton step's length ‖A⁻¹g‖: ‖g‖/λ_max(A) ≥ ‖g‖/Σⱼ Aⱼⱼ. fit's xtol test needs
        it small."""
        return self.convergence_measures(torch.ones_like(self.g), 0.0)[1]

    def gradient_cosine(self, loss: float) -> float:
        """MINPACK's scaled gradient (lmder's gnorm): maxⱼ |gⱼ| / √(2·loss·Aⱼⱼ). For least squares (loss = α½‖r‖²,
        A = αJᵀJ, g = αJᵀr) it is the largest cosine between r and a column of J, whatever the scale of either;
        0 at zero loss, and columns with Aⱼⱼ = 0 do not count. fit's gtol test compares it with gtol."""
        return self.convergence_measures(torch.ones_like(self.g), loss)[2]

    def statistics(self) -> dict[str, Any]:
        """Counters of the step's solves for the StepResult (e.g. CG iterations)."""
        return {}

    @classmethod
    @abstractmethod
    def footprint(cls, problem: Problem, precision: Precision) -> Footprint:
        """Bytes this form needs for ``problem`` (see :class:`Footprint`)."""


def _model_reduction_bound(a: torch.Tensor, g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """‖D⁻¹g‖²/(2 Σⱼ Aⱼⱼ/dⱼ) from diag A, g and d (see System.model_reduction_bound)."""
    d64 = d.double().clamp_min(torch.finfo(torch.float64).tiny)
    return (g**2 / d64).sum() / (2.0 * (a / d64).sum())


def _step_bound(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖g‖/Σⱼ Aⱼⱼ (see System.step_bound)."""
    return torch.linalg.vector_norm(g) / a.sum()


def _gradient_cosine(a: torch.Tensor, g: torch.Tensor, loss: float) -> torch.Tensor:
    """maxⱼ |gⱼ|/√(2·loss·Aⱼⱼ) over the columns with Aⱼⱼ > 0; 0 at zero loss (see System.gradient_cosine)."""
    if not loss > 0:
        return g.new_zeros(())
    cosines = g.abs() / (2.0 * loss * a).clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    return torch.where(a > 0, cosines, torch.zeros_like(cosines)).max()

