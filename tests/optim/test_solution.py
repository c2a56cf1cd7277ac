"""fit's description of its solution against scipy: curve_fit's parameters and pcov (with and without sigma and
absolute_sigma), least_squares's cost, fun, grad and jac, and the refusals and warnings scipy gives."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import marquardt
from marquardt import LevenbergMarquardt
from marquardt.optim.fit import MESSAGES, STATUS, FitResult
from marquardt.optim.solution import CovarianceWarning, entry_names
from marquardt.types.layout import ParameterLayout
from tests.models import Exponential, exponential_data, residuals

optimize = pytest.importorskip("scipy.optimize")
TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=0.0, max_iterations=200)


def _curve(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    with torch.no_grad():
        return Exponential(a, b, c)(torch.from_numpy(t)).numpy()


def _scipy_fit(t, y, **kwargs):
    return optimize.curve_fit(_curve, t.numpy(), y.numpy(), p0=[1.0, 0.5, 0.0], method="lm", xtol=1e-15,
                              ftol=1e-15, **kwargs)


def _assert_close(ours: torch.Tensor, theirs: np.ndarray, rel: float) -> None:
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=rel, atol=0.0)


@pytest.mark.parametrize("form", ["residual_callable", "residual_function", "mse"])
def test_parameters_and_covariance_equal_curve_fits(form):
    t, y = exponential_data(60)
    model = Exponential()
    if form == "residual_callable":
        opt = LevenbergMarquardt(model, residuals)
    elif form == "residual_function":
        opt = LevenbergMarquardt(model, residuals=lambda m, t, y: m(t) - y)
    else:
        opt = LevenbergMarquardt(model, "mse", momentum=None)
    result = marquardt.fit(opt, t, y, **TIGHT)
    popt, pcov = _scipy_fit(t, y)
    _assert_close(torch.stack(list(result.x.values())), popt, 1e-8)
    cov = result.covariance()
    assert cov.names == ["a", "b", "c"]
    _assert_close(cov.matrix, pcov, 1e-6)
    errors = result.standard_errors()
    _assert_close(torch.stack([errors[k] for k in "abc"]), np.sqrt(np.diag(pcov)), 1e-6)


@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_known_standard_deviations_give_curve_fits_pcov(absolute_sigma):
    """Residuals divided by σ are curve_fit's sigma=σ; absolute_sigma=True keeps s² = 1."""
    t, y = exponential_data(50)
    sigma = torch.linspace(0.01, 0.05, 50, dtype=torch.float64)
    result = marquardt.fit(LevenbergMarquardt(Exponential(), lambda z, y: (z - y) / sigma), t, y, **TIGHT)
    popt, pcov = _scipy_fit(t, y, sigma=sigma.numpy(), absolute_sigma=absolute_sigma)
    _assert_close(torch.stack(list(result.x.values())), popt, 1e-8)
    _assert_close(result.covariance(absolute_sigma=absolute_sigma).matrix, pcov, 1e-6)


def test_cost_fun_grad_and_jac_are_scipys_at_the_solution():
    t, y = exponential_data(30)
    model = Exponential()
    opt = LevenbergMarquardt(model, residuals)
    result = marquardt.fit(opt, t, y, return_jacobian=True, max_iterations=4)  # stopped early: grad ≠ 0
    x = torch.stack(list(result.x.values()))
    r = _curve(t.numpy(), *x.tolist()) - y.numpy()
    J = torch.autograd.functional.jacobian(lambda p: _torch_curve(p, t) - y, x)
    _assert_close(result.fun, r, 1e-12)
    assert result.cost == pytest.approx(0.5 * float(r @ r), rel=1e-12)
    _assert_close(result.jac, J.numpy(), 1e-10)
    _assert_close(result.grad, J.numpy().T @ r, 1e-9)
    assert float(result.grad.abs().max()) > 1e-8
    reference = optimize.least_squares(lambda p: _curve(t.numpy(), *p) - y.numpy(), x.numpy(), max_nfev=1)
    assert result.cost == pytest.approx(reference.cost, rel=1e-9)  # scipy's cost at the same start point
    assert (result.nfev, result.njev) == (sum(h.forward_passes for h in result.history), len(result.history))
    assert result.loss == pytest.approx(result.cost / 30, rel=1e-12)  # the mean loss and scipy's sum


