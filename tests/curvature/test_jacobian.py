"""The Jacobian engines against each other and against torch.func.jacrev of the whole batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from marquardt.curvature.jacobian import (
    FastPathJacobian,
    FullJacobian,
    FunctorchJacobian,
    NotApplicable,
    _jacobian_by_double_vjp,
    _per_sample_weight_grad_by_grouped_conv,
)
from marquardt.curvature.modes import make_curvature
from marquardt.curvature.noise import NoiseReplay
from marquardt.types.layout import ParameterLayout


def mlp():
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()


def cnn2d(act=nn.ReLU):
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), act(), nn.MaxPool2d(2), nn.Conv2d(2, 3, 3, stride=2, dilation=1),
        act(), nn.Flatten(), nn.Linear(3, 4),
    ).double()


def cnn2d_wide():
    """A second convolution with Cin·k² = 72 > GROUPED_CONV_MAX_PATCH: its rows come from unfold + bmm."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.Tanh(), nn.Conv2d(8, 2, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
        nn.Linear(2 * 4 * 4, 4),
    ).double()


def cnn1d():
    return nn.Sequential(nn.Conv1d(2, 3, 3, padding=2, dilation=2), nn.ELU(), nn.Flatten(), nn.Linear(3 * 6, 4)).double()


def positional_mlp():
    """A Linear layer applied at every position of a sequence (inputs [S, P, in]), then a classifier."""
    return nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 2, 4)).double()


CASES = {
    "mlp": (mlp, (6, 3)),
    "positional_mlp": (positional_mlp, (5, 4, 3)),
    "cnn2d": (cnn2d, (5, 1, 8, 8)),
    "cnn2d_wide": (cnn2d_wide, (4, 1, 9, 9)),
    "cnn1d": (cnn1d, (4, 2, 6)),
}


def reference_rows(model, layout, curvature, x, y):
    """Dense reference: jacrev of the whole batch output, then the per-sample weights."""
    theta = layout.get_flat()

    def f(t):
        z = functional_call(model, layout.as_dict(t), (x,))
        return z, z

    Jz, z = jacrev(f, has_aux=True)(theta)  # one forward pass: one noise draw
    Jz = Jz.reshape(x.shape[0], -1, layout.numel)
    W, rho = curvature.weights(z, y)
    return torch.einsum("scq,scn->qsn", W, Jz).reshape(-1, layout.numel), rho.T.reshape(-1)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["gn", "ggn", "ef"])
def test_engines_match_jacrev(case, mode):
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = build()
    layout = ParameterLayout.of(model)
    x = torch.randn(*shape, dtype=torch.float64)
    if mode == "gn":
        curvature = make_curvature("mse", "gn")
        y = torch.randn(shape[0], 4, dtype=torch.float64)
    else:
        curvature = make_curvature("cross_entropy", mode)
        y = torch.randint(0, 4, (shape[0],))
    ref_rows, ref_rho = reference_rows(model, layout, curvature, x, y)
    for engine in (FastPathJacobian(model, layout), FunctorchJacobian(model, layout)):
        rows, rho, losses = engine.rows(x, y, curvature)
        torch.testing.assert_close(rows, ref_rows, rtol=1e-10, atol=1e-12, msg=f"{engine.name} rows")
        torch.testing.assert_close(rho, ref_rho, msg=f"{engine.name} rho")
        torch.testing.assert_close(losses, curvature.per_sample_loss(model(x), y))
    full = FullJacobian(lambda p, xx, yy: functional_call(model, p, (xx,)), layout)
    rows, rho, _ = full.rows(x, y, curvature)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-10, atol=1e-12)


def test_fast_path_with_train_mode_rrelu_reuses_the_noise():
    """The paper's CNN uses RReLU, which vmap cannot run; the fast path matches jacrev under fixed noise."""
    torch.manual_seed(0)
    model = cnn2d(nn.RReLU).train()
    layout = ParameterLayout.of(model)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (4,))
    curvature = make_curvature("cross_entropy", "ggn")
    noise = NoiseReplay(layout.device)
    noise.replay()
    rows, rho, _ = FastPathJacobian(model, layout).rows(x, y, curvature)
    noise.replay()
    ref_rows, ref_rho = reference_rows(model, layout, curvature, x, y)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rho, ref_rho)
    noise.replay()
    z1 = model(x)
    noise.replay()
    z2 = model(x)
    assert torch.equal(z1, z2), "replaying the noise must reproduce the forward pass exactly"


