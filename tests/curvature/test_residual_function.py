"""Residual functions of the model, fn(model, *batch): the Jacobian against autograd's, both differentiation styles
against each other, the groups' concatenation, every solver, checkpoints, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import hessian, vmap

import marquardt
from marquardt import LevenbergMarquardt
from tests.models import Exponential, exponential_data, residuals

PI = torch.pi


def source(x: torch.Tensor) -> torch.Tensor:
    """f of the 1-D Poisson problem u'' = f on [0, 1], u(0) = u(1) = 0, solved by u = sin(πx)."""
    return -(PI**2) * torch.sin(PI * x)


def poisson_by_autograd(model: nn.Module, x: torch.Tensor, xb: torch.Tensor):
    x = x.clone().requires_grad_(True)
    u = model(x)
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), x, create_graph=True)
    return d2u - source(x), model(xb)


def poisson_by_torch_func(model: nn.Module, x: torch.Tensor, xb: torch.Tensor):
    def u(xi: torch.Tensor) -> torch.Tensor:
        return model(xi.reshape(1, 1)).squeeze()

    d2u = vmap(hessian(u))(x).reshape(-1, 1)
    return d2u - source(x), model(xb)


STYLES = {"autograd": poisson_by_autograd, "torch_func": poisson_by_torch_func}


def pinn(width: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, 1)).double()


def points(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(0.0, 1.0, n, dtype=torch.float64).unsqueeze(1)
    return x, torch.tensor([[0.0], [1.0]], dtype=torch.float64)


def reference_jacobian(fn, model: nn.Module, *batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [M, n], r [M]) by one autograd backward pass per residual (the autograd style's graph)."""
    params = [p for p in model.parameters()]
    with torch.enable_grad():
        r = torch.cat([g.reshape(-1) for g in poisson_by_autograd(model, *batch)]) if fn is None else \
            torch.cat([g.reshape(-1) for g in fn(model, *batch)])
        rows = [torch.cat([t.reshape(-1) for t in torch.autograd.grad(r[k], params, retain_graph=True)])
                for k in range(r.numel())]
    return torch.stack(rows), r.detach()


@pytest.mark.parametrize("style", STYLES)
def test_one_step_is_the_damped_gauss_newton_step_of_autograds_jacobian(style):
    """δ = −(αJᵀJ + λI)⁻¹ αJᵀr with α = 1/M, J from autograd one residual at a time."""
    model, (x, xb) = pinn(), points()
    J, r = reference_jacobian(None, model, x, xb)
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    lam, alpha = 1e-3, 1.0 / r.numel()
    expected = -torch.linalg.solve(alpha * J.T @ J + lam * torch.eye(J.shape[1], dtype=J.dtype), alpha * J.T @ r)
    opt = LevenbergMarquardt(model, residuals=STYLES[style], damping="levenberg", lambda_init=lam,
                             lambda_rule="fixed", solver="primal")
    info = opt.step(x, xb)
    assert info.accepted  # (a line-search step is a multiple of δ)
    assert info.loss_before == pytest.approx(0.5 * alpha * float(r @ r), rel=1e-12)
    theta1 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(theta1 - theta0, info.multiplier * expected, rtol=1e-8, atol=1e-12)


def test_both_differentiation_styles_take_the_same_steps():
    x, xb = points(20)
    trajectories = {}
    for style, fn in STYLES.items():
        model = pinn(width=10)
        # (λ as given: the trust region's iteration on the step length turns the styles' last-bit differences
        # into different λ)
        opt = LevenbergMarquardt(model, residuals=fn, lambda_rule="delayed")
        losses = [opt.step(x, xb).loss_after for _ in range(8)]
        trajectories[style] = (losses, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    (la, ta), (lb, tb) = trajectories.values()
    assert la == pytest.approx(lb, rel=1e-10)
    torch.testing.assert_close(ta, tb, rtol=1e-10, atol=1e-10)
    assert la[-1] < 1e-2 * la[0]


def test_groups_are_flattened_and_concatenated():
    model = Exponential()
    t, y = exponential_data(10)
    w = torch.linspace(1.0, 2.0, 10, dtype=torch.float64)

    def two_groups(m, t, y):
        r = m(t) - y
        return r[:4].reshape(2, 2), w[4:] * r[4:]  # groups of any shape

    opt = LevenbergMarquardt(model, residuals=two_groups)
    with torch.no_grad():
        r = model(t) - y
    expected = 0.5 * float(torch.cat([r[:4], w[4:] * r[4:]]).pow(2).mean())
    assert opt.step(t, y).loss_before == pytest.approx(expected, rel=1e-14)


def test_a_residual_function_fits_like_the_residual_callable_it_restates():
    t, y = exponential_data(40)
    a, b = Exponential(), Exponential()
    by_function = marquardt.fit(LevenbergMarquardt(a, residuals=lambda m, t, y: m(t) - y), t, y)
    by_callable = marquardt.fit(LevenbergMarquardt(b, residuals), t, y)
    assert by_function.converged and by_function.iterations == by_callable.iterations
    assert [h.loss_after for h in by_function.history] == pytest.approx(
        [h.loss_after for h in by_callable.history], rel=1e-12)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0.0)


