"""The generalized residual of each curvature mode against its formula (docs/algorithm.md, "Curvature modes")."""

from __future__ import annotations

import pytest
import torch
from torch.func import hessian

from marquardt.curvature.losses import EmpiricalFisherCE, GaussNewtonMSE, GeneralizedGaussNewtonCE
from marquardt.curvature.modes import make_curvature


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "probabilities"])
def test_ggn_factor_reproduces_autograd_hessian_and_gradient(soft):
    torch.manual_seed(1)
    N, c = 5, 7
    z = torch.randn(N, c, dtype=torch.float64) * 3
    y = torch.softmax(torch.randn(N, c, dtype=torch.float64), 1) if soft else torch.randint(0, c, (N,))
    ggn = GeneralizedGaussNewtonCE()
    W, rho = ggn.weights(z, y)
    assert W.shape == (N, c, c - 1) and rho.shape == (N, c - 1)  # the Hessian's rank, not c
    for i in range(N):
        def loss_i(zi):
            return ggn.per_sample_loss(zi.unsqueeze(0), y[i : i + 1])[0]

        H = hessian(loss_i)(z[i])
        grad = torch.func.grad(loss_i)(z[i])
        torch.testing.assert_close(W[i] @ W[i].T, H, rtol=1e-12, atol=1e-14)  # L Lᵀ = ∂²ℓ/∂z²
        torch.testing.assert_close(W[i] @ rho[i], grad, rtol=1e-12, atol=1e-14)  # L ρ = p − y = ∂ℓ/∂z


@pytest.mark.parametrize("c", [1, 2, 3, 10])
def test_ggn_factor_is_exact_and_finite_at_extreme_probabilities(c):
    # Near-one-hot and uniform probabilities, a true class with tiny probability, and one class (zero Hessian).
    z = torch.tensor([[40.0] + [0.0] * (c - 1), [0.0] * c, [-30.0] * (c - 1) + [5.0]], dtype=torch.float64)[:, :c]
    y = torch.zeros(3, dtype=torch.long)
    ggn = GeneralizedGaussNewtonCE()
    W, rho = ggn.weights(z, y)
    p = torch.softmax(z, 1)
    H = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    assert torch.isfinite(W).all() and torch.isfinite(rho).all()
    # probabilities below the 1e-12 floor (e^-40) are raised to it, so L Lᵀ is exact to c times that floor
    torch.testing.assert_close(W @ W.transpose(1, 2), H, rtol=1e-10, atol=c * 1.5e-12)
    grad = p - torch.nn.functional.one_hot(y, c).double()
    torch.testing.assert_close(torch.einsum("scq,sq->sc", W, rho), grad, rtol=1e-10, atol=1e-12)
    assert ggn.rows_per_sample(c) == W.shape[2]
    torch.testing.assert_close(ggn.hessian_factor(z), W)


def test_ef_rows_are_loss_gradients():
    z = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    W, rho = EmpiricalFisherCE().weights(z, y)
    assert W.shape == (4, 3, 1) and torch.equal(rho, torch.ones(4, 1, dtype=torch.float64))
    assert EmpiricalFisherCE().rows_per_sample(3) == W.shape[2] == 1
    expected = torch.softmax(z, 1) - torch.nn.functional.one_hot(y, 3)
    torch.testing.assert_close(W[:, :, 0], expected.double())


def test_mse_is_half_squared_error():
    z, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    gn = GaussNewtonMSE()
    torch.testing.assert_close(gn.loss(z, y), 0.5 * ((z - y) ** 2).sum(1).mean())
    W, rho = gn.weights(z, y)
    torch.testing.assert_close(rho, z - y)
    torch.testing.assert_close(W[0], torch.eye(2, dtype=torch.float64))
    assert gn.rows_per_sample(2) == W.shape[2] == 2
    L = gn.hessian_factor(z)  # the identity per sample, in the outputs' dtype
    assert L.shape == (6, 2, 2) and L.dtype == z.dtype and torch.equal(L[3], torch.eye(2, dtype=torch.float64))


def test_target_checks_name_the_problem():
    ce = make_curvature("cross_entropy", None)
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 2\]"):
        ce.check_targets(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"targets: expected class indices"):
        ce.check_targets(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"targets: expected the shape of the model output"):
        make_curvature("mse", None).check_targets(torch.zeros(2, 3), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"loss='mse' supports only 'gn'"):
        make_curvature("mse", "ggn")
    with pytest.raises(ValueError, match=r"loss: expected 'mse'"):
        make_curvature("hinge", None)
