"""Choosing the solver form for a batch: one function of the sizes, the device and the memory budget.

Every form is a registered :class:`~marquardt.solve.system.System`; each says how many bytes it needs
(:meth:`System.footprint`), and this module charges that against ``memory_budget`` before anything is
allocated. Row chunks get what is left, so a step's peak memory is about the system plus one chunk, however
many rows the batch has. ``solver='auto'`` takes the first form of :data:`AUTO_ORDER` whose condition holds and
which fits: the dual form when there are fewer rows than parameters (not under torch.distributed, which would
need every rank's rows), else the dense primal form, else block-diagonal blocks split to fit.

Device-specific choices live here: the Kronecker accumulation of the primal A is skipped on CPUs where
``jtj_accumulate_`` runs our AVX-512 SYRK, and block-diagonal solves are batched on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import ops
from ..types.layout import ParameterLayout
from .block import BlockDiagonalSystem, fit_to_budget, make_blocks
from .dual import DualSystem, FactoredDualSystem
from .kronecker import kronecker_pays
from .pcg import factored_dual_pays
from .primal import KroneckerPrimalSystem, PrimalSystem
from .qr import QR_MAX_PARAMETERS, GuardedPrimalSystem, QRSystem
from .system import Footprint, Precision, Problem, System


@dataclass(frozen=True)
class SolverSettings:
    """The implementation knobs of the solve (validated by the optimizer's config)."""

    solver: str = "auto"
    dual_method: str = "auto"
    dual_tol: float | None = None
    primal_accumulation: str = "auto"
    blocks: str | int = "layer"
    memory_budget: int = 512 * 2**20
    accumulate_dtype: torch.dtype | None = None
    solve_dtype: torch.dtype | None = None
    solve_float64_max: int = 1024


@dataclass
class Candidate:
    """A form for this problem: its System class, constructor arguments and footprint."""

    system: type[System]
    footprint: Footprint
    arguments: dict[str, Any] = field(default_factory=dict)
    dtype_size: int = 0  # the size whose solve dtype the system factors in


@dataclass
class Plan:
    """The chosen form, its dtypes and the chunk size (samples per chunk of rows)."""

    candidate: Candidate
    dtype: torch.dtype
    accumulate_dtype: torch.dtype
    chunk: int
    parameters: int
    device: torch.device

    def build(self, alpha: float) -> System:
        system: Any = self.candidate.system  # every form takes (n, α, dtype, device, accumulate_dtype, **its own)
        return system(self.parameters, alpha, self.dtype, self.device,
                                     accumulate_dtype=self.accumulate_dtype, **self.candidate.arguments)


class SolverChooser:
    """Plans the system of each batch for one model (block partitions and the dual workspace are kept)."""

    def __init__(self, settings: SolverSettings, layout: ParameterLayout) -> None:
        self.settings = settings
        self.layout = layout
        self._blocks: list[torch.Tensor] | None = None
        self._dual_workspace: dict[str, torch.Tensor] = {}  # m × m buffers reused from step to step
        self.last_plan: Plan | None = None  # the plan of the latest batch (diagnostics, tests)
        self._plans: dict[Problem, Plan] = {}

    @property
    def blocks(self) -> list[torch.Tensor] | None:
        """The block-diagonal partition (parameter indices per block), once a block-diagonal step has run."""
        return self._blocks

    def check_model(self, rows_can_be_factored: bool) -> None:
        """Refuses, when the optimizer is built, settings that need factored rows from a model that cannot give
        them (every trainable layer a Linear, the fast engine); inputs that are not [batch, features] are
        refused at the first step, when they are seen."""
        if rows_can_be_factored:
            return
        if self.settings.dual_method == "pcg":
            raise self._not_factorable("dual_method='pcg'", "'cholesky'")
        if self.settings.primal_accumulation == "factored":
            raise self._not_factorable("primal_accumulation='factored'", "'rows'")

    def precision(self, problem: Problem) -> Precision:
        s = self.settings
        return Precision(s.accumulate_dtype or problem.dtype, s.solve_dtype, s.solve_float64_max)

    # ------------------------------------------------------------------------------------- the forms
    def primal(self, problem: Problem, precision: Precision) -> Candidate:
        system: type[System] = KroneckerPrimalSystem if self._kronecker_primal(problem) else PrimalSystem
        if system is PrimalSystem and self._guarded(problem):
            guarded = GuardedPrimalSystem.footprint(problem, precision)
            if guarded.system_bytes <= self.settings.memory_budget:  # (else the plain form: the rows do not fit)
                return Candidate(GuardedPrimalSystem, guarded, dtype_size=problem.parameters)
        return Candidate(system, system.footprint(problem, precision), dtype_size=problem.parameters)

    def dual(self, problem: Problem, precision: Precision) -> Candidate:
        if self._factored_dual(problem):
            arguments = {"tol": self.settings.dual_tol, "workspace": self._dual_workspace}
            footprint = FactoredDualSystem.footprint(problem, precision)
            return Candidate(FactoredDualSystem, footprint, arguments, dtype_size=problem.rows)
        return Candidate(DualSystem, DualSystem.footprint(problem, precision), dtype_size=problem.rows)

    def qr(self, problem: Problem, precision: Precision) -> Candidate:
        return Candidate(QRSystem, QRSystem.footprint(problem, precision), dtype_size=problem.parameters)

    def block_diagonal(self, problem: Problem, precision: Precision) -> Candidate:
        if self._blocks is None:  # the partition depends on the model only
            blocks = make_blocks(self.settings.blocks, self.layout)
            largest = max(int(b.numel()) for b in blocks)
            self._blocks = fit_to_budget(blocks, self.layout, self.settings.memory_budget,
                                         precision.bytes_per_entry(largest))
        footprint = BlockDiagonalSystem.footprint(problem, precision, blocks=self._blocks)
        arguments = {"blocks": self._blocks, "batched": problem.device.type == "cuda"}
        return Candidate(BlockDiagonalSystem, footprint, arguments, dtype_size=footprint.detail["largest_block"])

    def _guarded(self, problem: Problem) -> bool:
        """Whether solver='auto' keeps the rows of a small primal system, to solve by QR should the normal
        equations lose accuracy (solve/qr.py): a single rank, at most QR_MAX_PARAMETERS parameters."""
        return self.settings.solver == "auto" and problem.parameters <= QR_MAX_PARAMETERS and not problem.distributed

    # ------------------------------------------------------------------------------------------ plan
    def plan(self, problem: Problem) -> Plan:
        """The plan of this problem, kept per problem (batches of one shape get the same plan)."""
        plan = self._plans.get(problem)
        if plan is None:
            if len(self._plans) >= 64:  # many batch shapes: keep the memory of plans bounded
                self._plans.clear()
            plan = self._plans[problem] = self._plan(problem)
        self.last_plan = plan
        return plan

    def _plan(self, problem: Problem) -> Plan:
        budget = self.settings.memory_budget
        precision = self.precision(problem)
        name = self.settings.solver
        if name == "auto":
            name = next(n for n, wanted in AUTO_ORDER if wanted(problem) and self._fits(n, problem, precision))
        candidate = SOLVERS[name](self, problem, precision)
        if candidate.footprint.system_bytes > budget:
            raise self._too_large(name, problem, precision, candidate.footprint)
        if candidate.system is DualSystem and self.settings.dual_method == "pcg":
            raise self._not_factorable("dual_method='pcg'", "'cholesky'")
        left = budget - candidate.footprint.system_bytes
        # Per sample while its rows are formed: the output Jacobian, the rows and a converted copy (for factored
        # rows, the layer inputs and signals, plus any Kronecker pair products).
        bytes_per_sample = 3 * problem.outputs_per_sample * candidate.footprint.row_width * precision.accumulate_bytes
        if problem.whole_batch_chunks:  # the whole batch at once; a residual function's rows in blocks that fit
            chunk = int(min(problem.samples, max(1, left // max(bytes_per_sample, 1))))
        elif left < bytes_per_sample:
            raise ValueError(
                f"memory_budget {budget / 2**20:.1f} MiB leaves {max(left, 0) / 2**20:.2f} MiB after the "
                f"{candidate.system.form} system, less than the {bytes_per_sample / 2**20:.2f} MiB that the Jacobian "
                f"rows of one sample need ({problem.outputs_per_sample} outputs x {problem.parameters} parameters); "
                "raise memory_budget"
            )
        else:
            chunk = int(min(problem.samples, left // bytes_per_sample))
        return Plan(candidate, precision.solve_dtype(candidate.dtype_size), precision.accumulate, chunk,
                    problem.parameters, problem.device)

    def _fits(self, name: str, problem: Problem, precision: Precision) -> bool:
        """Whether the form fits the budget (block-diagonal splits its blocks to fit, or raises)."""
        if name == "block_diagonal":
            return True
        return SOLVERS[name](self, problem, precision).footprint.system_bytes <= self.settings.memory_budget

    def _too_large(self, name: str, problem: Problem, precision: Precision, footprint: Footprint) -> ValueError:
        n, rows, budget = problem.parameters, problem.rows, self.settings.memory_budget
        need = footprint.system_bytes / 2**20
        if name == "primal":
            return ValueError(
                f"problem too large for the dense solve: the {n} x {n} curvature needs {need:.1f} MiB "
                f"but memory_budget is {budget / 2**20:.1f} MiB. Options: raise memory_budget; solver='dual' "
                f"(this batch has {rows} residual rows for {n} parameters); solver='block_diagonal'."
            )
        primal = PrimalSystem.footprint(problem, precision).system_bytes / 2**20
        return ValueError(
            f"problem too large for the {name} solve: {rows} rows x {n} parameters need {need:.1f} MiB but "
            f"memory_budget is {budget / 2**20:.1f} MiB. Options: raise memory_budget, use smaller batches, "
            f"solver='primal' ({primal:.1f} MiB) or solver='block_diagonal'."
        )

    # ------------------------------------------------------------------- factored rows (Linear layers)
    def _not_factorable(self, setting: str, alternative: str) -> ValueError:
        return ValueError(f"{setting} needs every trainable layer to be a Linear on [batch, features] inputs and "
                          f"the fast Jacobian engine; use 'auto' or {alternative}")

    def _factored_dual(self, problem: Problem) -> bool:
        """Whether a dual system keeps its rows factored and solves by PCG (dual_method)."""
        method = self.settings.dual_method
        if method == "cholesky" or problem.factor_width is None:
            return False
        return method == "pcg" or factored_dual_pays(problem.rows, problem.parameters, list(problem.linear_shapes))

    def _kronecker_primal(self, problem: Problem) -> bool:
        """Whether the primal A is accumulated from factored rows (primal_accumulation)."""
        method = self.settings.primal_accumulation
        if problem.factor_width is None:
            if method == "factored":
                raise self._not_factorable("primal_accumulation='factored'", "'rows'")
            return False
        if method == "factored":
            return True
        # The Kronecker products halve a large weight's flops but run them as GEMMs: on the CPU our AVX-512
        # SYRK of the explicit rows is faster at every size measured (1-w-w-1 MLPs, w = 16-64, 1,000-10,000
        # rows, one thread: 1.1-1.95x; BENCHMARKS.md §3), so 'auto' keeps the rows there.
        if problem.device.type == "cpu" and ops.cpu_syrk_kernel() == "avx512":
            return False
        return method == "auto" and any(
            trains and kronecker_pays(out, inp) for (out, inp), trains in zip(problem.linear_shapes,
                                                                              problem.trainable_weights))


CandidateFactory = Callable[[SolverChooser, Problem, Precision], Candidate]

#: name -> the function of (chooser, problem, precision) that builds its candidate; see register_solver.
SOLVERS: dict[str, CandidateFactory] = {
    "primal": SolverChooser.primal,
    "dual": SolverChooser.dual,
    "block_diagonal": SolverChooser.block_diagonal,
    "qr": SolverChooser.qr,
}

#: solver='auto': the first form whose condition holds and whose system fits the budget (block-diagonal
#: always fits, or raises with the sizes).
AUTO_ORDER: list[tuple[str, Callable[[Problem], bool]]] = [
    ("dual", lambda p: p.rows < p.parameters and not p.distributed),
    ("primal", lambda p: True),
    ("block_diagonal", lambda p: True),
]


def register_solver(name: str, build: CandidateFactory) -> CandidateFactory:
    """Adds a solver form under ``name`` (then ``solver=name`` picks it): ``build(chooser, problem, precision)``
    returns the Candidate of a System class, usually ``Candidate(MySystem, MySystem.footprint(problem,
    precision), dtype_size=problem.parameters)``. ``solver='auto'`` keeps choosing among :data:`AUTO_ORDER`."""
    if name == "auto" or name in SOLVERS:
        raise ValueError(f"solver: {name!r} is already a solver name")
    SOLVERS[name] = build
    return build
