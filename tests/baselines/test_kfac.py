"""K-FAC baseline: factors against direct computations, preconditioning against dense Kronecker solves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marquardt.baselines import KFAC
from marquardt.baselines.kfac import kronecker_factors, weight_gradient_matrix
from tests.models import paper_cnn, sine_data, sine_mlp


def test_single_example_linear_factors_are_the_exact_fisher_block():
    """With one example, A ⊗ G is exactly vec(∇W)vec(∇W)ᵀ (the empirical Fisher block of the layer)."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    x = torch.randn(1, 3, dtype=torch.float64)
    out = layer(x)
    out.retain_grad()
    loss = F.cross_entropy(out, torch.tensor([1]))
    loss.backward()
    A, G = kronecker_factors(layer, x, out.grad * 1)
    grad = weight_gradient_matrix(layer).reshape(-1)  # row-major vec of [∇W, ∇b]
    torch.testing.assert_close(torch.kron(G, A), torch.outer(grad, grad))


def test_conv_factors_match_a_loop_over_locations():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    a = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    ds = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    A, G = kronecker_factors(conv, a, ds)
    padded = F.pad(a, (1, 1, 1, 1))
    A_ref = torch.zeros(19, 19, dtype=torch.float64)
    G_ref = torch.zeros(3, 3, dtype=torch.float64)
    for n in range(4):
        for i in range(5):
            for j in range(5):
                abar = torch.cat([padded[n, :, i : i + 3, j : j + 3].reshape(-1), torch.ones(1, dtype=torch.float64)])
                A_ref += torch.outer(abar, abar) / 4
                G_ref += torch.outer(ds[n, :, i, j], ds[n, :, i, j]) / (4 * 25)
    torch.testing.assert_close(A, A_ref)
    torch.testing.assert_close(G, G_ref)


@pytest.mark.parametrize("variant", ["paper", "standard"])
def test_preconditioning_equals_the_dense_kronecker_solve(variant):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    opt = KFAC(model, "cross_entropy", variant=variant, lr=0.1)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    opt.step(x, y)  # computes the factors
    layer = model[2]
    A, G = opt.factors[layer]
    grad = torch.randn(2, 5, dtype=torch.float64)
    u = opt._precondition(layer, grad)
    if variant == "paper":
        r = opt.param_groups[0]["damping"] ** 0.5
        dense = torch.kron(G + r * torch.eye(2, dtype=torch.float64), A + r * torch.eye(5, dtype=torch.float64))
    else:
        dense = torch.kron(G, A) + opt.param_groups[0]["damping"] * torch.eye(10, dtype=torch.float64)
    torch.testing.assert_close(u.reshape(-1), torch.linalg.solve(dense, grad.reshape(-1)))


@pytest.mark.parametrize("variant", ["paper", "standard"])
def test_trains(variant):
    x, y = sine_data(300)
    model = sine_mlp(10)
    # the standard variant's defaults (damping 1e-3, inverses every 100 steps) target classification; this
    # regression needs more damping and fresher inverses
    options = {"lr": 0.05} if variant == "paper" else {"lr": 0.01, "damping": 1e-2, "inverse_interval": 10}
    opt = KFAC(model, "mse", variant=variant, **options)
    losses = [opt.step(x, y)["loss"] for _ in range(60)]
    assert losses[-1] < 0.9 * losses[0]  # K-FAC is slow on this task (the paper: it plateaus)
    model = paper_cnn()
    opt = KFAC(model, "cross_entropy", variant=variant, lr=0.01)
    xs, ys = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(3):
        opt.step(xs, ys)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_invalid_variant():
    with pytest.raises(ValueError, match="variant"):
        KFAC(nn.Linear(2, 2), variant="ekfac")


@pytest.mark.parametrize("conv", [nn.Conv2d(1, 2, 3, padding="same"), nn.Conv2d(2, 2, 3, groups=2),
                                  nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")],
                         ids=["same-padding", "grouped", "reflect-padding"])
def test_unsupported_convolutions_are_refused_up_front(conv):
    """im2col factors need groups=1 and numeric zero padding; say so naming the layer, not deep in F.unfold."""
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"model: K-FAC needs Conv2d layers .* '0' has"):
        KFAC(model, "cross_entropy")
