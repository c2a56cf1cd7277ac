"""Every path a user can take computes the right thing or refuses clearly, and a refusal leaves no trace."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import marquardt
from marquardt import LevenbergMarquardt
from tests.models import Exponential, exponential_data, residuals, sine_data, sine_mlp


def _snapshot(model: nn.Module, opt: LevenbergMarquardt):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state())


def _assert_unchanged(model: nn.Module, opt: LevenbergMarquardt, snapshot) -> None:
    params, state, rng = snapshot
    for key, value in model.state_dict().items():
        assert torch.equal(value, params[key]), key
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert now["state"].keys() == state["state"].keys()
    for index, entries in state["state"].items():
        assert entries.keys() == now["state"][index].keys()
        for key, value in entries.items():
            other = now["state"][index][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key
    assert torch.equal(torch.get_rng_state(), rng)


def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.RReLU(), nn.Dropout(0.1), nn.Linear(8, 3)).double()


def _classes(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


#: (description, call on (model, opt, x, labels) that must raise, the exception type, words of its message)
REFUSED_STEPS = [
    ("labels out of range", lambda m, o, x, t: o.step(x, t + 5), ValueError, "class indices must lie in"),
    ("targets of another batch size", lambda m, o, x, t: o.step(x, t[:-1]), ValueError, "batch size"),
    ("NaN inputs", lambda m, o, x, t: o.step(x * math.nan, t), ValueError, "inputs: contains NaN"),
    ("float32 inputs", lambda m, o, x, t: o.step(x.float(), t), ValueError, "dtype torch.float32"),
    ("no inputs", lambda m, o, x, t: o.step(None, t), TypeError, "inputs: expected a torch.Tensor"),
    ("complex inputs", lambda m, o, x, t: o.step(x.to(torch.complex128), t), TypeError, "inputs: complex"),
    ("no targets", lambda m, o, x, t: o.step(x), ValueError, "targets: required"),
    ("probabilities not summing to 1", lambda m, o, x, t: o.step(x, torch.full((len(x), 3), 0.5, dtype=x.dtype)),
     ValueError, "sum to 1"),
    ("negative probabilities", lambda m, o, x, t: o.step(x, torch.tensor([[1.5, -0.5, 0.0]] * len(x), dtype=x.dtype)),
     ValueError, ">= 0"),
]


@pytest.mark.parametrize("case", REFUSED_STEPS, ids=[c[0] for c in REFUSED_STEPS])
def test_a_refused_step_leaves_no_trace(case):
    """Parameters, the whole optimizer state (λ, d, counters, the mini-batch flag) and the random generator are
    bit for bit as before, and the next valid steps are those of an optimizer that never saw the refused call."""
    _, call, error, words = case
    x, labels = _classes()
    x2, labels2 = _classes(seed=1)
    model, twin = _classifier(), _classifier()
    opt, twin_opt = LevenbergMarquardt(model, "cross_entropy"), LevenbergMarquardt(twin, "cross_entropy")
    torch.manual_seed(3)
    opt.step(x, labels)
    torch.manual_seed(3)
    twin_opt.step(x, labels)
    snapshot = _snapshot(model, opt)
    with pytest.raises(error, match=words):
        call(model, opt, x, labels)
    _assert_unchanged(model, opt, snapshot)
    for seed, batch in enumerate(((x, labels), (x2, labels2), (x2, labels2))):
        torch.manual_seed(seed)  # (one generator for both: the same draw for each)
        a = opt.step(*batch)
        torch.manual_seed(seed)
        b = twin_opt.step(*batch)
        assert (a.loss_after, a.lam, a.reason) == (b.loss_after, b.lam, b.reason)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_a_refused_first_step_leaves_an_empty_state():
    x, labels = _classes()
    model = _classifier()
    opt = LevenbergMarquardt(model, "cross_entropy")
    snapshot = _snapshot(model, opt)
    with pytest.raises(ValueError):
        opt.step(x, labels + 7)
    _assert_unchanged(model, opt, snapshot)
    assert opt.state_dict()["state"] == {}


def test_a_step_that_fails_inside_leaves_no_trace(monkeypatch):
    x, y = sine_data(100, dtype=torch.float64)
    model = sine_mlp(4).double()
    opt = LevenbergMarquardt(model, "mse")
    opt.step(x, y)
    snapshot = _snapshot(model, opt)
    monkeypatch.setattr(opt.objective, "loss_at", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        opt.step(x, y)
    _assert_unchanged(model, opt, snapshot)


def test_a_residual_callable_returning_a_scalar_is_refused():
    t, y = exponential_data(50)
    opt = LevenbergMarquardt(Exponential(), lambda z, target: ((z - target) ** 2).mean())
    with pytest.raises(ValueError, match="returned a scalar; LM needs the residuals"):
        opt.step(t, y)


def test_broadcasting_residuals_are_refused_with_both_shapes():
    x = torch.linspace(0, 1, 20, dtype=torch.float64).unsqueeze(1)
    y = 3.0 * x.squeeze(1)
    opt = LevenbergMarquardt(nn.Linear(1, 1).double(), lambda z, target: z - target)
    with pytest.raises(ValueError, match=r"400 residuals of shape \(20, 20\).*output has shape \(20, 1\).*\(20,\)"):
        opt.step(x, y)
    fitted = LevenbergMarquardt(nn.Linear(1, 1).double(), lambda z, target: z.squeeze(1) - target)
    result = marquardt.fit(fitted, x, y)
    assert result.converged and abs(float(fitted.model.weight) - 3.0) < 1e-8  # shaped right, it fits the slope


def test_one_logit_cross_entropy_is_refused():
    x = torch.randn(16, 4)
    opt = LevenbergMarquardt(nn.Linear(4, 1), "cross_entropy")
    with pytest.raises(ValueError, match="at least 2 logits.*binary cross-entropy"):
        marquardt.fit(opt, x, (x[:, :1] > 0).float())
    with pytest.raises(ValueError, match="at least 2 logits"):
        opt.step(x, (x[:, 0] > 0).long())


class TupleOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x):
        return self.linear(x), x


@pytest.mark.parametrize("loss", ["mse", residuals])
def test_model_outputs_that_are_not_one_tensor_are_refused(loss):
    opt = LevenbergMarquardt(TupleOutput(), loss)
    with pytest.raises(TypeError, match="model output: expected one tensor, got tuple"):
        opt.step(torch.randn(5, 2), torch.randn(5, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_refused_at_construction(dtype):
    with pytest.raises(ValueError, match="float32 or float64.*model.float"):
        LevenbergMarquardt(nn.Linear(2, 1).to(dtype), "mse")


def test_fit_stops_at_once_on_a_non_finite_start():
    t, y = exponential_data(30)
    model = Exponential(a=1e308, b=-5.0)  # the loss overflows to inf at the start
    result = marquardt.fit(LevenbergMarquardt(model, residuals), t, y, max_iterations=200)
    assert result.iterations == 1 and result.reason == "not_finite" and not result.converged
    assert "not finite" in result.history[0].notes[0]


@pytest.mark.parametrize("bad", [dict(ftol="x"), dict(xtol=-1.0), dict(gtol=math.nan), dict(max_iterations=2.5),
                                 dict(max_iterations=0)])
def test_fit_arguments_are_checked_by_name(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        marquardt.fit(LevenbergMarquardt(Exponential(), residuals), *exponential_data(10), **bad)


@pytest.mark.parametrize("engine", ["auto", "fast", "functorch", "full"])
def test_a_compiled_model_trains_on_the_uncompiled_trajectory(engine):
    x, y = sine_data(60, dtype=torch.float64)
    plain = sine_mlp(5).double()
    compiled_source = copy.deepcopy(plain)
    compiled = torch.compile(compiled_source)
    a = LevenbergMarquardt(plain, "mse", engine=engine)
    b = LevenbergMarquardt(compiled, "mse", engine=engine)
    for _ in range(6):
        ia, ib = a.step(x, y), b.step(x, y)
        assert ia.loss_after == ib.loss_after and ia.engine == ib.engine
    for p, q in zip(plain.parameters(), compiled_source.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert b.model is compiled_source  # the compiled wrapper's own module, with the same parameters


def test_a_compiled_submodule_is_refused():
    inner = torch.compile(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="submodule '0' is torch.compile'd"):
        LevenbergMarquardt(nn.Sequential(inner, nn.Tanh(), nn.Linear(2, 1)), "mse")


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1)).double()


def test_train_mode_batchnorm_is_refused_before_any_forward_pass():
    model = _bn_model()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    opt = LevenbergMarquardt(model, "mse")
    snapshot = _snapshot(model, opt)
    with pytest.raises(ValueError, match="'1' is a BatchNorm in training mode.*model.eval().*engine='full'"):
        opt.step(x, y)
    _assert_unchanged(model, opt, snapshot)  # num_batches_tracked and the running statistics included
    model.eval()
    assert opt.step(x, y).accepted  # with its running statistics it is an ordinary layer


def test_train_mode_batchnorm_with_the_full_engine_matches_whole_batch_derivatives():
    """The 'full' engine differentiates the whole batch at once: its first step equals a float64 LM step built
    from torch.func's Jacobian of the whole batch (batch statistics included)."""
    from torch.func import functional_call, jacrev

    from marquardt.types.layout import ParameterLayout

    model = _bn_model()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    layout = ParameterLayout.of(model)
    theta0 = layout.get_flat()
    buffers = {k: v.clone() for k, v in model.named_buffers()}

    def outputs(flat):  # the running statistics' update lands on copies made inside the transform
        return functional_call(model, {**layout.as_dict(flat), **{k: v.clone() for k, v in buffers.items()}}, (x,))

    J = jacrev(outputs)(theta0).reshape(16, -1)
    with torch.no_grad():
        r = (outputs(theta0) - y).reshape(-1)
    A, g = J.T @ J / 16, J.T @ r / 16
    expected = -torch.linalg.solve(A + torch.diag(torch.maximum(torch.full_like(g, 0.01), A.diagonal())), g)
    info = LevenbergMarquardt(model, "mse", engine="full", momentum=None, memory_budget=2**20).step(x, y)
    assert info.engine == "full" and info.accepted
    torch.testing.assert_close(layout.get_flat() - theta0, expected, rtol=1e-9, atol=1e-12)


class GRUHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2, 4, batch_first=True)
        self.out = nn.Linear(4, 1)

    def forward(self, x):
        return self.out(self.gru(x)[0][:, -1])


def test_a_model_vmap_cannot_batch_falls_back_to_the_full_engine():
    torch.manual_seed(0)
    model = GRUHead().double()
    x, y = torch.randn(12, 5, 2, dtype=torch.float64), torch.randn(12, 1, dtype=torch.float64)
    reference = copy.deepcopy(model)
    auto = LevenbergMarquardt(model, "mse").step(x, y)
    full = LevenbergMarquardt(reference, "mse", engine="full").step(x, y)
    assert auto.engine == "full" and (auto.loss_after, auto.reason) == (full.loss_after, full.reason)


@pytest.mark.parametrize("change", ["replace", "freeze", "unfreeze"])
def test_a_model_changed_after_construction_is_refused(change):
    x, y = sine_data(40, dtype=torch.float64)
    model = sine_mlp(3).double()
    if change == "unfreeze":
        model[0].bias.requires_grad_(False)
    opt = LevenbergMarquardt(model, "mse")
    opt.step(x, y)
    if change == "replace":
        model[2] = nn.Linear(3, 3).double()
    elif change == "freeze":
        model[0].weight.requires_grad_(False)
    else:
        model[0].bias.requires_grad_(True)
    snapshot = _snapshot(model, opt)
    with pytest.raises(ValueError, match="trainable parameters changed since the optimizer was built"):
        opt.step(x, y)
    _assert_unchanged(model, opt, snapshot)