def test_a_function_of_the_model_alone_takes_no_batch():
    x, xb = points()
    model = pinn()
    opt = LevenbergMarquardt(model, residuals=lambda m: poisson_by_autograd(m, x, xb))
    first = opt.step()
    assert first.accepted and opt.step().loss_after < first.loss_before


@pytest.mark.parametrize("solver", ["primal", "dual", "block_diagonal"])
def test_every_solver_takes_residual_functions(solver):
    x, xb = points()
    model = pinn()
    opt = LevenbergMarquardt(model, residuals=poisson_by_torch_func, solver=solver)
    infos = [opt.step(x, xb) for _ in range(5)]
    assert infos[0].form == solver and infos[-1].loss_after < 0.5 * infos[0].loss_before


def test_primal_and_dual_solves_agree():
    x, xb = points(6)  # 8 residuals, 97 parameters: the dual is the natural form
    thetas = []
    for solver in ("primal", "dual"):
        model = pinn()
        # (λ as given: at the trust region's λ = 0 the dual solve is undefined and the primal one singular)
        opt = LevenbergMarquardt(model, residuals=poisson_by_autograd, solver=solver, lambda_rule="delayed")
        for _ in range(3):
            opt.step(x, xb)
        thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(thetas[0], thetas[1], rtol=1e-8, atol=1e-10)


def test_a_checkpoint_resumes_a_residual_function_run_exactly():
    x, xb = points()
    model = pinn()
    opt = LevenbergMarquardt(model, residuals=poisson_by_torch_func)
    for _ in range(3):
        opt.step(x, xb)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert saved_opt["param_groups"][0]["loss"] == "residuals"
    straight = [opt.step(x, xb).loss_after for _ in range(3)]
    resumed_model = pinn()
    resumed_model.load_state_dict(saved_model)
    resumed = LevenbergMarquardt(resumed_model, residuals=poisson_by_torch_func)
    resumed.load_state_dict(saved_opt)
    assert [resumed.step(x, xb).loss_after for _ in range(3)] == straight
    with pytest.raises(ValueError, match="its loss is 'residuals'"):
        LevenbergMarquardt(pinn(), "mse").load_state_dict(saved_opt)


# ----------------------------------------------------------------------------------------------- refusals
def _unchanged_after(opt: LevenbergMarquardt, model: nn.Module, call) -> None:
    before = copy.deepcopy(model.state_dict())
    call()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not opt.state_dict()["state"]


@pytest.mark.parametrize("fn,error,message", [
    (lambda m, t, y: [1.0, 2.0], TypeError, "residuals: the function must return a tensor or a tuple of tensors, "
                                             "got float \\(group 0\\)"),
    (lambda m, t, y: (m(t) - y).sum().item(), TypeError, "got float"),
    (lambda m, t, y: (m(t) > y).long(), TypeError, "residuals: expected real floating-point residuals, got dtype "
                                                   "torch.int64"),
    (lambda m, t, y: (), ValueError, "residuals: the function returned an empty tuple"),
    (lambda m, t, y: (m(t) - y)[:0], ValueError, "residuals: the function returned no residuals"),
])
def test_bad_residuals_are_refused_before_any_change(fn, error, message):
    model = Exponential()
    opt = LevenbergMarquardt(model, residuals=fn)
    with pytest.raises(error, match=message):
        _unchanged_after(opt, model, lambda: opt.step(*exponential_data(10)))
    _unchanged_after(opt, model, lambda: pytest.raises(error, opt.step, *exponential_data(10)))


def test_residuals_whose_shape_changes_within_a_step_are_refused():
    calls = []

    def unstable(m, t, y):
        calls.append(1)
        r = m(t) - y
        return r if len(calls) == 1 else r[1:]

    model = Exponential()
    opt = LevenbergMarquardt(model, residuals=unstable)
    with pytest.raises(ValueError, match=r"residuals: the function returned shapes \[\(9,\)\] for a batch on "
                                         r"which it returned \[\(10,\)\] before"):
        _unchanged_after(opt, model, lambda: opt.step(*exponential_data(10)))