def _torch_curve(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return p[0] * torch.exp(-p[1] * t) + p[2]


def test_the_exponential_reference_is_the_model():
    t, _ = exponential_data(5)
    p = torch.tensor([1.5, 0.7, 0.2], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(Exponential(*p.tolist())(t), _torch_curve(p, t))


def test_a_rank_deficient_jacobian_gives_inf_and_a_warning():
    class Redundant(nn.Module):  # y = (a + b)·exp(−c t): a and b enter only as their sum
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
            self.b = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
            self.c = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

        def forward(self, t):
            return (self.a + self.b) * torch.exp(-self.c * t)

    t, y = exponential_data(20)
    result = marquardt.fit(LevenbergMarquardt(Redundant(), residuals), t, y, max_iterations=20)
    with pytest.warns(CovarianceWarning, match="rank-deficient"):
        cov = result.covariance()
    assert torch.isinf(cov.matrix).all()


def test_as_many_parameters_as_residuals_leaves_s2_unknown():
    t, y = exponential_data(3)
    result = marquardt.fit(LevenbergMarquardt(Exponential(), residuals), t, y, max_iterations=50)
    with pytest.warns(CovarianceWarning, match="m = 3 residuals for n = 3 parameters"):
        assert torch.isinf(result.covariance().matrix).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        absolute = result.covariance(absolute_sigma=True).matrix
    r, J = result._least_squares()
    torch.testing.assert_close(absolute, torch.linalg.inv(J.T @ J), rtol=1e-8, atol=0.0)


def test_cross_entropy_fits_have_a_cost_but_no_residuals():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, labels = torch.randn(40, 2, dtype=torch.float64), torch.randint(0, 3, (40,))
    before = copy.deepcopy(model.state_dict())
    opt = LevenbergMarquardt(model, "cross_entropy")
    with pytest.raises(ValueError, match="return_jacobian: only a least-squares fit"):
        marquardt.fit(opt, x, labels, return_jacobian=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    result = marquardt.fit(opt, x, labels, max_iterations=3)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x), labels, reduction="sum")
    assert result.cost == pytest.approx(float(expected), rel=1e-12) and result.fun is None
    with pytest.raises(ValueError, match="covariance: only a least-squares fit"):
        result.covariance()


def test_describing_the_solution_leaves_the_random_generator_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1)).double()
    twin = copy.deepcopy(model)
    x, y = torch.randn(30, 2, dtype=torch.float64), torch.randn(30, 1, dtype=torch.float64)
    torch.manual_seed(1)
    marquardt.fit(LevenbergMarquardt(model, "mse"), x, y, max_iterations=3, gtol=0.0, ftol=0.0, xtol=0.0)
    after_fit = torch.get_rng_state()
    torch.manual_seed(1)
    opt = LevenbergMarquardt(twin, "mse")
    for _ in range(3):
        opt.step(x, y)
    assert torch.equal(after_fit, torch.get_rng_state())


def test_status_message_and_success_follow_scipy():
    for reason, code in STATUS.items():
        result = FitResult(reason not in ("max_iterations", "not_finite"), reason, 1, 0.0)
        assert (result.status, result.message, result.success) == (code, MESSAGES[reason], result.converged)
    assert (STATUS["gtol"], STATUS["ftol"], STATUS["xtol"], STATUS["max_iterations"]) == (1, 2, 3, 0)
    assert {MESSAGES[k] for k in ("gtol", "ftol", "xtol")} == {f"`{k}` termination condition is satisfied."
                                                               for k in ("gtol", "ftol", "xtol")}


def test_entry_names_follow_the_parameters_entries():
    model = nn.Sequential(nn.Linear(2, 2))
    model.register_parameter("k", nn.Parameter(torch.tensor(1.0)))
    assert entry_names(ParameterLayout.of(model)) == [  # (named_parameters: the module's own first)
        "k", "0.weight[0, 0]", "0.weight[0, 1]", "0.weight[1, 0]", "0.weight[1, 1]", "0.bias[0]", "0.bias[1]"]


