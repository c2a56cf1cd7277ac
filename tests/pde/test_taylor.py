"""Taylor mode against torch.func's nested transforms: the operator's values and its parameter Jacobian, on MLPs of
any depth, width and known activation, for operators of order 0, 1 and 2, to 1e-10 in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, hessian, jacrev, vmap

from marquardt import pde
from marquardt.pde.operators import DiagonalOperator

ACTIVATIONS = [nn.Tanh, nn.Sigmoid, pde.Sine]


def mlp(d: int, widths: list[int], activation: type[nn.Module], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    sizes = [d, *widths, 1]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1]).double()


def by_torch_func(model: nn.Module, op: DiagonalOperator, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(𝓛u [N], J [N, n]) from vmap(hessian), vmap(jacrev) and jacrev over the parameters."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}

    def values(params: dict[str, torch.Tensor]) -> torch.Tensor:
        def u(xi: torch.Tensor) -> torch.Tensor:
            return functional_call(model, {**params, **frozen}, (xi.reshape(1, -1),)).squeeze()

        H = vmap(hessian(u))(x).diagonal(dim1=1, dim2=2)
        g = vmap(jacrev(u))(x)
        out = op.value * vmap(u)(x)
        for j, b in op.first:
            out = out + b * g[:, j]
        for j, a in op.second:
            out = out + a * H[:, j]
        return out

    params = {name: p.detach() for name, p in model.named_parameters() if name in names}
    J = jacrev(values)(params)
    return values(params), torch.cat([J[name].reshape(len(x), -1) for name in names], 1)


operators = st.builds(
    lambda value, first, second: DiagonalOperator(value, tuple(first.items()), tuple(second.items())),
    st.sampled_from([0.0, 1.0, -2.5]),
    st.dictionaries(st.integers(0, 2), st.floats(-3, 3).filter(lambda a: a != 0), max_size=3),
    st.dictionaries(st.integers(0, 2), st.floats(-3, 3).filter(lambda a: a != 0), max_size=3),
)


@settings(max_examples=25, deadline=None)
@given(op=operators, widths=st.lists(st.integers(1, 7), min_size=1, max_size=3), n=st.integers(1, 9),
       activation=st.sampled_from(ACTIVATIONS), seed=st.integers(0, 2**16))
def test_values_and_jacobian_equal_torch_func(op, widths, n, activation, seed):
    model = mlp(3, widths, activation, seed)
    x = torch.rand(n, 3, dtype=torch.float64)
    mlp_view = pde.TaylorMLP(model)
    values, rows = mlp_view.jacobian(op, x)
    J = torch.cat([rows[p] for p in model.parameters()], 1)
    ref_values, ref_J = by_torch_func(model, op, x)
    scale = max(1.0, float(ref_J.abs().max()))
    assert torch.allclose(values, ref_values, rtol=0, atol=1e-10 * max(1.0, float(ref_values.abs().max())))
    assert torch.allclose(J, ref_J, rtol=0, atol=1e-10 * scale)
    assert torch.allclose(mlp_view.apply(op, x).reshape(-1), ref_values, rtol=0, atol=1e-10 * scale)


def test_frozen_parameters_get_no_rows_and_the_others_stay_right():
    model = mlp(2, [5, 4], nn.Tanh, 0)
    model[2].weight.requires_grad_(False)
    x = torch.rand(6, 2, dtype=torch.float64)
    op = pde.laplacian(2) + 0.5 * pde.derivative(1)
    _, rows = pde.TaylorMLP(model).jacobian(op, x)
    assert model[2].weight not in rows
    _, ref_J = by_torch_func(model, op, x)
    J = torch.cat([rows[p] for p in model.parameters() if p.requires_grad], 1)
    assert torch.allclose(J, ref_J, rtol=0, atol=1e-10 * float(ref_J.abs().max()))


def test_autograd_reference_equals_taylor_mode():
    model = mlp(2, [8, 8], nn.Tanh, 1)
    x = torch.rand(10, 2, dtype=torch.float64)
    heat = pde.derivative(0) - 0.25 * pde.laplacian([1])
    by_autograd = pde.operator_by_autograd(model, heat, x)
    assert torch.allclose(by_autograd, pde.TaylorMLP(model).apply(heat, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("model, message", [
    (nn.Linear(2, 1), "nn.Sequential"),
    (nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), "ReLU"),
    (nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)), "scalar field"),
])
def test_models_taylor_mode_cannot_follow_are_refused_by_name(model, message):
    with pytest.raises(pde.NotAnMLP, match=message):
        pde.TaylorMLP(model)


def test_points_and_operators_that_do_not_fit_the_model_are_refused():
    view = pde.TaylorMLP(mlp(2, [3], nn.Tanh, 0))
    with pytest.raises(ValueError, match=r"x: expected points of shape \[N, 2\]"):
        view.apply(pde.laplacian(2), torch.rand(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="coordinate 2"):
        view.apply(pde.laplacian(3), torch.rand(4, 2, dtype=torch.float64))


def test_operators_combine_their_coefficients():
    heat = pde.derivative(0) - 0.25 * pde.laplacian(range(1, 3))
    assert heat.first == ((0, 1.0),) and heat.second == ((1, -0.25), (2, -0.25))
    assert heat.directions == (0, 1, 2) and heat.order == 2
    helmholtz = pde.laplacian(2) + 4.0 * pde.value()
    assert helmholtz.value == 4.0 and pde.value().order == 0
    assert (pde.laplacian(2) - pde.laplacian(2)).second == ()  # (cancelled terms vanish)
    with pytest.raises(ValueError, match="coordinates"):
        pde.laplacian([])
    with pytest.raises(ValueError, match="ints >= 0"):
        DiagonalOperator(first=((-1, 1.0),))