def test_a_new_batch_shape_may_bring_new_residual_shapes():
    model = Exponential()
    opt = LevenbergMarquardt(model, residuals=lambda m, t, y: m(t) - y)
    assert opt.step(*exponential_data(10)).accepted
    assert opt.step(*exponential_data(14)).loss_before > 0
    assert opt.step(*exponential_data(10)).loss_before > 0  # back to the first shape: its record holds again


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(loss="mse", residuals=lambda m, x: m(x)), ValueError, "loss and residuals: pass one of them"),
    (dict(residuals="mse"), TypeError, "residuals: expected a function fn\\(model, \\*batch\\)"),
    (dict(residuals=nn.MSELoss()), TypeError, "residuals: expected a function .* got MSELoss"),
    (dict(residuals=lambda m, x: m(x), curvature="ggn"), ValueError,
     "curvature: a residual callable or function supports only 'gn'"),
    (dict(residuals=lambda m, x: m(x), curvature_samples=4), ValueError, "curvature_samples"),
])
def test_bad_constructions_are_refused_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        LevenbergMarquardt(Exponential(), **kwargs)


def test_batch_tensors_are_checked_by_position():
    model = Exponential()
    opt = LevenbergMarquardt(model, residuals=lambda m, t, y: m(t) - y)
    t, y = exponential_data(10)
    with pytest.raises(ValueError, match=r"batch\[1\]: dtype torch.float32 does not match"):
        opt.step(t, y.float())
    bad = y.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match=r"batch\[1\]: contains NaN or Inf"):
        opt.step(t, bad)
    with pytest.raises(TypeError, match=r"step: expected \(inputs, targets\), got 3 arguments"):
        LevenbergMarquardt(nn.Linear(1, 1).double(), "mse").step(t, y, y)


def test_geodesic_acceleration_takes_the_same_steps_in_both_styles():
    """The autograd style's second directional derivative comes from reverse mode alone (torch.func refuses it)."""
    x, xb = points()
    runs = []
    for fn in STYLES.values():
        model = pinn()
        opt = LevenbergMarquardt(model, residuals=fn, geodesic=True)
        infos = [opt.step(x, xb) for _ in range(4)]
        assert all(info.geodesic_used for info in infos)
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-10, atol=1e-10)


def test_a_residual_callables_rows_are_its_leading_dimension():
    """r [N, 2] from a residual callable: N samples of two residuals each, f = (1/N) Σ ½‖rᵢ‖²."""
    torch.manual_seed(0)
    model = nn.Linear(1, 2).double()
    t, y = torch.randn(12, 1, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    scale = torch.tensor([1.0, 0.5], dtype=torch.float64)
    opt = LevenbergMarquardt(model, lambda z, y: (z - y) * scale)
    with torch.no_grad():
        r = (model(t) - y) * scale
    info = opt.step(t, y)
    assert info.loss_before == pytest.approx(float(0.5 * r.pow(2).sum() / 12), rel=1e-14)


@pytest.mark.parametrize("solver", ["primal", "dual"])
@pytest.mark.parametrize("style", STYLES)
def test_rows_stream_in_blocks_under_the_memory_budget(style, solver):
    """With a budget that holds the system but not all of J, the rows come in blocks of one forward pass: the
    steps are those of the whole Jacobian (weights included)."""
    x, xb = points(40)  # 42 residuals, 141 parameters
    weight = torch.linspace(0.5, 2.0, 42, dtype=torch.float64)
    budget = {"primal": 420_000, "dual": 200_000}[solver]
    runs = []
    for options in ({}, {"memory_budget": budget}):
        model = pinn(width=10)
        opt = LevenbergMarquardt(model, residuals=STYLES[style], solver=solver, lambda_rule="delayed", **options)
        losses = [opt.step(x, xb, weight=weight).loss_after for _ in range(3)]
        runs.append((losses, torch.cat([p.detach().reshape(-1) for p in model.parameters()]), opt))
    (whole_losses, whole, _), (block_losses, blocks, opt) = runs
    assert 0 < opt.objective.row_block < 42  # blocks were used
    assert block_losses == pytest.approx(whole_losses, rel=1e-11)
    torch.testing.assert_close(blocks, whole, rtol=1e-10, atol=1e-12)


def test_a_residual_function_may_take_arguments_that_are_not_tensors():
    t, y = exponential_data(12)

    def scaled(m, t, y, scale: float, label: str):
        assert label == "decay"
        return scale * (m(t) - y)

    opt = LevenbergMarquardt(Exponential(), residuals=scaled)
    first = opt.step(t, y, 2.0, "decay")
    with torch.no_grad():
        expected = 0.5 * float((2.0 * (Exponential()(t) - y)).pow(2).mean())
    assert first.loss_before == pytest.approx(expected, rel=1e-13)
    assert opt.step(t, y, 3.0, "decay").loss_before > 0  # another scale: the same shapes, a new batch
