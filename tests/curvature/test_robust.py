"""Robust losses against their formulas and against scipy: ρ and its derivatives, the Triggs-corrected factor,
the minimiser and cost of scipy.optimize.least_squares(loss=..., f_scale=...) on data with outliers, and the
covariance curve_fit reports for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import marquardt
from marquardt import LevenbergMarquardt
from marquardt.curvature.robust import ROBUST_LOSSES, RobustGaussNewton, rho
from tests.models import Exponential, exponential_data, residuals

optimize = pytest.importorskip("scipy.optimize")
FORMULAS = {  # ρ(s) as written in scipy's documentation
    "linear": lambda s: s,
    "huber": lambda s: torch.where(s <= 1, s, 2 * s.clamp_min(1).sqrt() - 1),  # (the clamp: autograd through where)
    "soft_l1": lambda s: 2 * ((1 + s).sqrt() - 1),
    "cauchy": lambda s: torch.log(1 + s),
    "arctan": lambda s: torch.arctan(s),
}


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(ROBUST_LOSSES), s=st.floats(0.0, 50.0).filter(lambda v: abs(v - 1.0) > 1e-6))
def test_rho_and_its_derivatives_follow_the_formula(kind, s):
    x = torch.tensor(s, dtype=torch.float64)
    value, first, second = rho(kind, x)
    torch.testing.assert_close(value, FORMULAS[kind](x))
    torch.testing.assert_close(first, torch.func.grad(FORMULAS[kind])(x))
    torch.testing.assert_close(second, torch.func.grad(torch.func.grad(FORMULAS[kind]))(x))


@pytest.mark.parametrize("kind", ROBUST_LOSSES)
def test_the_triggs_factor_gives_the_corrected_curvature_and_the_exact_gradient(kind):
    torch.manual_seed(0)
    z, y = 3 * torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    loss = RobustGaussNewton(kind, scale=0.7)
    W, rho_gen = loss.weights(z, y)
    r = z - y
    s = r * r / 0.49
    _, first, second = rho(kind, s)
    curvature = (first + 2 * second / 0.49 * r * r).clamp_min(torch.finfo(torch.float64).eps)
    torch.testing.assert_close(W.diagonal(dim1=1, dim2=2) ** 2, curvature)
    gradient = torch.func.grad(lambda zz: loss.per_sample_loss(zz, y).sum())(z)  # = ρ'(s) r
    torch.testing.assert_close(torch.einsum("scq,sq->sc", W, rho_gen), gradient)
    torch.testing.assert_close(loss.hessian_factor(z, y), W)


def _outlier_data():
    t, y = exponential_data(60)
    y = y.clone()
    y[::7] += 3.0  # every seventh point far off
    return t, y


def _scipy(kind: str, scale: float, t: torch.Tensor, y: torch.Tensor):
    def f(p):
        return p[0] * np.exp(-p[1] * t.numpy()) + p[2] - y.numpy()

    return optimize.least_squares(f, [1.0, 0.5, 0.0], loss=kind, f_scale=scale, method="trf", xtol=1e-15,
                                  ftol=1e-15, gtol=1e-15)


@pytest.mark.parametrize("form", ["mse", "residual_callable", "residual_function"])
@pytest.mark.parametrize("kind", ROBUST_LOSSES)
def test_the_minimiser_and_cost_are_scipys(kind, form):
    t, y = _outlier_data()
    objective = {"mse": dict(loss="mse"), "residual_callable": dict(loss=residuals),
                 "residual_function": dict(residuals=lambda m, t, y: m(t) - y)}[form]
    result = marquardt.fit(LevenbergMarquardt(Exponential(), robust=kind, robust_scale=0.1, **objective), t, y,
                           ftol=1e-15, xtol=1e-15, gtol=0.0, max_iterations=500)
    reference = _scipy(kind, 0.1, t, y)
    ours = np.array([float(v) for v in result.x.values()])
    np.testing.assert_allclose(ours, reference.x, rtol=1e-6, atol=1e-9)
    assert result.cost == pytest.approx(reference.cost, rel=1e-9)
    with torch.no_grad():
        raw = Exponential(*ours.tolist())(t) - y
    torch.testing.assert_close(result.fun, raw, rtol=1e-9, atol=1e-12)  # scipy's fun: the raw residuals


def test_robust_losses_resist_outliers_where_plain_least_squares_does_not():
    t, y = _outlier_data()
    clean = marquardt.fit(LevenbergMarquardt(Exponential(), residuals), *exponential_data(60))
    robust = marquardt.fit(LevenbergMarquardt(Exponential(), residuals, robust="soft_l1", robust_scale=0.1), t, y)
    plain = marquardt.fit(LevenbergMarquardt(Exponential(), residuals), t, y)
    error = {name: max(abs(float(result.x[k]) - float(clean.x[k])) for k in "abc")
             for name, result in (("robust", robust), ("plain", plain))}
    assert error["robust"] < 0.1 * error["plain"]


@pytest.mark.parametrize("kind", ["huber", "cauchy"])
def test_covariance_with_a_robust_loss_is_curve_fits(kind):
    t, y = _outlier_data()
    result = marquardt.fit(LevenbergMarquardt(Exponential(), residuals, robust=kind, robust_scale=0.1), t, y,
                           ftol=1e-15, xtol=1e-15, gtol=0.0, max_iterations=500)

    def curve(tt, a, b, c):
        return a * np.exp(-b * tt) + c

    popt, pcov = optimize.curve_fit(curve, t.numpy(), y.numpy(), p0=[1.0, 0.5, 0.0], method="trf", loss=kind,
                                    f_scale=0.1, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    ours = result.covariance().matrix.numpy()
    np.testing.assert_allclose(np.diag(ours), np.diag(pcov), rtol=1e-5)
    # the off-diagonal terms in units of the standard deviations (a covariance near 0 has no relative precision:
    # 1.7e-5 relative on one Xeon for Huber's cov(a, c), 2e-8 of √(var a · var c))
    scale = np.sqrt(np.outer(np.diag(pcov), np.diag(pcov)))
    np.testing.assert_allclose(ours / scale, pcov / scale, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(loss="cross_entropy", robust="huber"), "robust: a robust loss applies to least squares"),
    (dict(loss="bce_with_logits", robust="cauchy"), "robust: a robust loss applies to least squares"),
    (dict(loss="mse", robust="tukey"), "Invalid robust value: 'tukey'"),
    (dict(loss="mse", robust="huber", robust_scale=0.0), "Invalid robust_scale value: 0.0"),
])
def test_robust_settings_are_checked_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LevenbergMarquardt(torch.nn.Linear(2, 3), **kwargs)


def test_huber_counts_the_threshold_itself_as_inside():
    """scipy's huber: s ≤ 1 is quadratic, so at s = 1 exactly ρ'' is 0 (outside it would be −½)."""
    value, first, second = rho("huber", torch.tensor([1.0], dtype=torch.float64))
    assert (float(value), float(first), float(second)) == (1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"^robust: expected one of \('linear', 'huber', 'soft_l1', 'cauchy', "
                                         r"'arctan'\), got 'tukey'$"):
        rho("tukey", torch.ones(1))


