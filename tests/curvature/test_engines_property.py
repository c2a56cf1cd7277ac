"""Differential tests of the Jacobian engines on generated models: every engine that accepts a model gives the
curvature A and gradient g of a float64 autograd reference (torch.func.jacrev of the whole batch).

Models are drawn from a small grammar: Linear, Conv1d/Conv2d with pooling and flatten, activations, LayerNorm,
BatchNorm in eval mode, Embedding, residual connections, a layer used twice, tied weights, frozen and unused
parameters; GRU, LSTM and self-attention heads. (torch.compile'd models and train-mode BatchNorm are routed by
the optimizer, not the engines: tests/optim/test_refusals.py.) The example budget is Hypothesis's profile: ``ci`` (default: the same 25 models at every run) or ``long``
(``HYPOTHESIS_PROFILE=long pytest tests/curvature/test_engines_property.py``, 400 models).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jacrev

from marquardt.curvature.jacobian import FastPathJacobian, FullJacobian, FunctorchJacobian, NotApplicable
from marquardt.curvature.modes import make_curvature
from marquardt.types.layout import ParameterLayout

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ACTIVATIONS = [nn.Tanh, nn.ELU, nn.Sigmoid, nn.Softplus, lambda: nn.RReLU().eval()]


class Residual(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


class Twice(nn.Module):
    """The same layer applied twice (its rows are the sum of two uses)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer = nn.Linear(width, width)

    def forward(self, x):
        return self.layer(torch.tanh(self.layer(x)))


