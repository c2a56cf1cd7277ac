"""The solver chooser: the plans it keeps, its budget arithmetic at the boundaries, the settings it refuses and
the figures in its messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from marquardt.solve import choose
from marquardt.solve.choose import SOLVERS, SolverChooser, SolverSettings, register_solver
from marquardt.solve.dual import DualSystem
from marquardt.solve.primal import PrimalSystem
from marquardt.types.layout import ParameterLayout

LAYOUT = ParameterLayout.of(nn.Linear(9, 2))  # 20 parameters


def problem(rows=30, samples=None, outputs=1, device="cpu", **kw):
    return choose.Problem(parameters=LAYOUT.numel, rows=rows, samples=samples or rows, outputs_per_sample=outputs,
                          dtype=torch.float64, device=torch.device(device), **kw)


def chooser(**settings):
    return SolverChooser(SolverSettings(**settings), LAYOUT)


def test_plans_are_kept_per_problem_and_at_most_64():
    c = chooser()
    first = c.plan(problem(rows=30))
    assert c.plan(problem(rows=30)) is first and c.last_plan is first
    for rows in range(31, 31 + 63):
        c.plan(problem(rows=rows))
    assert len(c._plans) == 64
    c.plan(problem(rows=200))  # the 65th shape: the kept plans are dropped first
    assert len(c._plans) == 1 and c.plan(problem(rows=30)) is not first


@pytest.mark.parametrize("solver, form", [("primal", PrimalSystem), ("dual", DualSystem), ("auto", DualSystem)])
def test_a_system_of_exactly_the_budget_fits(solver, form):
    """Residual callables (whole-batch chunks) need nothing beyond the system, so the budget can be exact;
    'auto' takes the dual form (fewer rows than parameters) when it fits exactly."""
    p = problem(rows=10, whole_batch_chunks=True)
    c = chooser(solver=solver)
    needed = SOLVERS["dual" if solver == "auto" else solver](c, p, c.precision(p)).footprint.system_bytes
    assert chooser(solver=solver, memory_budget=needed).plan(p).candidate.system is form
    if solver == "auto":
        assert chooser(solver=solver, memory_budget=needed - 1).plan(p).candidate.system is not DualSystem
    else:
        with pytest.raises(ValueError, match="too large"):
            chooser(solver=solver, memory_budget=needed - 1).plan(p)


def test_the_chunk_is_what_the_budget_leaves_per_sample():
    p = problem(rows=400, samples=100, outputs=4)
    c = chooser(solver="primal")
    system_bytes = SOLVERS["primal"](c, p, c.precision(p)).footprint.system_bytes
    per_sample = 3 * 4 * 20 * 8  # rows, output Jacobian and a converted copy, 4 outputs x 20 parameters, float64
    budget = system_bytes + 7 * per_sample + per_sample // 2
    assert chooser(solver="primal", memory_budget=budget).plan(p).chunk == 7
    assert chooser(solver="primal", memory_budget=system_bytes + per_sample).plan(p).chunk == 1
    with pytest.raises(ValueError) as refused:
        chooser(solver="primal", memory_budget=system_bytes + per_sample - 1).plan(p)
    left = (per_sample - 1) / 2**20
    assert (f"leaves {left:.2f} MiB after the primal system, less than the {per_sample / 2**20:.2f} MiB that "
            "the Jacobian rows of one sample need (4 outputs x 20 parameters); raise memory_budget") in str(
                refused.value)
    whole = choose.Problem(**{**vars(p), "whole_batch_chunks": True})  # (a residual function's rows in blocks)
    assert chooser(solver="primal", memory_budget=budget).plan(whole).chunk == 7
    assert chooser(solver="primal", memory_budget=system_bytes).plan(whole).chunk == 1  # at least one row
    assert chooser(solver="primal", memory_budget=system_bytes + 200 * per_sample).plan(whole).chunk == 100


def test_the_plan_builds_its_system_on_the_problems_device():
    p = problem(device="meta")
    system = chooser(solver="primal").plan(p).build(0.5)
    assert type(system) is PrimalSystem and system.A.device.type == "meta" and system.alpha == 0.5


def test_block_diagonal_solves_batched_on_gpus_only():
    for device, batched in (("cpu", False), ("cuda", True)):
        c = chooser(solver="block_diagonal")
        p = problem(device=device)
        candidate = SOLVERS["block_diagonal"](c, p, c.precision(p))
        assert candidate.arguments["batched"] is batched
        assert candidate.dtype_size == candidate.footprint.detail["largest_block"] == 18  # layer blocks: 18 and 2


def test_candidates_take_the_solve_dtype_of_their_own_size():
    c = chooser()
    p = problem(rows=5)
    precision = c.precision(p)
    assert c.primal(p, precision).dtype_size == 20
    assert c.dual(p, precision).dtype_size == 5


@pytest.mark.parametrize("setting, value, alternative", [
    ("dual_method", "pcg", "'cholesky'"),
    ("primal_accumulation", "factored", "'rows'"),
])
def test_settings_that_need_factored_rows_are_refused_with_the_alternative(setting, value, alternative):
    words = (f"{setting}='{value}' needs every trainable layer to be a Linear on [batch, features] inputs and "
             f"the fast Jacobian engine; use 'auto' or {alternative}")
    with pytest.raises(ValueError) as refused:
        chooser(**{setting: value}).check_model(False)
    assert str(refused.value) == words
    chooser(**{setting: value}).check_model(True)  # a model of Linear layers: accepted
    solver = "dual" if setting == "dual_method" else "primal"
    with pytest.raises(ValueError) as refused:
        chooser(solver=solver, **{setting: value}).plan(problem(rows=5))  # no factor width: the rows are dense
    assert str(refused.value) == words


def test_register_solver_refuses_taken_names():
    for name in ("auto", "primal", "dual", "block_diagonal"):
        with pytest.raises(ValueError, match=f"solver: '{name}' is already a solver name"):
            register_solver(name, SOLVERS["primal"])


def test_a_registered_solver_is_planned(monkeypatch):
    monkeypatch.setattr(choose, "SOLVERS", dict(SOLVERS))
    built = register_solver("mine", lambda c, p, precision: c.primal(p, precision))
    assert choose.SOLVERS["mine"] is built
    assert chooser(solver="mine").plan(problem()).candidate.system is PrimalSystem
