"""The objective: the small-model Jacobian, batch recognition, subsampling sizes and second-order residuals."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import marquardt
from marquardt import LevenbergMarquardt
from marquardt.curvature.jacobian import FullJacobian, _jacobian_by_double_vjp
from marquardt.curvature.losses import GaussNewtonMSE
from marquardt.curvature.modes import make_curvature
from marquardt.curvature.noise import NoiseReplay
from marquardt.curvature.objective import Objective
from marquardt.parallel import Communicator
from marquardt.types.layout import ParameterLayout
from tests.models import Exponential, exponential_data, residuals, sine_data, sine_mlp


class Awkward(nn.Module):
    """Seven parameters: a matrix, a vector that reaches the output only through a product, one that is unused."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[0.3, -1.2], [0.7, 0.1]], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([0.5, -0.25], dtype=torch.float64))
        self.unused = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t.unsqueeze(1) * self.w[0] + self.b)
        return (h * self.w[1]).sum(dim=1) + torch.sin(self.b[0] * t)


@pytest.mark.parametrize("model_factory", [Exponential, Awkward])
def test_double_vjp_jacobian_equals_jacrev(model_factory):
    model = model_factory()
    layout = ParameterLayout.of(model)
    t, y = exponential_data(37)
    J, z = _jacobian_by_double_vjp(lambda: residuals(model(t), y), list(layout.params))
    reference = jacrev(lambda flat: residuals(functional_call(model, layout.as_dict(flat), (t,)), y))(layout.get_flat())
    torch.testing.assert_close(J, reference, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(z, residuals(model(t), y).detach())
    if model_factory is Awkward:
        assert torch.equal(J[:, -1], torch.zeros(37, dtype=torch.float64))  # the unused parameter's column


def test_full_engine_takes_the_small_path_only_with_few_parameters(monkeypatch):
    calls = []
    import marquardt.curvature.jacobian as jacobian

    original = jacobian._jacobian_by_dual_passes
    monkeypatch.setattr(jacobian, "_jacobian_by_dual_passes", lambda *a: (calls.append(1), original(*a))[1])
    t, y = exponential_data(50)
    LevenbergMarquardt(Exponential(), residuals).step(t, y)
    first = len(calls)
    assert first >= 1  # (the first small Jacobian also times forward against reverse mode)
    x, target = sine_data(40, dtype=torch.float64)
    LevenbergMarquardt(sine_mlp(4).double(), residuals).step(x, target)  # 17 parameters: jacfwd / jacrev
    assert len(calls) == first and FullJacobian.SMALL_MAX_PARAMETERS < 17


class ScalarHeavy(torch.nn.Module):
    """Chebyshev polynomials by their recurrence, written with Python numbers (2·y·T − T'): slow on dual tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(torch.linspace(0.1, 0.9, 6, dtype=torch.float64))

    def forward(self, _inputs):
        y = 2 * self.x - 1
        polys = [torch.ones_like(y), y]
        for _ in range(40):
            polys.append(2 * y * polys[-1] - polys[-2])
        return torch.stack([1.0 * p.mean() - 0.5 for p in polys[1:]])


def test_the_small_jacobian_takes_reverse_mode_where_forward_mode_is_slow_and_both_agree():
    """Forward mode is kept for the exponential (about 2x faster) and left for code full of Python numbers (reverse
    mode about 10x faster there); the Jacobian is the same either way, and autograd's."""
    zeros = torch.zeros(1, dtype=torch.float64)
    slow = LevenbergMarquardt(ScalarHeavy(), lambda r, _t: r)
    slow.step(zeros)
    assert slow.objective.engine.forward_mode_pays is False
    t, y = exponential_data(50)
    fast = LevenbergMarquardt(Exponential(), residuals)
    fast.step(t, y)
    assert fast.objective.engine.forward_mode_pays is True
    import marquardt.curvature.jacobian as jacobian

    model = ScalarHeavy()

    params = list(model.parameters())
    owners = jacobian.parameter_owners(model, params)
    forward, _ = jacobian._jacobian_by_dual_passes(lambda a, b: model(a), owners, params, zeros, None)
    with torch.enable_grad():
        reverse, _ = jacobian._jacobian_by_double_vjp(lambda: model(zeros), params)
        reference = torch.autograd.functional.jacobian(lambda x: torch.func.functional_call(model, {"x": x}, (zeros,)),
                                                       model.x.detach())
    torch.testing.assert_close(forward, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reverse, reference, rtol=1e-12, atol=1e-12)


def test_a_fit_times_the_small_jacobians_modes_once(monkeypatch):
    """``fit``'s solution and polish differentiate the whole batch with an engine of their own; it takes the mode
    that the step's engine timed, so the race of forward against reverse mode runs once per fit, not twice."""
    import marquardt.curvature.jacobian as jacobian

    races = []
    timed = jacobian._faster_of
    monkeypatch.setattr(jacobian, "_faster_of", lambda *args: races.append(args) or timed(*args))
    t, y = exponential_data(50)
    opt = LevenbergMarquardt(Exponential(), residuals)
    result = marquardt.fit(opt, t, y)
    assert result.polish_steps >= 1 and len(races) == 1
    objective = opt.objective
    assert objective._least_squares_engine.modes is objective.engine.modes
    assert objective.engine.forward_mode_pays is not None


def test_the_race_of_the_two_modes_gives_the_first_jacobian(monkeypatch):
    """The first small Jacobian runs each mode three times (one untimed run, two timed); the kept mode's last run
    is the step's Jacobian, not computed a seventh time, and equals autograd's."""
    import marquardt.curvature.jacobian as jacobian

    runs = []
    for name in ("_jacobian_by_dual_passes", "_jacobian_by_double_vjp"):
        original = getattr(jacobian, name)
        monkeypatch.setattr(jacobian, name, lambda *a, _f=original, _n=name: runs.append(_n) or _f(*a))
    t, y = exponential_data(50)
    model = Exponential()
    engine = LevenbergMarquardt(model, residuals).objective.engine
    J, z = engine.output_jacobian(t, y)
    assert sorted(runs) == ["_jacobian_by_double_vjp"] * 3 + ["_jacobian_by_dual_passes"] * 3
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    names = [name for name, _ in model.named_parameters()]

    def residual_of(flat):
        return residuals(functional_call(model, dict(zip(names, flat.split(1), strict=True)), (t,)), y)

    torch.testing.assert_close(J.reshape(z.numel(), -1), jacrev(residual_of)(theta).reshape(z.numel(), -1))


def test_a_batch_changed_in_place_is_checked_again():
    t, y = exponential_data(60)
    opt = LevenbergMarquardt(Exponential(), residuals)
    opt.step(t, y)
    y[3] = float("nan")  # in place: the version counter moves, so the finiteness scan runs again
    with pytest.raises(ValueError, match="targets: contains NaN or Inf"):
        opt.step(t, y)


def _objective(model, loss="mse"):
    layout = ParameterLayout.of(model)
    curvature = make_curvature(loss, None)
    return Objective(model, layout, curvature, None, "auto", Communicator(False))


def test_batch_changed_recognises_the_same_and_new_batches():
    x, y = sine_data(30, dtype=torch.float64)
    objective = _objective(sine_mlp(3).double())
    for first, second, expected in [
        ((x, y), (x, y), False),  # the same tensors: no look at the data
        ((x, y), (x.clone(), y.clone()), False),  # equal copies: the fingerprint matches
        ((x, y), (x, y + 1.0), True),  # other targets
        ((x, y), (x[:20], y[:20]), True),  # another shape
    ]:
        objective = _objective(sine_mlp(3).double())
        objective.check_batch(*first)
        assert objective.batch_changed(*first) is None  # the first batch
        objective.commit_batch()  # (its step succeeded)
        objective.check_batch(*second)
        assert objective.batch_changed(*second) is expected
        objective.commit_batch()
    objective.check_batch(x, y)
    objective.batch_changed(x, y)
    objective.commit_batch()
    y.add_(1.0)  # the same tensor changed in place
    objective.check_batch(x, y)
    assert objective.batch_changed(x, y) is True
    objective.check_batch(x, y + 5.0)
    assert objective.batch_changed(x, y + 5.0) is True  # never committed (a refused step): the reference stays


@pytest.mark.parametrize("setting, expected", [(None, 30), (0.25, 8), (7, 7), (100, 30), (1e-9, 1)])
def test_prepare_counts_curvature_samples(setting, expected):
    x, y = sine_data(30, dtype=torch.float64)
    objective = _objective(sine_mlp(3).double())
    noise = NoiseReplay(torch.device("cpu"))
    batch = objective.prepare(x, y, noise, setting, "mean")
    assert batch.curvature_samples == expected and batch.samples == 30 and batch.alpha == 1 / 30
    assert batch.subsampled == (expected < 30) and batch.problem.rows == expected
    assert objective.prepare(x, y, noise, setting, "sum").alpha == 1.0


def test_second_order_residual_rows_and_gradient_agree():
    """α 𝒥ᵀ (rows) = gradient(): both forms of ρ_vv describe the same right-hand side (Gauss-Newton: 𝒥 = J_z)."""
    x, y = sine_data(25, dtype=torch.float64)
    model = sine_mlp(3).double()
    objective = _objective(model)
    noise = NoiseReplay(torch.device("cpu"))
    batch = objective.prepare(x, y, noise, None, "mean")
    batch.chunks = [(x[:10], y[:10], None), (x[10:], y[10:], None)]
    theta = objective.layout.get_flat()
    v = torch.randn_like(theta)
    residual = objective.second_order_residual(v, theta, batch, noise, torch.float64)
    J = jacrev(lambda flat: functional_call(model, objective.layout.as_dict(flat), (x,)))(theta).reshape(25, -1)
    torch.testing.assert_close(batch.alpha * J.T @ residual.rows(), residual.gradient(), rtol=1e-12, atol=1e-14)
    assert isinstance(objective.curvature, GaussNewtonMSE)


class Tied(nn.Module):
    """One parameter held by two modules (tied weights): both uses must carry its derivative."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(1, 1).double()
        self.second = nn.Linear(1, 1).double()
        self.second.weight = self.first.weight

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(t.unsqueeze(1)))).squeeze(1)


class NoForwardMode(torch.autograd.Function):
    """An operation with a backward formula only: forward mode fails on it, reverse mode twice must take over."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.cos()


class WithCustomOp(Exponential):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return NoForwardMode.apply(self.a * t) + self.b * t + self.c


@pytest.mark.parametrize("model_factory", [Exponential, Awkward, Tied, WithCustomOp])
def test_small_jacobian_of_the_full_engine_equals_reverse_mode(model_factory):
    torch.manual_seed(0)
    model = model_factory()
    layout = ParameterLayout.of(model)
    t, y = exponential_data(23)
    engine = FullJacobian(lambda p, x, yy: residuals(functional_call(model, p, (x,)), yy), layout, residual_mode=True,
                          module_outputs=lambda x, yy: residuals(model(x), yy), model=model)
    rows, rho, losses = engine.rows(t, y, GaussNewtonMSE())
    # (torch.autograd.functional: one reverse pass per output, which takes functions without forward formulas)
    reference = torch.autograd.functional.jacobian(
        lambda flat: residuals(functional_call(model, layout.as_dict(flat), (t,)), y), layout.get_flat())
    torch.testing.assert_close(rows, reference, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(rho, residuals(model(t), y).detach())
    assert engine.forward_mode_failed == (model_factory is WithCustomOp)
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())  # every parameter put back
    if model_factory is Tied:
        assert model.second.weight is model.first.weight


class ReusedOnSomeBatches(nn.Module):
    """Calls its middle layer twice once ``twice`` is set (after the first batch): the fast engine, chosen on the
    first batch, cannot form those rows, and the objective must switch to torch.func for good. (A switch on the
    batch size would make the model's batches of 7 another function than its samples: separable.py refuses
    that.)"""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.middle, self.last = nn.Linear(1, 4), nn.Linear(4, 4), nn.Linear(4, 1)
        self.twice = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.middle(torch.tanh(self.first(x))))
        if self.twice:
            h = torch.tanh(self.middle(h))
        return self.last(h)


