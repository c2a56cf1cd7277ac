"""What every dense system promises, whatever its form: sums over ranks (reduce), rows in another dtype than the
accumulation, and a footprint that matches the formula the budget rule uses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marquardt.solve.block import BlockDiagonalSystem, make_blocks
from marquardt.solve.dual import DualSystem
from marquardt.solve.primal import PrimalSystem
from marquardt.solve.system import Precision, Problem
from marquardt.types.layout import ParameterLayout

N, M = 11, 7
BLOCKS = [torch.tensor([0, 1, 2, 9]), torch.tensor([3, 4]), torch.tensor([5, 6, 7, 8, 10])]  # one non-contiguous


def build(form, dtype=torch.float64, accumulate=None):
    args = (N, 0.5, dtype, torch.device("cpu"), accumulate)
    if form == "block":
        return BlockDiagonalSystem(*args, blocks=BLOCKS)
    return {"primal": PrimalSystem, "dual": DualSystem}[form](*args)


def data(dtype=torch.float64):
    g = torch.Generator().manual_seed(8)
    J = torch.randn(M, N, generator=g, dtype=torch.float64)
    return J.to(dtype), torch.randn(M, generator=g, dtype=torch.float64).to(dtype)


class Doubling:
    """A stand-in for two ranks holding the same shard: the sum over ranks is twice the local value."""

    active = True

    def __init__(self) -> None:
        self.calls = 0

    def sum_(self, tensor):
        self.calls += 1
        return tensor.mul_(2)


class Alone:
    active = False

    def sum_(self, tensor):
        raise AssertionError("an inactive communicator is never called")


def finished(system, d, lam=0.3):
    system.finalize()
    system.set_damping(d)
    step, ok = system.lm_step(lam)
    assert ok
    return system.diagonal(), system.g.clone(), step


@pytest.mark.parametrize("form", ["primal", "block"])
def test_reduce_sums_the_system_over_ranks(form):
    """Summed over two identical ranks = the rows added twice on one rank."""
    J, rho = data()
    d = torch.linspace(0.5, 2.0, N, dtype=torch.float64)
    summed, comm = build(form), Doubling()
    summed.add(J, rho)
    summed.reduce(comm)
    twice = build(form)
    twice.add(J, rho)
    twice.add(J, rho)
    twice.reduce(Alone())
    assert comm.calls == 1  # one all-reduce for the whole system
    for got, expected in zip(finished(summed, d), finished(twice, d)):
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    s = torch.randn(N, dtype=torch.float64)
    assert summed.quadratic(s) == pytest.approx(twice.quadratic(s), rel=1e-12)


def test_the_dual_form_refuses_to_be_summed_over_ranks():
    system = build("dual")
    system.add(*data())
    with pytest.raises(ValueError) as refused:
        system.reduce(Doubling())
    assert str(refused.value) == ("solver='dual' keeps every rank's rows and cannot be summed across ranks; use "
                                  "solver='primal' or 'block_diagonal' with torch.distributed")
    system.reduce(Alone())  # one process: nothing to sum, nothing refused


@pytest.mark.parametrize("form", ["primal", "dual", "block"])
def test_float32_rows_accumulated_and_solved_in_float64(form):
    """A float32 model with accumulate_dtype/solve float64: the rows are converted, not rejected, and the
    system is the float64 one of those same (float32-rounded) rows."""
    # (the vectors that quadratic and solve take are in the system's dtype: the optimizer casts them first)
    J32, rho32 = data(torch.float32)
    d = torch.linspace(0.5, 2.0, N, dtype=torch.float64)
    mixed = build(form, torch.float64, torch.float64)
    mixed.add(J32, rho32)
    exact = build(form, torch.float64)
    exact.add(J32.double(), rho32.double())
    for got, expected in zip(finished(mixed, d), finished(exact, d)):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    s = torch.randn(N, dtype=torch.float64)  # vectors come in the system's dtype (the optimizer casts them)
    assert mixed.quadratic(s) == pytest.approx(exact.quadratic(s), rel=1e-12)
    rhs = torch.randn(N, dtype=torch.float64)
    torch.testing.assert_close(mixed.solve(0.3, rhs)[0], exact.solve(0.3, rhs)[0], rtol=1e-12, atol=1e-13)


def problem(n=N, rows=M):
    return Problem(parameters=n, rows=rows, samples=rows, outputs_per_sample=1, dtype=torch.float32,
                   device=torch.device("cpu"))


@pytest.mark.parametrize("accumulate, solve, entry", [
    (torch.float64, torch.float64, 16),  # A and the factorisation workspace
    (torch.float32, torch.float64, 20),  # plus the float32 accumulation converted
    (torch.float32, torch.float32, 8),
])
def test_footprints_follow_the_formula(accumulate, solve, entry):
    precision = Precision(accumulate, solve, float64_max=4096)
    assert precision.bytes_per_entry(N) == entry
    assert PrimalSystem.footprint(problem(), precision).system_bytes == N * N * entry
    footprint = BlockDiagonalSystem.footprint(problem(), precision, blocks=BLOCKS)
    assert footprint.system_bytes == (16 + 4 + 25) * entry and footprint.detail["largest_block"] == 5
    with pytest.raises(ValueError, match="needs the block partition"):
        BlockDiagonalSystem.footprint(problem(), precision)


def test_block_memory_is_the_sum_of_its_blocks():
    system = build("block", torch.float64)
    assert system.memory_bytes() == (16 + 4 + 25) * 8


def test_a_failed_block_fails_the_whole_solve():
    """One block not positive definite (its damping zero and its curvature zero): the step must say so even
    when the other blocks solve."""
    J, rho = data()
    J[:, 3:5] = 0.0  # block [3, 4] gets no curvature
    system = build("block")
    system.add(J, rho)
    system.finalize()
    d = torch.ones(N, dtype=torch.float64)
    d[3:5] = 0.0
    system.set_damping(d)
    _, ok = system.lm_step(0.3)
    assert not ok


@pytest.mark.parametrize("kind", ["layer", "unit"])
def test_unit_and_layer_blocks_solve_like_a_dense_system_restricted_to_them(kind):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1))
    layout = ParameterLayout.of(model)
    blocks = make_blocks(kind, layout)
    n = layout.numel
    g_ = torch.Generator().manual_seed(2)
    J, rho = torch.randn(9, n, generator=g_, dtype=torch.float64), torch.randn(9, generator=g_, dtype=torch.float64)
    system = BlockDiagonalSystem(n, 1.0, torch.float64, torch.device("cpu"), blocks=blocks)
    system.add(J, rho)
    system.finalize()
    d = torch.ones(n, dtype=torch.float64)
    system.set_damping(d)
    step, ok = system.lm_step(0.1)
    assert ok
    A, g = J.T @ J, J.T @ rho
    for b in blocks:
        expected = -torch.linalg.solve(A[b][:, b] + 0.1 * torch.eye(len(b), dtype=torch.float64), g[b])
        torch.testing.assert_close(step[b], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["primal", "dual"])
def test_too_large_names_the_sizes_in_mebibytes(solver):
    """The refusal's figures are the footprints the budget rule compared, in MiB."""
    from marquardt.solve.choose import SolverChooser, SolverSettings

    layout = ParameterLayout.of(torch.nn.Linear(99, 10))  # 1000 parameters
    n, rows = layout.numel, 3000
    budget = 2**20
    chooser = SolverChooser(SolverSettings(solver=solver, memory_budget=budget), layout)
    big = Problem(parameters=n, rows=rows, samples=rows, outputs_per_sample=1, dtype=torch.float64,
                  device=torch.device("cpu"))
    precision = chooser.precision(big)
    primal_mib = PrimalSystem.footprint(big, precision).system_bytes / 2**20
    dual_mib = DualSystem.footprint(big, precision).system_bytes / 2**20
    with pytest.raises(ValueError) as refused:
        chooser.plan(big)
    message = str(refused.value)
    assert "memory_budget is 1.0 MiB" in message
    if solver == "primal":
        assert f"the {n} x {n} curvature needs {primal_mib:.1f} MiB" in message
        assert f"(this batch has {rows} residual rows for {n} parameters)" in message
    else:
        assert f"{rows} rows x {n} parameters need {dual_mib:.1f} MiB" in message
        assert f"solver='primal' ({primal_mib:.1f} MiB)" in message


