"""Per-sample weights, step(..., weight=w): integer weights are repeated samples, zero weights dropped ones, for
every kind of objective and solver; weighted fits equal curve_fit's with sigma; bad weights are refused by name."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import marquardt
from marquardt import LevenbergMarquardt
from tests.models import Exponential, exponential_data, residuals, sine_data, sine_mlp

WEIGHTS = torch.tensor([0, 1, 3, 2, 1, 0, 2, 1, 1, 3, 1, 2], dtype=torch.float64)  # 12 samples, two left out


def _repeated(t: torch.Tensor | None, w: torch.Tensor):
    return None if t is None else t.repeat_interleave(w.long(), dim=0)


def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _pinn_like(model, x):
    return model(x).squeeze(1) - torch.sin(3 * x.squeeze(1))


CASES = {
    "mse": (lambda: sine_mlp(4).double(), "mse", {}),
    "mse_dual": (lambda: sine_mlp(4).double(), "mse", {"solver": "dual"}),
    "mse_block": (lambda: sine_mlp(4).double(), "mse", {"solver": "block_diagonal"}),
    "mse_functorch": (lambda: sine_mlp(4).double(), "mse", {"engine": "functorch"}),
    "mse_geodesic": (lambda: sine_mlp(4).double(), "mse", {"geodesic": True, "geodesic_alpha": 100.0}),
    "mse_geodesic_dual": (lambda: sine_mlp(4).double(), "mse", {"geodesic": True, "geodesic_alpha": 100.0,
                                                                "solver": "dual"}),
    "cross_entropy": (_classifier, "cross_entropy", {}),
    "cross_entropy_geodesic": (_classifier, "cross_entropy", {"geodesic": True, "geodesic_alpha": 100.0}),
    "residual_callable": (lambda: Exponential(), residuals, {}),
    "robust_geodesic": (lambda: Exponential(), residuals, {"robust": "cauchy", "robust_scale": 0.3,
                                                             "geodesic": True, "geodesic_alpha": 100.0}),
}


def _batch(case: str):
    torch.manual_seed(1)
    if case.startswith("cross_entropy"):
        return torch.randn(12, 2, dtype=torch.float64), torch.randint(0, 3, (12,))
    if case in ("residual_callable", "robust_geodesic"):
        return exponential_data(12)
    return sine_data(12, dtype=torch.float64)


@pytest.mark.parametrize("case", CASES)
def test_integer_weights_are_repeated_samples(case):
    build, loss, options = CASES[case]
    x, y = _batch(case)
    weighted_model, repeated_model = build(), build()
    repeated_model.load_state_dict(weighted_model.state_dict())
    weighted = LevenbergMarquardt(weighted_model, loss, loss_scale="sum", **options)
    repeated = LevenbergMarquardt(repeated_model, loss, loss_scale="sum", **options)
    used = []
    for _ in range(3):
        a = weighted.step(x, y, weight=WEIGHTS)
        b = repeated.step(_repeated(x, WEIGHTS), _repeated(y, WEIGHTS))
        used.append(a.geodesic_used)
        assert a.reason == b.reason
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-11)
        assert a.loss_after == pytest.approx(b.loss_after, rel=1e-11)
    for p, q in zip(weighted_model.parameters(), repeated_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)
    assert any(used) == ("geodesic" in case)  # (the weighted second-order residual took part)


def test_a_residual_functions_weights_are_per_residual():
    x = torch.linspace(0, 1, 12, dtype=torch.float64).unsqueeze(1)
    a, b = sine_mlp(4).double(), sine_mlp(4).double()
    # (a λ rule that takes λ as given: the trust region's iteration on the step length turns last-bit differences
    # between the two formulations into different λ)
    weighted = LevenbergMarquardt(a, residuals=_pinn_like, loss_scale="sum", lambda_rule="delayed")
    repeated = LevenbergMarquardt(b, residuals=_pinn_like, loss_scale="sum", lambda_rule="delayed")
    for _ in range(3):
        first = weighted.step(x, weight=WEIGHTS)
        second = repeated.step(_repeated(x, WEIGHTS))
        assert first.loss_after == pytest.approx(second.loss_after, rel=1e-11)
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in a.parameters()]),
                               torch.cat([p.reshape(-1) for p in b.parameters()]), rtol=1e-8, atol=1e-10)


def test_the_mean_loss_averages_the_weighted_losses_over_the_samples():
    x, y = sine_data(12, dtype=torch.float64)
    model = sine_mlp(4).double()
    with torch.no_grad():
        per_sample = 0.5 * (model(x) - y).pow(2).sum(1)
    info = LevenbergMarquardt(model, "mse").step(x, y, weight=WEIGHTS)
    assert info.loss_before == pytest.approx(float((WEIGHTS * per_sample).sum() / 12), rel=1e-13)


@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_weights_of_one_over_sigma_squared_fit_as_curve_fit_with_sigma(absolute_sigma):
    optimize = pytest.importorskip("scipy.optimize")
    t, y = exponential_data(40)
    sigma = torch.linspace(0.02, 0.1, 40, dtype=torch.float64)
    result = marquardt.fit(LevenbergMarquardt(Exponential(), residuals), t, y, weight=1 / sigma**2,
                           ftol=1e-15, xtol=1e-15, gtol=0.0)

    def curve(tt, a, b, c):
        with torch.no_grad():
            return Exponential(a, b, c)(torch.from_numpy(tt)).numpy()

    popt, pcov = optimize.curve_fit(curve, t.numpy(), y.numpy(), p0=[1.0, 0.5, 0.0], sigma=sigma.numpy(),
                                    absolute_sigma=absolute_sigma, method="lm", xtol=1e-15, ftol=1e-15)
    torch.testing.assert_close(torch.stack(list(result.x.values())), torch.from_numpy(popt), rtol=1e-8, atol=0.0)
    torch.testing.assert_close(result.covariance(absolute_sigma).matrix, torch.from_numpy(pcov), rtol=1e-6, atol=0)
    with torch.no_grad():
        r = (result_model_curve(result, t) - y) / sigma
    torch.testing.assert_close(result.fun, r, rtol=1e-12, atol=1e-14)
    assert result.cost == pytest.approx(0.5 * float(r @ r), rel=1e-12)


def result_model_curve(result, t):
    return Exponential(*(float(v) for v in result.x.values()))(t)


@pytest.mark.parametrize("weight,error,message", [
    ([1.0] * 12, TypeError, "weight: expected a torch.Tensor of per-sample weights, got list"),
    (torch.ones(11, dtype=torch.float64), ValueError, r"weight: expected shape \(12,\), one weight per sample of "
                                                      r"the batch, got \(11,\)"),
    (torch.ones(12, 1, dtype=torch.float64), ValueError, r"weight: expected shape \(12,\)"),
    (-WEIGHTS, ValueError, "weight: expected finite weights >= 0"),
    (torch.full((12,), float("nan"), dtype=torch.float64), ValueError, "weight: expected finite weights >= 0"),
    (torch.ones(12, dtype=torch.bool), TypeError, "weight: expected real numbers, got dtype torch.bool"),
])
def test_bad_weights_are_refused_before_any_change(weight, error, message):
    x, y = sine_data(12, dtype=torch.float64)
    model = sine_mlp(4).double()
    before = copy.deepcopy(model.state_dict())
    opt = LevenbergMarquardt(model, "mse")
    with pytest.raises(error, match=message):
        opt.step(x, y, weight=weight)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and not opt.state_dict()["state"]


def test_a_residual_functions_weights_are_counted_in_residuals():
    x = torch.linspace(0, 1, 12, dtype=torch.float64).unsqueeze(1)
    opt = LevenbergMarquardt(sine_mlp(4).double(), residuals=lambda m, x: (_pinn_like(m, x), m(x[:1])))
    with pytest.raises(ValueError, match=r"weight: expected shape \(13,\), one weight per residual of the batch"):
        opt.step(x, weight=WEIGHTS)
    assert opt.step(x, weight=torch.ones(13, dtype=torch.float64)).accepted


def test_integer_valued_weights_of_any_real_dtype_are_taken():
    x, y = sine_data(12, dtype=torch.float64)
    a, b = sine_mlp(4).double(), sine_mlp(4).double()
    first = LevenbergMarquardt(a, "mse").step(x, y, weight=WEIGHTS.long())
    second = LevenbergMarquardt(b, "mse").step(x, y, weight=WEIGHTS)
    assert first.loss_after == second.loss_after


def test_subsampled_curvature_keeps_the_weights_of_every_sample():
    """The curvature from 4 samples, g and the loss from all 12, every one weighted."""
    x, y = sine_data(12, dtype=torch.float64)
    model = sine_mlp(4).double()
    with torch.no_grad():
        per_sample = 0.5 * (model(x) - y).pow(2).sum(1)
    opt = LevenbergMarquardt(model, "mse", curvature_samples=4, geodesic=False)
    info = opt.step(x, y, weight=WEIGHTS)
    assert info.curvature_samples == 4
    assert info.loss_before == pytest.approx(float((WEIGHTS * per_sample).sum() / 12), rel=1e-13)