def test_fast_path_refuses_unsupported_layers():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    with pytest.raises(NotApplicable, match="LayerNorm"):
        FastPathJacobian(model, ParameterLayout.of(model))


def test_frozen_layers_and_scalar_parameters():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2).double()
            self.scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))  # 0-dim parameter
            self.frozen = nn.Linear(2, 2).double().requires_grad_(False)

        def forward(self, x):
            return self.frozen(self.lin(x)) * self.scale

    model = Scaled()
    layout = ParameterLayout.of(model)
    assert layout.numel == 2 * 2 + 2 + 1
    x = torch.randn(3, 2, dtype=torch.float64)
    y = torch.randn(3, 2, dtype=torch.float64)
    curvature = make_curvature("mse", None)
    rows, _, _ = FunctorchJacobian(model, layout).rows(x, y, curvature)
    ref, _ = reference_rows(model, layout, curvature, x, y)
    torch.testing.assert_close(rows, ref)


@pytest.mark.parametrize("S,c_in,hw,c_out,kernel,stride,dilation,padding", [
    (1, 1, (9, 9), 2, (3, 3), (1, 1), (1, 1), (0, 0)),  # one sample
    (3, 2, (10, 7), 3, (3, 2), (2, 3), (1, 1), (1, 0)),  # strides that leave a remainder, a non-square kernel
    (2, 3, (11, 11), 1, (3, 3), (3, 2), (2, 1), (2, 1)),  # dilation with stride
    (4, 2, (1, 13), 2, (1, 3), (1, 2), (1, 2), (0, 1)),  # a Conv1d as a 2-d convolution of height 1
])
def test_grouped_conv_weight_grad_equals_autograd(S, c_in, hw, c_out, kernel, stride, dilation, padding):
    """Per-sample, per-direction weight gradients ∂⟨δ_{s,k}, conv(a_s; w)⟩/∂w against torch.func.grad."""
    torch.manual_seed(1)
    q = 2
    a = torch.randn(S, c_in, *hw, dtype=torch.float64)
    w = torch.randn(c_out, c_in, *kernel, dtype=torch.float64)
    conv = lambda ww, xs: torch.nn.functional.conv2d(xs, ww, stride=stride, padding=padding, dilation=dilation)  # noqa: E731
    delta = torch.randn(S, q, *conv(w, a).shape[1:], dtype=torch.float64)
    ours = _per_sample_weight_grad_by_grouped_conv(a, delta, kernel, dilation, padding, stride)
    for s in range(S):
        for k in range(q):
            ref = torch.func.grad(lambda ww: (conv(ww, a[s : s + 1])[0] * delta[s, k]).sum())(w)
            torch.testing.assert_close(ours[s, k], ref.reshape(-1), rtol=1e-10, atol=1e-12)


