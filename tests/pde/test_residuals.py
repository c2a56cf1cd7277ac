"""PDEResiduals: the groups its call returns, its Jacobian against autograd's, its refusals, and the optimizer's
steps with it against the same residuals written with torch.autograd.grad (engine='full')."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import marquardt
from marquardt import pde


def network(d: int = 2, width: int = 8, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, 1)).double()


def poisson_batch(n: int = 30, nb: int = 12, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    xb = torch.rand(nb, 2, generator=g, dtype=torch.float64)
    xb[: nb // 2, 0] = 0.0
    xb[nb // 2 :, 1] = 1.0
    f = 2 * math.pi**2 * torch.sin(math.pi * x).prod(1)
    return x, f, xb, torch.sin(math.pi * xb).prod(1)


def by_autograd(model: nn.Module, x, f, xb, g):
    """The same residuals in the usual PINN style."""
    x = x.clone().requires_grad_(True)
    u = model(x)
    (grad,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    lap = sum(torch.autograd.grad(grad[:, j].sum(), x, create_graph=True)[0][:, j] for j in range(2))
    return (-lap - f) / math.sqrt(len(x)), (model(xb).squeeze(1) - g) / math.sqrt(len(xb))


def test_groups_are_the_conditions_residuals_scaled_by_their_counts():
    model, batch = network(), poisson_batch()
    fn = pde.PDEResiduals(-pde.laplacian(2), pde.value())
    for ours, reference in zip(fn(model, *batch), by_autograd(model, *batch)):
        assert torch.allclose(ours.reshape(-1), reference.reshape(-1), rtol=0, atol=1e-12)
    summed = pde.PDEResiduals(-pde.laplacian(2), pde.value(), scale="sum")(model, *batch)
    assert torch.allclose(summed[1].reshape(-1), (model(batch[2]).squeeze(1) - batch[3]), atol=1e-12)


def test_jacobian_equals_autograds():
    model, batch = network(), poisson_batch()
    fn = pde.PDEResiduals(-pde.laplacian(2), pde.value())
    params = list(model.parameters())
    r, J = fn.jacobian(model, params, *batch)

    rows = []
    reference = torch.cat([t.reshape(-1) for t in by_autograd(model, *batch)])
    for k in range(reference.numel()):
        grads = torch.autograd.grad(reference[k], params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    assert torch.allclose(r, reference.detach(), rtol=0, atol=1e-12)
    assert torch.allclose(J, torch.stack(rows), rtol=0, atol=1e-10)


def test_models_that_are_not_mlps_fall_back_to_autograd():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = network()

        def forward(self, x):
            return self.net(x)

    model, batch = Wrapped(), poisson_batch()
    fn = pde.PDEResiduals(-pde.laplacian(2), pde.value())
    assert fn.jacobian(model, list(model.parameters()), *batch) is None
    for ours, reference in zip(fn(model, *batch), by_autograd(model.net, *batch)):
        assert torch.allclose(ours.reshape(-1), reference.reshape(-1), rtol=0, atol=1e-12)


def test_bad_conditions_and_batches_are_refused_by_name():
    with pytest.raises(ValueError, match="conditions: expected at least one"):
        pde.PDEResiduals()
    with pytest.raises(TypeError, match="DiagonalOperator"):
        pde.PDEResiduals(lambda u: u)
    with pytest.raises(ValueError, match="scale"):
        pde.PDEResiduals(pde.value(), scale="max")
    fn = pde.PDEResiduals(-pde.laplacian(2), pde.value())
    x, f, xb, g = poisson_batch()
    with pytest.raises(ValueError, match="expected 4 tensors"):
        fn(network(), x, f)
    with pytest.raises(ValueError, match="targets of condition 1 must be a tensor of 12 values"):
        fn(network(), x, f, xb, g[:5])


@pytest.mark.parametrize("lambda_rule", ["trust_region", "delayed"])
def test_the_optimizer_takes_the_same_steps_as_with_autograd_residuals(lambda_rule):
    batch = poisson_batch()
    fast, slow = network(seed=3), network(seed=3)
    opt_fast = marquardt.LevenbergMarquardt(fast, residuals=pde.PDEResiduals(-pde.laplacian(2), pde.value()),
                                            loss_scale="sum", lambda_rule=lambda_rule)
    opt_slow = marquardt.LevenbergMarquardt(slow, residuals=by_autograd, loss_scale="sum", lambda_rule=lambda_rule)
    first = None
    for _ in range(5):
        a, b = opt_fast.step(*batch), opt_slow.step(*batch)
        first = first or a
        assert a.engine == "given" and b.engine == "full"
        assert a.loss_after == pytest.approx(b.loss_after, rel=1e-9)
    for p, q in zip(fast.parameters(), slow.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-9)
    assert a.loss_after < 0.5 * first.loss_before


def test_a_poisson_pinn_fits_to_high_accuracy():
    """−Δu = 2π² sin(πx)sin(πy) on the unit square, u = 0 on its edges: the fit's u against the exact one."""
    torch.manual_seed(0)
    model = network(width=12, seed=4)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(120, 2, generator=g, dtype=torch.float64)
    side = torch.rand(60, generator=g, dtype=torch.float64)
    xb = torch.cat([torch.stack([side[:15], torch.zeros(15, dtype=torch.float64)], 1),
                    torch.stack([side[15:30], torch.ones(15, dtype=torch.float64)], 1),
                    torch.stack([torch.zeros(15, dtype=torch.float64), side[30:45]], 1),
                    torch.stack([torch.ones(15, dtype=torch.float64), side[45:]], 1)])
    exact = lambda p: torch.sin(math.pi * p).prod(1)  # noqa: E731
    opt = marquardt.LevenbergMarquardt(model, residuals=pde.PDEResiduals(-pde.laplacian(2), pde.value()))
    marquardt.fit(opt, x, 2 * math.pi**2 * exact(x), xb, exact(xb), max_iterations=300)
    test = torch.rand(500, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        error = float((model(test).squeeze(1) - exact(test)).norm() / exact(test).norm())
    assert error < 1e-3


@pytest.mark.parametrize("solver, budget", [("primal", 200_000), ("dual", 200_000)])
def test_rows_in_blocks_under_the_memory_budget_take_the_same_steps(solver, budget):
    """A budget that holds the system but not all of J: the given Jacobian's rows come in blocks, with weights."""
    batch = poisson_batch(30, 12)  # 42 residuals, 105 parameters
    weight = torch.linspace(0.5, 2.0, 42, dtype=torch.float64)
    runs = []
    for options in ({}, {"memory_budget": budget}):
        model = network(width=8, seed=2)
        opt = marquardt.LevenbergMarquardt(model, residuals=pde.PDEResiduals(-pde.laplacian(2), pde.value()),
                                           solver=solver, lambda_rule="delayed", **options)
        losses = [opt.step(*batch, weight=weight).loss_after for _ in range(3)]
        runs.append((losses, torch.cat([p.detach().reshape(-1) for p in model.parameters()]), opt))
    (whole_losses, whole, _), (block_losses, blocks, opt) = runs
    assert 0 < opt.objective.row_block < 42 and opt.objective.engine.name == "given"
    assert block_losses == pytest.approx(whole_losses, rel=1e-11)
    torch.testing.assert_close(blocks, whole, rtol=1e-10, atol=1e-12)
