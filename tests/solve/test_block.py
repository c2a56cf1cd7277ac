"""Block-diagonal LM: blocks, the block solve against its formula, budget-driven choice, training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from marquardt import LevenbergMarquardt
from marquardt.solve.block import BlockDiagonalSystem, fit_to_budget, make_blocks
from marquardt.solve.primal import PrimalSystem
from marquardt.types.layout import ParameterLayout
from tests.models import sine_data, sine_mlp


def test_layer_and_unit_blocks_partition_the_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    layout = ParameterLayout.of(model)
    for kind, sizes in (("layer", [16, 10]), ("unit", [4] * 4 + [5] * 2), (7, [7, 7, 7, 5])):
        blocks = make_blocks(kind, layout)
        assert sorted(len(b) for b in blocks) == sorted(sizes)
        assert sorted(torch.cat(blocks).tolist()) == list(range(layout.numel))
    # a unit block is weight row j with bias j
    unit = make_blocks("unit", layout)[1]
    assert unit.tolist() == [3, 4, 5, 13]


def test_block_step_equals_the_dense_step_of_the_block_diagonal_matrix():
    torch.manual_seed(0)
    n, m, alpha, lam = 9, 40, 0.25, 0.3
    J = torch.randn(m, n, dtype=torch.float64)
    rho = torch.randn(m, dtype=torch.float64)
    d = torch.rand(n, dtype=torch.float64) + 0.2
    blocks = [torch.tensor([0, 1, 2, 3]), torch.tensor([4, 8]), torch.tensor([5, 6, 7])]
    system = BlockDiagonalSystem(n, alpha, torch.float64, torch.device("cpu"), blocks=blocks)
    system.add(J[:25], rho[:25])
    system.add(J[25:], rho[25:])
    system.finalize()
    system.set_damping(d)
    step, ok = system.lm_step(lam)
    A = alpha * J.T @ J
    mask = torch.zeros(n, n, dtype=torch.bool)
    for b in blocks:
        mask[b.unsqueeze(1), b.unsqueeze(0)] = True
    A_block = torch.where(mask, A, torch.zeros_like(A))
    expected = -torch.linalg.solve(A_block + lam * torch.diag(d), alpha * J.T @ rho)
    assert ok
    torch.testing.assert_close(step, expected)
    torch.testing.assert_close(system.g, alpha * J.T @ rho)
    torch.testing.assert_close(system.diagonal(), A.diagonal())
    s = torch.randn(n, dtype=torch.float64)
    assert system.quadratic(s) == pytest.approx(float(s @ A_block @ s))


def test_one_block_is_the_primal_system():
    torch.manual_seed(1)
    J, rho, d = torch.randn(20, 6, dtype=torch.float64), torch.randn(20, dtype=torch.float64), torch.rand(6).double() + 1
    block = BlockDiagonalSystem(6, 1.0, torch.float64, torch.device("cpu"), blocks=[torch.arange(6)])
    primal = PrimalSystem(6, 1.0, torch.float64, torch.device("cpu"))
    for sys_ in (block, primal):
        sys_.add(J, rho)
        sys_.finalize()
        sys_.set_damping(d)
    torch.testing.assert_close(block.lm_step(0.1)[0], primal.lm_step(0.1)[0])


def test_budget_splits_layers_into_units():
    model = nn.Sequential(nn.Linear(50, 40), nn.Tanh(), nn.Linear(40, 1))
    layout = ParameterLayout.of(model)
    layers = make_blocks("layer", layout)  # 2040 and 41 parameters
    fitted = fit_to_budget(layers, layout, budget=200_000 * 8, elt=8)
    assert max(len(b) for b in fitted) == 51  # the big layer became 40 unit blocks of 50 + 1
    assert sorted(torch.cat(fitted).tolist()) == list(range(layout.numel))
    with pytest.raises(ValueError, match=r"block-diagonal curvature needs .* memory_budget"):
        fit_to_budget(layers, layout, budget=1000, elt=8)


def test_auto_picks_block_diagonal_when_the_dense_system_does_not_fit_and_trains():
    x, y = sine_data(400)
    model = sine_mlp(20)  # 481 parameters: dense needs 481² x 20 B = 4.4 MiB
    opt = LevenbergMarquardt(model, "mse", memory_budget=3 * 2**20)
    infos = [opt.step(x, y) for _ in range(10)]
    assert {i.form for i in infos} == {"block_diagonal"}
    assert infos[-1].loss_after < infos[0].loss_before


@pytest.mark.parametrize("blocks", ["layer", "unit", 50])
def test_block_diagonal_options_train(blocks):
    x, y = sine_data(300)
    model = sine_mlp(10)
    opt = LevenbergMarquardt(model, "mse", solver="block_diagonal", blocks=blocks)
    infos = [opt.step(x, y) for _ in range(10)]
    assert infos[-1].loss_after < infos[0].loss_before
    assert all(torch.isfinite(p).all() for p in model.parameters())
    copy.deepcopy(opt.state_dict())


def test_batched_block_solve_equals_the_per_block_solve():
    """The GPU path (one batched Cholesky per block size) against the per-block op, on the CPU."""
    torch.manual_seed(5)
    n, m, alpha = 23, 30, 0.5
    J = torch.randn(m, n, dtype=torch.float64)
    rho = torch.randn(m, dtype=torch.float64)
    d = torch.rand(n, dtype=torch.float64) + 0.1
    perm = torch.randperm(n)
    blocks = [perm[0:5], perm[5:10], perm[10:15], perm[15:22], perm[22:23]]  # sizes 5, 5, 5, 7, 1
    system = BlockDiagonalSystem(n, alpha, torch.float64, torch.device("cpu"), blocks=blocks)
    system.add(J, rho)
    system.finalize()
    system.set_damping(d)
    assert system.size_groups() == {5: [0, 1, 2], 7: [3], 1: [4]}
    for lam in (1e-3, 1.0):
        x_loop, ok_loop = system.solve(lam, -system.g)
        x_batch, ok_batch = system.solve_batched(lam, -system.g)
        assert ok_loop and ok_batch
        torch.testing.assert_close(x_batch, x_loop, rtol=1e-10, atol=1e-12)
    before = [a.clone() for a in system.A]
    system.A[1] = -torch.eye(5, dtype=torch.float64) * 10  # an indefinite block: reported, not raised
    _, ok = system.solve_batched(0.1, -system.g)
    assert not ok
    assert torch.equal(system.A[0], before[0])  # the blocks are never modified


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_block_diagonal_on_cuda_matches_cpu():
    """Unit blocks on the GPU go through the batched solve; the steps match the CPU's per-block solves."""
    x, y = sine_data(300)
    results = []
    for device in ("cpu", "cuda"):
        model = sine_mlp(10).double().to(device)
        opt = LevenbergMarquardt(model, "mse", solver="block_diagonal", blocks="unit")
        for _ in range(5):
            opt.step(x.double().to(device), y.double().to(device))
        results.append(torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-7, atol=1e-9)