def test_an_engine_that_fails_mid_run_hands_over_to_torch_func():
    from marquardt import LevenbergMarquardt

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 1, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g,
                                                                                 dtype=torch.float64))
               for n in (10, 7, 7)]
    thetas = []
    for engine in ("auto", "functorch"):
        torch.manual_seed(0)
        model = ReusedOnSomeBatches().double()
        opt = LevenbergMarquardt(model, "mse", engine=engine, momentum=None)
        names = []
        for x, y in batches:
            opt.step(x, y)
            names.append(opt.objective.engine.name)
            model.twice = True
        thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        if engine == "auto":
            assert names == ["fast", "functorch", "functorch"]
    torch.testing.assert_close(thetas[0], thetas[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("outputs", ["quadratic", "mlp", "linear"])
def test_reverse_mode_second_directional_derivative_equals_jvp_of_jvp(outputs):
    from marquardt.curvature.second_order import _second_directional_by_reverse_mode, second_directional_derivative

    torch.manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64)
    if outputs == "quadratic":  # z = (θ·x)², z_vv = 2 (v·x)² in closed form
        def fn(t):
            return (x @ t) ** 2
        theta, v = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        expected = 2 * (x @ v) ** 2
    else:
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double() if outputs == "mlp" else \
            nn.Linear(3, 2).double()
        layout = ParameterLayout.of(model)

        def fn(t):
            return functional_call(model, layout.as_dict(t), (x,))
        theta, v = layout.get_flat(), torch.randn(layout.numel, dtype=torch.float64)
        expected = second_directional_derivative(fn, theta, v)
    got = _second_directional_by_reverse_mode(fn, theta, v)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if outputs == "linear":
        assert torch.equal(got, torch.zeros_like(got))


class TwoOutputsWithCustomOp(WithCustomOp):
    """Outputs [N, 2]: the Jacobian's parameter axis is the last one, not the second."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        z = super().forward(t)
        return torch.stack([z, self.a * z], dim=1)


def test_small_jacobians_keep_the_parameter_axis_last_for_several_outputs():
    torch.manual_seed(0)
    model = TwoOutputsWithCustomOp()
    layout = ParameterLayout.of(model)
    t, _ = exponential_data(7)
    y = torch.zeros(7, 2, dtype=torch.float64)
    engine = FullJacobian(lambda p, x, yy: functional_call(model, p, (x,)) - yy, layout, residual_mode=True,
                          module_outputs=lambda x, yy: model(x) - yy, model=model)
    J, z = engine.output_jacobian(t, y)
    reference = torch.autograd.functional.jacobian(lambda flat: functional_call(model, layout.as_dict(flat), (t,)),
                                                   layout.get_flat())
    assert J.shape == (7, 2, 3) and engine.forward_mode_failed
    torch.testing.assert_close(J, reference, rtol=1e-13, atol=1e-15)