@pytest.mark.parametrize("form", ["primal", "dual", "block"])
def test_every_buffer_lives_on_the_systems_device(form):
    """Built on the meta device (no data, no GPU needed): a buffer made without the system's device would land
    on the CPU, which a CUDA run would only find out in its first mixed-device op."""
    meta = torch.device("meta")
    args = (N, 0.5, torch.float64, meta, None)
    system = (BlockDiagonalSystem(*args, blocks=BLOCKS) if form == "block"
              else {"primal": PrimalSystem, "dual": DualSystem}[form](*args))
    buffers = [value for value in vars(system).values() if isinstance(value, torch.Tensor)]
    buffers += [t for value in vars(system).values() if isinstance(value, list) for t in value
                if isinstance(t, torch.Tensor)]
    assert buffers and all(t.device == meta for t in buffers)
    if form == "block":
        system.add(torch.empty(M, N, dtype=torch.float64, device=meta), torch.empty(M, dtype=torch.float64,
                                                                                     device=meta))
        system.finalize()
        assert system.diagonal().device == meta


@pytest.mark.parametrize("form", ["primal", "dual", "block"])
def test_a_system_that_cannot_be_factored_says_so(form):
    """A NaN in the damping (in the middle block of the block form): every solve reports failure."""
    J, rho = data()
    system = build(form)
    system.add(J, rho)
    system.finalize()
    d = torch.ones(N, dtype=torch.float64)
    d[3] = float("nan")
    system.set_damping(d)
    assert not system.lm_step(0.3)[1]
    assert not system.lm_step(0.3, keep_factor=True)[1]
    assert not system.solve(0.3, torch.ones(N, dtype=torch.float64))[1]


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_the_factor_is_kept_only_when_asked(form):
    J, rho = data()
    system = build(form)
    system.add(J, rho)
    system.finalize()
    system.set_damping(torch.ones(N, dtype=torch.float64))
    system.lm_step(0.3)
    assert system._factor is None
    system.lm_step(0.3, keep_factor=True)
    assert system._factor is not None and system._factor[0] == 0.3