def test_batched_systems_solve_through_solve_and_report_a_failed_block():
    """batched=True (the GPU choice) routes solve() and lm_step() through the batched path; off by default."""
    torch.manual_seed(6)
    n, m = 12, 20
    J, rho = torch.randn(m, n, dtype=torch.float64), torch.randn(m, dtype=torch.float64)
    blocks = [torch.arange(0, 4), torch.arange(4, 8), torch.arange(8, 12)]
    systems = [BlockDiagonalSystem(n, 0.5, torch.float64, torch.device("cpu"), torch.float32, blocks=blocks,
                                   **({"batched": True} if batched else {})) for batched in (False, True)]
    assert [s.batched for s in systems] == [False, True]
    d = torch.rand(n, dtype=torch.float64) + 0.1
    for s in systems:
        s.add(J, rho)
        s.finalize()
        s.set_damping(d)
    (x_loop, ok_loop), (x_batch, ok_batch) = (s.lm_step(0.2) for s in systems)
    assert ok_loop and ok_batch and x_batch.dtype == torch.float64
    torch.testing.assert_close(x_batch, x_loop, rtol=1e-12, atol=1e-14)
    bad = d.clone()
    bad[5] = float("nan")
    for s in systems:
        s.set_damping(bad)
        assert not s.solve(0.2, -s.g)[1]
