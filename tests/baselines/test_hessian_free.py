"""Hessian-free baseline: curvature products against an explicit GGN, CG, and training."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev, vjp

from marquardt.baselines import HessianFree
from marquardt.baselines.hessian_free import conjugate_gradient, ggn_vector_product, output_hessian_product
from marquardt.types.layout import ParameterLayout
from tests.models import paper_cnn, sine_data, sine_mlp


def test_output_hessian_product_is_the_ce_hessian():
    z = torch.randn(3, 5, dtype=torch.float64)
    v = torch.randn(3, 5, dtype=torch.float64)
    for i in range(3):
        H = hessian(lambda zi: torch.nn.functional.cross_entropy(zi.unsqueeze(0), torch.tensor([1])))(z[i])
        torch.testing.assert_close(output_hessian_product("cross_entropy", z[i : i + 1], v[i : i + 1])[0], H @ v[i])


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_ggn_vector_product_matches_explicit_ggn(loss):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    layout = ParameterLayout.of(model)
    theta = layout.get_flat()
    x = torch.randn(6, 3, dtype=torch.float64)

    def outputs(t):
        return functional_call(model, layout.as_dict(t), (x,))

    z, vjp_fn = vjp(outputs, theta)
    product = ggn_vector_product(outputs, theta, z.detach(), vjp_fn, loss, n=6)
    J = jacrev(outputs)(theta)  # [6, 3, n]
    G = torch.zeros(layout.numel, layout.numel, dtype=torch.float64)
    for i in range(6):
        H = torch.eye(3, dtype=torch.float64) if loss == "mse" else torch.diag(torch.softmax(z[i], 0)) - torch.outer(
            torch.softmax(z[i], 0), torch.softmax(z[i], 0))
        G += J[i].T @ H @ J[i] / 6
    v = torch.randn(layout.numel, dtype=torch.float64)
    torch.testing.assert_close(product(v), G @ v)


def test_conjugate_gradient_solves_spd_systems():
    torch.manual_seed(0)
    M = torch.randn(30, 30, dtype=torch.float64)
    A = M @ M.T + 0.1 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, dtype=torch.float64)
    iterates, iterations = conjugate_gradient(lambda v: A @ v, b, max_iter=300, epsilon=1e-14)
    torch.testing.assert_close(iterates[-1], torch.linalg.solve(A, b), rtol=1e-6, atol=1e-8)
    q = [float(0.5 * x @ A @ x - b @ x) for x in iterates]
    assert all(b2 <= a + 1e-12 for a, b2 in zip(q, q[1:])), "CG decreases the quadratic model monotonically"
    diag = A.diagonal()
    pre, _ = conjugate_gradient(lambda v: A @ v, b, preconditioner=diag, max_iter=300, epsilon=1e-14)
    torch.testing.assert_close(pre[-1], torch.linalg.solve(A, b), rtol=1e-6, atol=1e-8)
    assert 1 <= iterations <= 300


def test_trains_the_sine_mlp():
    x, y = sine_data(300)
    model = sine_mlp(10)
    opt = HessianFree(model, "mse")
    infos = [opt.step(x, y) for _ in range(10)]
    assert infos[-1]["loss_after"] < 0.9 * infos[0]["loss_before"]
    assert all(i["loss_after"] <= i["loss_before"] for i in infos), "the Armijo search never goes uphill"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_runs_on_the_paper_cnn_with_rrelu():
    torch.manual_seed(0)
    model = paper_cnn()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    opt = HessianFree(model, "cross_entropy", max_cg=20)
    infos = [opt.step(x, y) for _ in range(2)]
    assert infos[-1]["loss_after"] <= infos[0]["loss_before"]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="loss"):
        HessianFree(nn.Linear(2, 2), "hinge")
    with pytest.raises(ValueError, match="Invalid damping value"):
        HessianFree(nn.Linear(2, 2), damping=0.0)