# ------------------------------------------------------------------------------ covariance on crafted Jacobians
class _OneRank:
    active = False

    @staticmethod
    def sum_float(value, device):
        return value


def _crafted(singular_values, m=6, dtype=torch.float64, seed=0):
    """J = U diag(s) Vᵀ with orthonormal U, V: its singular values are the given ones."""
    g = torch.Generator().manual_seed(seed)
    n = len(singular_values)
    U, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    J = U @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ V.T
    r = torch.randn(m, generator=g, dtype=torch.float64)
    return (r.to(dtype), J.to(dtype)), V


def test_covariance_of_a_crafted_jacobian_is_v_s_minus_2_vt():
    from marquardt.optim.solution import covariance

    (r, J), V = _crafted([3.0, 0.5, 1e-3])
    expected = V @ torch.diag(torch.tensor([3.0, 0.5, 1e-3], dtype=torch.float64) ** -2) @ V.T
    absolute = covariance(lambda: (r, J), ["a", "b", "c"], _OneRank(), 2.0, absolute_sigma=True)
    torch.testing.assert_close(absolute.matrix, expected, rtol=1e-9, atol=0.0)
    estimated = covariance(lambda: (r, J), ["a", "b", "c"], _OneRank(), 2.0)  # s² = 2·cost/(m − n) = 2/3
    torch.testing.assert_close(estimated.matrix, expected * (2.0 / 3), rtol=1e-9, atol=0.0)
    assert estimated.names == ["a", "b", "c"] and estimated.matrix.dtype == torch.float64
    (r32, J32), _ = _crafted([3.0, 0.5, 1e-1], dtype=torch.float32)
    assert covariance(lambda: (r32, J32), ["a", "b", "c"], _OneRank(), 2.0).matrix.dtype == torch.float32


def test_covariance_is_undefined_below_scipys_rank_threshold():
    """Singular values at or below eps·max(m, n)·s_max count as zero (a relative threshold, as scipy's)."""
    from marquardt.optim.solution import covariance

    (r, J), _ = _crafted([1e6, 1.0, 1e-12])  # s_min/s_max = 1e-18: below eps·6
    with pytest.warns(CovarianceWarning) as record:
        undefined = covariance(lambda: (r, J), ["a", "b", "c"], _OneRank(), 1.0)
    assert torch.isinf(undefined.matrix).all() and undefined.matrix.dtype == torch.float64
    assert str(record[0].message) == ("covariance: the covariance of the parameters cannot be estimated (the "
                                      "Jacobian at the solution is rank-deficient); every entry is inf")
    (r, J), _ = _crafted([1e-6, 1e-9, 1e-12])  # tiny but well conditioned (s_min/s_max = 1e-6): defined
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(covariance(lambda: (r, J), ["a", "b", "c"], _OneRank(), 1.0).matrix).all()


def test_standard_errors_estimate_s2_unless_told_the_sigma_is_absolute():
    t, y = exponential_data(3)
    result = marquardt.fit(LevenbergMarquardt(Exponential(), residuals), t, y, max_iterations=20)
    with pytest.warns(CovarianceWarning):
        errors = result.standard_errors()  # absolute_sigma=False by default: s² cannot be estimated from m = n
    assert all(torch.isinf(e) for e in errors.values())
    assert torch.isfinite(result.covariance(absolute_sigma=True).matrix).all()


def test_an_undefined_covariance_is_made_on_the_parameters_device():
    t, y = exponential_data(3)
    result = marquardt.fit(LevenbergMarquardt(Exponential(), residuals), t, y, max_iterations=20)
    with torch.device("meta"), pytest.warns(CovarianceWarning):
        matrix = result.covariance().matrix
    assert matrix.device.type == "cpu" and torch.isinf(matrix).all()


def test_an_mse_fits_residuals_are_outputs_minus_targets():
    t, y = exponential_data(30)
    model = Exponential()
    result = marquardt.fit(LevenbergMarquardt(model, "mse", momentum=None), t, y, max_iterations=5)
    with torch.no_grad():
        torch.testing.assert_close(result.fun, model(t) - y, rtol=1e-12, atol=1e-14)
    weighted = marquardt.fit(LevenbergMarquardt(Exponential(), "mse", momentum=None), t, y, max_iterations=5,
                             weight=torch.full((30,), 4.0, dtype=torch.float64))
    assert weighted.cost == pytest.approx(0.5 * float(weighted.fun @ weighted.fun), rel=1e-12)