class TiedPair(nn.Module):
    """Two Linear layers holding the same weight (b.weight = a.weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_tied_weights_leave_the_fast_path_and_the_first_step_is_exact():
    """A parameter held by two layers: the fast engine would keep one owner's share; 'auto' takes torch.func,
    and the first LM step equals one computed by hand in float64 from the whole Jacobian."""
    import marquardt

    torch.manual_seed(0)
    model = TiedPair().double()
    with pytest.raises(NotApplicable, match="tied"):
        FastPathJacobian(model, ParameterLayout.of(model))
    x = torch.randn(25, 3, dtype=torch.float64)
    y = torch.randn(25, 3, dtype=torch.float64)
    layout = ParameterLayout.of(model)
    theta0 = layout.get_flat()
    J = jacrev(lambda flat: functional_call(model, layout.as_dict(flat), (x,)))(theta0).reshape(-1, layout.numel)
    r = (model(x) - y).detach().reshape(-1)
    A, g = J.T @ J / 25, J.T @ r / 25
    d = torch.maximum(torch.full_like(g, 0.01), A.diagonal())
    expected = -torch.linalg.solve(A + torch.diag(d), g)
    opt = marquardt.LevenbergMarquardt(model, "mse", momentum=None)
    info = opt.step(x, y)
    assert info.engine == "functorch" and info.accepted
    torch.testing.assert_close(layout.get_flat() - theta0, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="engine='fast' cannot handle this model: .*tied"):
        marquardt.LevenbergMarquardt(TiedPair().double(), "mse", engine="fast")


def test_unit_tangents_are_the_identity_shaped_like_the_parameter_and_kept():
    from marquardt.curvature import jacobian

    q = torch.zeros(3, 7, 2, dtype=torch.float64)  # a shape no other test asks for: built here, not cached
    jacobian._UNIT_TANGENTS.pop((tuple(q.shape), q.dtype, q.device), None)
    units = jacobian._unit_tangents(q)
    assert len(units) == 42 and all(u.shape == q.shape and u.dtype == q.dtype for u in units)
    torch.testing.assert_close(torch.stack([u.reshape(-1) for u in units]), torch.eye(42, dtype=torch.float64))
    assert jacobian._unit_tangents(q) is units  # kept for the next step


def test_the_unit_tangent_cache_is_bounded(monkeypatch):
    from marquardt.curvature import jacobian

    monkeypatch.setattr(jacobian, "_UNIT_TANGENTS", {})
    for size in range(1, 258):
        jacobian._unit_tangents(torch.zeros(size))
    assert len(jacobian._UNIT_TANGENTS) == 257
    jacobian._unit_tangents(torch.zeros(300))  # past 256 kept shapes: dropped, then this one kept
    assert len(jacobian._UNIT_TANGENTS) == 1


class SideBranch(nn.Module):
    """A layer that runs but does not reach the output: its columns of the rows are zero."""

    def __init__(self):
        super().__init__()
        self.main = nn.Linear(3, 4).double()
        self.side = nn.Linear(3, 2).double()
        self.last = nn.Linear(4, 2).double()

    def forward(self, x):
        self.side(x)  # computed and thrown away
        return self.last(torch.tanh(self.main(x)))


def test_a_layer_off_the_output_path_gets_zero_columns():
    torch.manual_seed(0)
    model = SideBranch()
    layout = ParameterLayout.of(model)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    curvature = make_curvature("mse", "gn")
    ref_rows, ref_rho = reference_rows(model, layout, curvature, x, y)
    torch.empty(ref_rows.numel(), dtype=torch.float64).fill_(float("nan"))  # (leaves NaN in freed memory)
    rows, rho, _ = FastPathJacobian(model, layout).rows(x, y, curvature)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-10, atol=1e-12)
    side = [layout.slice_of(i) for i, name in enumerate(layout.names) if name.startswith("side.")]
    assert all(torch.equal(rows[:, s], torch.zeros_like(rows[:, s])) for s in side) and len(side) == 2
    factored, rho_f, _ = FastPathJacobian(model, layout).factors(x, y, curvature)
    v = torch.randn(layout.numel, dtype=torch.float64)
    torch.testing.assert_close(factored.matvec(v), ref_rows @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(factored.column_sq_norms(), (ref_rows**2).sum(0), rtol=1e-10, atol=1e-12)


class Bare(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * self.lin(x)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("model,message", [
    (lambda: nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), "LayerNorm has trainable parameters"),
    (lambda: nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten()), "grouped, non-zero-padded or "
                                                                         "'same'-padded convolution"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten()),
     "grouped, non-zero-padded or 'same'-padded convolution"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten()), "grouped, non-zero-padded or "
                                                                              "'same'-padded convolution"),
    (Bare, "Bare has trainable parameters"),
    (Tied, r"a parameter is held by several layers \(tied weights\)"),
])
def test_the_fast_engine_names_what_it_cannot_follow(model, message):
    from marquardt import LevenbergMarquardt

    with pytest.raises(ValueError, match=f"^engine='fast' cannot handle this model: {message}$"):
        LevenbergMarquardt(model(), "mse", engine="fast")


def test_double_vjp_gives_zero_columns_for_unused_parameters_and_constant_outputs():
    x = torch.linspace(0, 1, 5, dtype=torch.float64)
    a = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    unused = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    J, z = _jacobian_by_double_vjp(lambda: a * x**2, [a, unused])
    torch.testing.assert_close(J, torch.stack([x**2, torch.zeros_like(x)], dim=-1))
    assert torch.equal(z, 2.0 * x**2) and not z.requires_grad
    J, z = _jacobian_by_double_vjp(lambda: x * 1.0, [a, unused])  # no parameter at all
    assert torch.equal(J, torch.zeros(5, 2, dtype=torch.float64)) and torch.equal(z, x)
    J, z = _jacobian_by_double_vjp(lambda: torch.round(a) * x, [a, unused])  # a path without a derivative
    assert torch.equal(J, torch.zeros(5, 2, dtype=torch.float64)) and torch.equal(z, 2.0 * x)


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_the_batched_second_pass_gives_the_columns_of_the_loop_and_of_jacrev(scale):
    """The n backward passes of reverse mode twice, run as one vmap'd pass, give bit for bit the columns that the
    loop over parameters gives, on every Moré-Garbow-Hillstrom problem (code full of Python numbers, products,
    exponentials, trigonometry), and jacrev's to rounding."""
    from tests.optim.mgh import all_problems, more_problems

    for name, make in all_problems() + more_problems():
        problem = make()
        with torch.no_grad():
            problem.x.mul_(scale)
        params = list(problem.parameters())
        with torch.enable_grad():
            batched, z = _jacobian_by_double_vjp(lambda: problem.residuals(problem.x), params)
            looped, z_looped = _jacobian_by_double_vjp(lambda: problem.residuals(problem.x), params, batched=False)
        assert torch.equal(batched, looped) and torch.equal(z, z_looped), name
        reference = jacrev(problem.residuals)(problem.x.detach())
        torch.testing.assert_close(batched, reference, rtol=1e-12, atol=1e-12 * float(reference.abs().max()))