class TiedPair(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class WithUnused(nn.Module):
    def __init__(self, inner: nn.Module, width: int) -> None:
        super().__init__()
        self.inner = inner
        self.unused = nn.Linear(width, 2)  # trainable, never called: zero columns

    def forward(self, x):
        return self.inner(x)


@st.composite
def dense_model(draw):
    """(model, inputs [N, ...]) for the dense family."""
    width = draw(st.integers(2, 5))
    embed = draw(st.booleans())
    layers: list[nn.Module] = []
    if embed:
        layers.append(nn.Embedding(7, width))
    else:
        layers.append(nn.Linear(3, width))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["linear", "act", "layernorm", "batchnorm", "residual", "twice", "tied"]))
        if kind == "linear":
            layers.append(nn.Linear(width, width))
        elif kind == "act":
            layers.append(draw(st.sampled_from(ACTIVATIONS))())
        elif kind == "layernorm":
            layers.append(nn.LayerNorm(width))
        elif kind == "batchnorm":
            bn = nn.BatchNorm1d(width)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            layers.append(bn.eval())
        elif kind == "residual":
            layers.append(Residual(nn.Sequential(nn.Linear(width, width), nn.Tanh())))
        elif kind == "twice":
            layers.append(Twice(width))
        else:
            layers.append(TiedPair(width))
    outputs = draw(st.integers(1, 3))
    layers.append(nn.Linear(width, outputs))
    model: nn.Module = nn.Sequential(*layers)
    if draw(st.booleans()):
        model = WithUnused(model, width)
    if draw(st.booleans()):  # a frozen layer: left out of θ
        first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding)))
        first.weight.requires_grad_(False)
    n = draw(st.integers(2, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randint(0, 7, (n,), generator=g) if embed else torch.randn(n, 3, generator=g, dtype=torch.float64)
    return model.double(), x, outputs


@st.composite
def conv_model(draw):
    two_d = draw(st.booleans())
    channels = draw(st.integers(1, 3))
    conv = nn.Conv2d if two_d else nn.Conv1d
    pool = nn.MaxPool2d if two_d else nn.MaxPool1d
    size = 6
    layers: list[nn.Module] = [conv(1, channels, 3, padding=draw(st.integers(0, 1)),
                                    stride=draw(st.integers(1, 2)))]
    layers.append(draw(st.sampled_from(ACTIVATIONS))())
    if draw(st.booleans()):
        layers.append(pool(2, ceil_mode=True))
    layers += [nn.Flatten(), nn.LazyLinear(draw(st.integers(1, 3)))]
    model = nn.Sequential(*layers).double()
    n = draw(st.integers(2, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    shape = (n, 1, size, size) if two_d else (n, 1, size)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    model(x)  # materialise the lazy layer
    return model, x, model[-1].out_features


class SequenceHead(nn.Module):
    """A recurrent layer or self-attention over [N, L, F] inputs, then a Linear head on the last position."""

    def __init__(self, kind: str, features: int, outputs: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "attention":
            self.body = nn.MultiheadAttention(features, num_heads=1, batch_first=True)
        else:
            self.body = (nn.GRU if kind == "gru" else nn.LSTM)(features, features, batch_first=True)
        self.head = nn.Linear(features, outputs)

    def forward(self, x):
        h = self.body(x, x, x)[0] if self.kind == "attention" else self.body(x)[0]
        return self.head(h[:, -1])


@st.composite
def sequence_model(draw):
    features, outputs = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    model = SequenceHead(draw(st.sampled_from(["gru", "lstm", "attention"])), features, outputs).double()
    n, length = draw(st.integers(2, 4)), draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return model, torch.randn(n, length, features, generator=g, dtype=torch.float64), outputs


def reference(model, x, y, curvature, layout):
    """A = (1/N) Σ J_iᵀ H_i J_i and g = (1/N) Σ J_iᵀ ∂ℓ/∂z_i from jacrev of the whole batch (float64)."""
    theta = layout.get_flat()
    J = jacrev(lambda flat: functional_call(model, layout.as_dict(flat), (x,)))(theta)  # [N, c, n]
    z = model(x).detach()
    n_samples = z.shape[0]
    J = J.reshape(n_samples, -1, layout.numel)
    W, rho = curvature.weights(z, y)  # W W^T = H, W rho = dℓ/dz
    rows = torch.einsum("scq,scn->sqn", W, J)
    A = torch.einsum("sqn,sqm->nm", rows, rows) / n_samples
    g = torch.einsum("sqn,sq->n", rows, rho) / n_samples
    return A, g


def engines(model, layout, residual_free_outputs):
    built = [FunctorchJacobian(model, layout),
             FullJacobian(lambda p, x, y: functional_call(model, p, (x,)), layout, model=model)]
    try:
        built.insert(0, FastPathJacobian(model, layout))
    except NotApplicable:
        pass
    return built


def check(model, x, outputs, loss):
    torch.manual_seed(0)
    layout = ParameterLayout.of(model)
    n = x.shape[0]
    if loss == "mse":
        y = torch.randn(n, outputs, dtype=torch.float64)
        curvature = make_curvature("mse", None)
    else:
        if outputs < 2:
            return
        y = torch.randint(0, outputs, (n,))
        curvature = make_curvature("cross_entropy", "ggn")
    A_ref, g_ref = reference(model, x, y, curvature, layout)
    accepted = 0
    for engine in engines(model, layout, None):
        try:
            rows, rho, _ = engine.rows(x, y, curvature)
        except NotApplicable:  # the fast path says so before computing anything: the objective falls back
            continue
        except RuntimeError:  # vmap cannot batch an operation (RReLU): the objective then takes the full engine
            assert engine.name == "functorch"
            continue
        A = rows.T @ rows / n
        g = rows.T @ rho / n
        torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10, msg=lambda m: f"{engine.name}: A: {m}")
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10, msg=lambda m: f"{engine.name}: g: {m}")
        accepted += 1
    assert accepted >= 1  # the full engine takes every model of the grammar


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@given(case=dense_model())
def test_engines_agree_with_autograd_on_dense_models(case, loss):
    check(*case, loss)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@given(case=conv_model())
def test_engines_agree_with_autograd_on_convolutions(case, loss):
    check(*case, loss)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@given(case=sequence_model())
def test_engines_agree_with_autograd_on_recurrent_and_attention_models(case, loss):
    check(*case, loss)


def test_the_full_engine_takes_operations_vmap_cannot_batch():
    """RReLU has no vmap rule: with more samples than parameters (jacfwd), the full engine falls back to one
    reverse pass per output instead of failing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.RReLU().eval(), nn.Linear(4, 2)).double()
    check(model, torch.randn(40, 3, dtype=torch.float64), 2, "mse")