class TwiceWithNoise(nn.Module):
    """A layer run twice (the fast path cannot follow it) and train-mode RReLU (vmap cannot batch it)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.out, self.act = nn.Linear(2, 2), nn.Linear(2, 1), nn.RReLU()

    def forward(self, x):
        return self.out(self.act(self.inner(self.act(self.inner(x)))))


def test_the_engine_gives_way_step_by_step_to_the_full_one():
    torch.manual_seed(0)
    model = TwiceWithNoise().double()
    x, y = torch.randn(10, 2, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    reference = copy.deepcopy(model)
    torch.manual_seed(1)
    auto = [LevenbergMarquardt(model, "mse").step(x, y)]
    torch.manual_seed(1)
    full = [LevenbergMarquardt(reference, "mse", engine="full").step(x, y)]
    assert auto[0].engine == "full" and (auto[0].loss_after, auto[0].reason) == (full[0].loss_after, full[0].reason)
    with pytest.raises(RuntimeError):  # asked for torch.func by name: no silent change of engine
        LevenbergMarquardt(TwiceWithNoise().double(), "mse", engine="functorch").step(x, y)


def test_a_layer_run_twice_leaves_the_fast_path_for_torch_func():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
    model = nn.Sequential(model, model, nn.Linear(2, 1)).double()  # the same block twice
    x, y = torch.randn(10, 2, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    reference = copy.deepcopy(model)
    auto = LevenbergMarquardt(model, "mse")
    assert auto.objective.engine.name == "fast"
    info = auto.step(x, y)
    expected = LevenbergMarquardt(reference, "mse", engine="functorch").step(x, y)
    assert info.engine == "functorch" and (info.loss_after, info.reason) == (expected.loss_after, expected.reason)