def test_a_model_whose_backward_cannot_be_batched_gets_the_loop(monkeypatch):
    """Where the batched second pass raises (an operation whose backward has no batching rule), the engine
    remembers it and runs the loop over parameters from then on: one failed attempt, the same Jacobian."""
    import marquardt
    from tests.models import Exponential, exponential_data, residuals

    t, y = exponential_data(30)
    healthy = marquardt.LevenbergMarquardt(Exponential(), residuals).objective.engine
    expected, _ = healthy.output_jacobian(t, y)
    attempts = []
    grad = torch.autograd.grad

    def refusing(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            attempts.append(1)
            raise RuntimeError("no batching rule")
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", refusing)
    engine = marquardt.LevenbergMarquardt(Exponential(), residuals).objective.engine
    engine.modes.forward_failed = True  # (reverse mode only)
    for _ in range(3):
        J, _ = engine.output_jacobian(t, y)
        torch.testing.assert_close(J, expected, rtol=1e-13, atol=1e-13)
    assert engine.modes.batched_reverse_failed and len(attempts) == 1


def test_the_reverse_jacobian_differentiates_one_forward_pass_with_random_draws():
    """Train-mode RReLU draws random slopes, which torch.func's transforms refuse: the batched backward pass
    through one forward pass (so one draw of the slopes) gives J, equal to one backward pass per output."""
    torch.manual_seed(0)
    x = torch.randn(5, dtype=torch.float64)
    rrelu = nn.RReLU()

    def outputs(t):
        z = rrelu(t[0] * x) * t[1]
        return z, z

    theta = torch.tensor([1.5, -0.7], dtype=torch.float64)
    torch.manual_seed(3)
    J, z = FullJacobian._reverse_jacobian(outputs, theta)
    torch.manual_seed(3)
    with torch.enable_grad():
        t = theta.clone().requires_grad_(True)
        reference = outputs(t)[0]
        rows = [torch.autograd.grad(reference[k], t, retain_graph=True)[0] for k in range(5)]
    torch.testing.assert_close(J, torch.stack(rows))
    torch.testing.assert_close(z, reference.detach())
    assert not z.requires_grad


@pytest.mark.parametrize("build,shape", [
    (lambda: nn.Sequential(nn.Conv1d(9, 2, 8, stride=2, dilation=2), nn.Tanh(), nn.Flatten(),
                           nn.Linear(2 * 4, 3)).double(), (4, 9, 22)),  # Cin·k = 72: unfold, not grouped conv
    (lambda: nn.Sequential(nn.Conv2d(5, 2, (3, 5), stride=(2, 1), dilation=(1, 2), padding=(1, 0)), nn.Tanh(),
                           nn.Flatten(), nn.Linear(2 * 3 * 2, 3)).double(), (3, 5, 5, 10)),  # Cin·kh·kw = 75
])
def test_large_convolution_patches_go_through_unfold_exactly(build, shape):
    torch.manual_seed(0)
    model = build()
    layout = ParameterLayout.of(model)
    x, y = torch.randn(*shape, dtype=torch.float64), torch.randn(shape[0], 3, dtype=torch.float64)
    curvature = make_curvature("mse", "gn")
    ref_rows, ref_rho = reference_rows(model, layout, curvature, x, y)
    rows, rho, _ = FastPathJacobian(model, layout).rows(x, y, curvature)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-10, atol=1e-12)