@pytest.mark.parametrize("form", ["primal", "dual", "block"])
def test_float32_accumulation_hands_out_the_systems_dtype(form):
    J32, rho32 = data(torch.float32)
    system = build(form, torch.float64, torch.float32)
    system.add(J32, rho32)
    system.finalize()
    expected = 0.5 * (J32.double() ** 2).sum(0)
    assert system.diagonal().dtype == torch.float64 and system.g.dtype == torch.float64
    torch.testing.assert_close(system.diagonal(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", ["primal", "dual", "block"])
def test_a_factored_system_whose_solution_overflows_fails(form):
    """The factorisation succeeds (A + λ diag d = 1e-300 I is positive definite) but x = 1e300 / 1e-300
    overflows: the solve must report failure, and a failed factorisation (NaN x) must too."""
    system = build(form)
    system.add(torch.zeros(M, N, dtype=torch.float64), torch.zeros(M, dtype=torch.float64))
    system.finalize()
    system.set_damping(torch.full((N,), 1e-300, dtype=torch.float64))
    x, ok = system.solve(1.0, torch.full((N,), 1e300, dtype=torch.float64))
    assert not ok and not bool(torch.isfinite(x).all())


def test_a_gradient_from_elsewhere_takes_the_systems_dtype():
    system = build("primal")
    system.set_gradient(torch.ones(N, dtype=torch.float32))
    assert system.g.dtype == torch.float64


def test_only_row_keeping_systems_solve_in_row_space():
    with pytest.raises(NotImplementedError, match="^the primal system does not keep its rows$"):
        build("primal").solve_rows(0.3, torch.ones(M, dtype=torch.float64))


def test_precision_switches_to_the_accumulation_dtype_above_float64_max():
    precision = Precision(torch.float32, None, float64_max=100)
    assert precision.solve_dtype(100) == torch.float64 and precision.solve_dtype(101) == torch.float32
    assert type(precision.bytes_per_entry(100)) is int and precision.bytes_per_entry(100) == 2 * 8 + 4
    assert Precision(torch.float32, torch.float32, float64_max=100).solve_dtype(50) == torch.float32


def test_kronecker_sizes_and_thresholds():
    from marquardt.solve.kronecker import kronecker_pays, kronecker_workspace
    from marquardt.solve.pcg import factored_dual_pays
    from marquardt.solve.primal import KroneckerPrimalSystem

    assert kronecker_workspace(3, 4) == (6 * 10, 6 + 10)  # symmetric pairs: o(o+1)/2 and i(i+1)/2
    assert kronecker_pays(8, 128) and not kronecker_pays(7, 200) and not kronecker_pays(8, 127)
    # the factored dual: m·n ≥ 300,000 and n ≥ 4 Σ(out + in + 1); one (2, 2) layer has width 5
    assert factored_dual_pays(15_000, 20, [(2, 2)])
    assert not factored_dual_pays(14_999, 20, [(2, 2)]) and not factored_dual_pays(20_000, 19, [(2, 2)])
    precision = Precision(torch.float32, torch.float64, float64_max=10**6)
    p = Problem(parameters=3000, rows=10, samples=10, outputs_per_sample=1, dtype=torch.float32,
                device=torch.device("cpu"), linear_shapes=((32, 32), (40, 32), (2, 3)),
                trainable_weights=(True, False, True))
    footprint = KroneckerPrimalSystem.footprint(p, precision)
    fixed, per_row = kronecker_workspace(32, 32)  # only the trained weight whose Kronecker products pay
    assert footprint.system_bytes == 3000 * 3000 * precision.bytes_per_entry(3000) + fixed * 4
    assert footprint.row_width == 3000 + per_row


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 9), n=st.integers(1, 9), lam=st.sampled_from([0.0, 1e-6, 0.02, 3.0, 1e4]),
       seed=st.integers(0, 2**16), alpha=st.sampled_from([1.0, 0.25]))