@pytest.mark.parametrize("kind", ["huber", "cauchy"])
def test_robust_losses_with_integer_weights_are_repeated_samples(kind):
    t, y = _outlier_data()
    w = (torch.arange(60) % 3).double()  # 0, 1, 2, ...
    options = dict(robust=kind, robust_scale=0.1, loss_scale="sum", lambda_rule="delayed")  # (λ as given: no
    # trust-region iteration on the step length, which turns last-bit differences into different λ)
    weighted = LevenbergMarquardt(Exponential(), residuals, **options)
    repeated = LevenbergMarquardt(Exponential(), residuals, **options)
    for _ in range(4):
        a = weighted.step(t, y, weight=w)
        b = repeated.step(t.repeat_interleave(w.long()), y.repeat_interleave(w.long()))
        assert a.loss_after == pytest.approx(b.loss_after, rel=1e-11)


def test_a_robust_mse_fit_and_a_robust_residual_fit_have_the_same_jacobian_and_covariance():
    t, y = _outlier_data()
    by_mse = marquardt.fit(LevenbergMarquardt(Exponential(), "mse", robust="cauchy",
                                              robust_scale=0.1), t, y, return_jacobian=True, max_iterations=100)
    by_residuals = marquardt.fit(LevenbergMarquardt(Exponential(), residuals, robust="cauchy", robust_scale=0.1),
                                 t, y, return_jacobian=True, max_iterations=100)
    torch.testing.assert_close(by_mse.jac, by_residuals.jac, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(by_mse.fun, by_residuals.fun, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(by_mse.covariance().matrix, by_residuals.covariance().matrix, rtol=1e-5, atol=0.0)


def test_the_huber_string_and_explicit_gn_curvatures_are_taken():
    for loss in ("huber", torch.nn.MSELoss(), torch.nn.HuberLoss(), torch.nn.SmoothL1Loss()):
        assert LevenbergMarquardt(torch.nn.Linear(2, 1), loss, curvature="gn").curvature.least_squares
    assert LevenbergMarquardt(torch.nn.Linear(2, 1), torch.nn.BCEWithLogitsLoss(), curvature="ggn").curvature
    assert LevenbergMarquardt(torch.nn.Linear(2, 1), "huber").curvature.scale_f == 1.0