def test_the_jacobian_of_a_fit_of_a_function_of_the_model_alone():
    """fn(model) takes no batch: the residuals are counted from the probe, not from a batch's leading size."""
    t, y = exponential_data(20)
    result = marquardt.fit(LevenbergMarquardt(Exponential(), residuals=lambda m: m(t) - y), return_jacobian=True,
                           max_iterations=40)
    reference = marquardt.fit(LevenbergMarquardt(Exponential(), residuals), t, y, return_jacobian=True,
                              max_iterations=40)
    torch.testing.assert_close(result.jac, reference.jac, rtol=1e-9, atol=1e-12)


def test_weighted_mse_fits_return_weighted_residuals_and_jacobian():
    t, y = exponential_data(30)
    w = torch.linspace(0.5, 4.0, 30, dtype=torch.float64)
    result = marquardt.fit(LevenbergMarquardt(Exponential(), "mse", momentum=None), t, y, weight=w,
                           return_jacobian=True, max_iterations=5)
    x = torch.stack([result.x[k] for k in "abc"])
    J = torch.autograd.functional.jacobian(lambda p: _torch_curve(p, t) - y, x)
    with torch.no_grad():
        r = _torch_curve(x, t) - y
    torch.testing.assert_close(result.fun, w.sqrt() * r, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(result.jac, w.sqrt().unsqueeze(1) * J, rtol=1e-10, atol=1e-12)


def test_residuals_and_jacobian_are_refused_for_cross_entropy():
    from marquardt.curvature.noise import NoiseReplay

    model = nn.Linear(2, 3).double()
    opt = LevenbergMarquardt(model, "cross_entropy")
    x, labels = torch.randn(5, 2, dtype=torch.float64), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match=r"^residuals and their Jacobian: only a least-squares objective has them "
                                         r"\(loss 'mse', a residual callable or function\), not this one "
                                         r"\(curvature 'ggn'\)$"):
        opt.objective.least_squares(x, labels, NoiseReplay(opt.layout.device))


def test_fit_refusals_and_defaults_word_for_word(monkeypatch):
    from marquardt.optim import fit as fit_module

    model = nn.Linear(2, 3).double()
    x, labels = torch.randn(6, 2, dtype=torch.float64), torch.randint(0, 3, (6,))
    opt = LevenbergMarquardt(model, "cross_entropy")
    with pytest.raises(ValueError, match=r"^return_jacobian: only a least-squares fit \(loss 'mse', a residual "
                                         r"callable or residual function\) has a Jacobian of residuals$"):
        marquardt.fit(opt, x, labels, return_jacobian=True)
    bars = []
    monkeypatch.setattr(fit_module, "tqdm", lambda **kwargs: bars.append(kwargs) or _NoBar())
    result = marquardt.fit(opt, x, labels, ftol=0.0, xtol=0.0, gtol=0.0)  # the defaults: 200 iterations, no bar
    assert result.iterations == 200 and bars == []
    with pytest.raises(ValueError, match=r"^covariance: only a least-squares fit has one \(loss 'mse', a residual "
                                         r"callable or residual function\), not a cross-entropy fit$"):
        result.covariance()
    marquardt.fit(opt, x, labels, max_iterations=2, progress=True)
    assert bars == [dict(total=2, desc="LM fit", leave=False)]


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **values):
        pass

    def close(self):
        pass


def test_standard_errors_pass_absolute_sigma_on():
    t, y = exponential_data(3)
    result = marquardt.fit(LevenbergMarquardt(Exponential(), residuals), t, y, max_iterations=20)
    errors = result.standard_errors(absolute_sigma=True)  # m = n: only the absolute sigma gives a covariance
    expected = result.covariance(absolute_sigma=True).matrix.diagonal().sqrt()
    assert torch.equal(torch.stack([errors[k] for k in "abc"]), expected) and torch.isfinite(expected).all()