def test_scaled_step_norm_and_slope_follow_the_formula_in_every_form(m, n, lam, seed, alpha):
    """‖Dδ‖ and (D²δ)ᵀ(A + λD²)⁻¹(D²δ) (D² = d, δ = −(A + λD²)⁻¹g), which the trust region's λ search uses,
    against a float64 solve of the formula; the dual form computes both in row space."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(m, n, generator=g, dtype=torch.float64)
    rho = torch.randn(m, generator=g, dtype=torch.float64)
    d = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    H = alpha * J.T @ J + lam * torch.diag(d)
    if torch.linalg.eigvalsh(H).min() < 1e-8 * max(float(H.abs().max()), 1.0):
        return  # (singular: every form may refuse, which the factor tests cover)
    delta = -torch.linalg.solve(H, alpha * J.T @ rho)
    norm = float(torch.linalg.vector_norm(d.sqrt() * delta))
    slope = float((d * delta) @ torch.linalg.solve(H, d * delta))
    forms = [PrimalSystem(n, alpha, torch.float64, torch.device("cpu"))]
    if m <= n:
        forms.append(DualSystem(n, alpha, torch.float64, torch.device("cpu")))
    for system in forms:
        system.add(J, rho)
        system.finalize()
        system.set_damping(d)
        got = system.scaled_step_norm(lam)
        assert got == pytest.approx(norm, rel=1e-7, abs=1e-12), system.form
        if system.form == "dual" and lam == 0.0:  # (no bound from a singular A, as lmpar's rank-deficient case)
            assert math.isnan(system.scaled_step_slope(lam))
        else:
            assert system.scaled_step_slope(lam) == pytest.approx(slope, rel=1e-6, abs=1e-12), system.form
        with pytest.raises(RuntimeError, match="same λ"):
            system.scaled_step_slope(lam + 1.0)
