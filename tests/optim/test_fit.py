"""fit's convergence tests, each on scripted step results just either side of its threshold."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from marquardt.optim import fit as fit_module
from marquardt.optim.fit import iterate
from marquardt.optim.result import StepResult


def _info(**changes) -> StepResult:
    """An accepted LM step far from every threshold, with the given fields changed."""
    fields = dict(loss_before=1.0, loss_after=0.5, accepted=True, reason="downhill", lam=1.0, multiplier=1.0,
                  attempts=1, forward_passes=2, jacobian_passes=1, solves=1, form="primal", engine="fast",
                  momentum_used=False, geodesic_used=False, grad_norm_inf=1.0, step_norm=1.0, theta_norm=1.0,
                  predicted_reduction=0.5)
    fields.update(changes)
    return StepResult(**fields)


class Scripted:
    """Stands in for the optimizer: step() returns the scripted results in turn."""

    def __init__(self, *infos: StepResult, lam_max: float = 1e10) -> None:
        self.infos = list(infos)
        self.config = SimpleNamespace(lam=SimpleNamespace(maximum=lam_max))

    def step(self):
        return self.infos.pop(0) if len(self.infos) > 1 else self.infos[0]


def _iterate(scripted: Scripted, **kwargs):
    return iterate(scripted.step, scripted.config.lam.maximum, **kwargs)


def _fit(*infos, **kwargs):
    return _iterate(Scripted(*infos, lam_max=kwargs.pop("lam_max", 1e10)), max_iterations=3,
                         **kwargs)


def test_nothing_fires_far_from_every_threshold():
    result = _fit(_info())
    assert (result.reason, result.converged, result.iterations) == ("max_iterations", False, 3)


def test_ftol_needs_both_the_actual_and_the_predicted_reduction():
    tol = 1e-6
    both = _info(loss_before=1.0, loss_after=1.0 - 0.9e-6, predicted_reduction=0.9e-6)
    assert _fit(both, ftol=tol).reason == "ftol"
    assert _fit(_info(loss_before=1.0, loss_after=1.0 - 0.9e-6, predicted_reduction=1.1e-6), ftol=tol).reason \
        == "max_iterations"  # the prediction alone keeps it going
    assert _fit(_info(loss_before=1.0, loss_after=1.0 - 1.1e-6, predicted_reduction=0.9e-6), ftol=tol).reason \
        == "max_iterations"
    assert _fit(_info(loss_after=1.0 - 0.9e-6, predicted_reduction=None), ftol=tol).reason == "max_iterations"
    assert _fit(both.__class__(**{**both.__dict__, "accepted": False}), ftol=tol).reason == "max_iterations"


def test_ftol_also_needs_a_small_scaled_gradient():
    """A tiny prediction is not enough where the Gauss-Newton model could still gain more than ftol·C₀ (an
    inaccurate solve, or a step held short by the damping)."""
    tol = 1e-6
    both = dict(loss_before=1.0, loss_after=1.0 - 0.9e-6, predicted_reduction=0.9e-6)
    assert _fit(_info(**both, model_reduction_bound=0.9e-6), ftol=tol).reason == "ftol"
    assert _fit(_info(**both, model_reduction_bound=1.1e-6), ftol=tol).reason == "max_iterations"
    assert _fit(_info(**both, model_reduction_bound=None), ftol=tol).reason == "ftol"  # (no bound reported)


def _awkward_systems(seed: int):
    """50 primal systems of 1-6 parameters whose columns span six orders of magnitude, with their generator."""
    import torch

    from marquardt.solve.primal import PrimalSystem

    g = torch.Generator().manual_seed(seed)
    for trial in range(50):
        n = 1 + trial % 6
        J = torch.randn(n + 3, n, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, n, dtype=torch.float64)
        system = PrimalSystem(n, 1.0, torch.float64, torch.device("cpu"))
        system.add(J, torch.randn(n + 3, generator=g, dtype=torch.float64))
        system.finalize()
        yield system, g


def test_the_model_reduction_bound_is_below_the_gauss_newton_reduction():
    """‖D⁻¹g‖²/(2 Σ Aⱼⱼ/dⱼ) ≤ ½gᵀA⁻¹g for any positive damping d, on awkwardly scaled systems."""
    import torch

    for system, g in _awkward_systems(0):
        n = system.g.numel()
        d = torch.rand(n, generator=g, dtype=torch.float64) * 10 ** (6 * torch.rand(n, generator=g) - 3)
        exact = 0.5 * float(system.g @ torch.linalg.solve(system.A.double(), system.g))
        bound = system.model_reduction_bound(d.double())
        assert 0 < bound <= exact * (1 + 1e-9), (bound, exact)


def test_xtol_is_relative_to_the_parameters():
    tol = 1e-6
    assert _fit(_info(step_norm=0.9e-6 * (1e-6 + 1.0), theta_norm=1.0), xtol=tol).reason == "xtol"
    assert _fit(_info(step_norm=1.1e-6 * (1e-6 + 1.0), theta_norm=1.0), xtol=tol).reason == "max_iterations"
    # ‖θ‖ = 1000: a step of 5e-4 is within xtol·(xtol + ‖θ‖) = 1e-3, though not within xtol alone
    assert _fit(_info(step_norm=5e-4, theta_norm=1000.0), xtol=tol).reason == "xtol"


def test_xtol_also_needs_a_short_gauss_newton_step():
    """A short step is not enough where the Gauss-Newton step is long (held short by λ or the trust region)."""
    tol = 1e-6
    short = dict(step_norm=0.5e-6, theta_norm=1.0)
    assert _fit(_info(**short, step_bound=0.9e-6), xtol=tol).reason == "xtol"
    assert _fit(_info(**short, step_bound=1.1e-6), xtol=tol).reason == "max_iterations"
    assert _fit(_info(**short, step_bound=None), xtol=tol).reason == "xtol"  # (no bound reported)


def test_the_step_bound_is_below_the_gauss_newton_step():
    """‖g‖/Σ Aⱼⱼ ≤ ‖A⁻¹g‖ on awkwardly scaled systems."""
    import torch

    for system, _ in _awkward_systems(1):
        exact = float(torch.linalg.solve(system.A, system.g).norm())
        assert 0 < system.step_bound() <= exact * (1 + 1e-9)


def test_a_step_held_short_by_a_huge_lambda_does_not_stop_a_fit():
    """λ held at 1e8 makes every step about 1e-8 of the Gauss-Newton step: without the step bound, xtol = 1e-6
    would end the fit after one iteration, far from the minimum; with it the fit runs until ftol or the budget."""
    import torch

    import marquardt

    x = torch.linspace(0, 1, 20, dtype=torch.float64)
    model = torch.nn.Linear(1, 1).double()
    opt = marquardt.LevenbergMarquardt(model, lambda out, y: out.squeeze(1) - y, lambda_rule="delayed",
                                       lambda_min=1e8, lambda_max=1e9, lambda_init=1e8, momentum=None, line_search=None)
    result = marquardt.fit(opt, x.unsqueeze(1), 3 * x + 1, max_iterations=5, xtol=1e-6)
    assert result.reason == "max_iterations"
    assert all(info.step_norm <= 1e-6 * (1e-6 + info.theta_norm) for info in result.history)


def test_precision_fires_on_an_accepted_step_below_the_rounding_of_theta():
    rounding = 4 * 2.0**-52
    assert _fit(_info(step_norm=0.9 * rounding * 10.0, theta_norm=10.0), rounding=rounding, xtol=0.0).reason \
        == "precision"
    assert _fit(_info(step_norm=1.1 * rounding * 10.0, theta_norm=10.0), rounding=rounding, xtol=0.0).reason \
        == "max_iterations"
    assert _fit(_info(accepted=False, reason="rejected", step_norm=0.0, theta_norm=10.0), rounding=rounding,
                xtol=0.0).reason == "max_iterations"  # (a rejected step moves nothing by definition)  # (a rejected step moves nothing by definition)


def test_gtol_fires_on_a_small_gradient_or_a_zero_gradient_step():
    assert _fit(_info(grad_norm_inf=0.9e-9), gtol=1e-9).reason == "gtol"
    assert _fit(_info(grad_norm_inf=1.1e-9), gtol=1e-9).reason == "max_iterations"
    with pytest.warns(RuntimeWarning, match="gradient is exactly 0 but the loss is"):
        assert _fit(_info(reason="zero_gradient", accepted=False, grad_norm_inf=0.0)).reason == "gtol"


def test_a_zero_gradient_at_a_zero_loss_stops_without_a_warning():
    """An exact fit (loss 0) is the minimum: gtol, and nothing to warn about."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _fit(_info(reason="zero_gradient", accepted=False, grad_norm_inf=0.0, loss_before=0.0,
                            loss_after=0.0))
    assert result.reason == "gtol"


def test_gtol_reads_minpacks_scaled_gradient_when_the_step_reports_it():
    assert _fit(_info(grad_norm_inf=5.0, gradient_cosine=0.9e-9), gtol=1e-9).reason == "gtol"
    assert _fit(_info(grad_norm_inf=1e-30, gradient_cosine=1.1e-9), gtol=1e-9).reason == "max_iterations"


def test_the_gradient_cosine_is_minpacks_gnorm():
    """maxⱼ |gⱼ|/√(2·loss·Aⱼⱼ) of a mean-scaled system equals lmder's gnorm = maxⱼ |J_jᵀr|/(‖r‖‖J_j‖) computed from
    J and r directly, a zero column left out."""
    import torch

    from marquardt.solve.primal import PrimalSystem

    g = torch.Generator().manual_seed(2)
    J = torch.randn(9, 4, generator=g, dtype=torch.float64) * torch.tensor([1e-3, 1.0, 1e4, 0.0], dtype=torch.float64)
    r = torch.randn(9, generator=g, dtype=torch.float64)
    alpha = 1 / 9
    system = PrimalSystem(4, alpha, torch.float64, torch.device("cpu"))
    system.add(J, r)
    system.finalize()
    loss = alpha * 0.5 * float(r @ r)
    norms = J.norm(dim=0)
    gnorm = max(float((J[:, j] @ r).abs() / (r.norm() * norms[j])) for j in range(3))
    assert system.gradient_cosine(loss) == pytest.approx(gnorm, rel=1e-12)
    assert system.gradient_cosine(0.0) == 0.0


def test_gtol_does_not_depend_on_the_scale_of_the_residuals():
    """Residuals multiplied by 1e6 stop on gtol after the same iterations (an absolute ‖g‖∞ test would not)."""

    import marquardt
    from tests.models import Exponential, exponential_data

    t, y = exponential_data(30)
    runs = []
    for scale in (1.0, 1e6):
        opt = marquardt.LevenbergMarquardt(Exponential(), lambda out, target, s=scale: s * (out - target),
                                           lambda_rule="delayed", momentum=None)
        runs.append(marquardt.fit(opt, t, y, ftol=0.0, xtol=0.0, gtol=1e-6, max_iterations=100))
    assert [r.reason for r in runs] == ["gtol", "gtol"]
    assert runs[0].iterations == runs[1].iterations
    assert runs[1].history[-1].grad_norm_inf > 1e3 * runs[0].history[-1].grad_norm_inf


def test_lam_max_fires_only_on_a_rejected_step_at_the_bound():
    assert _fit(_info(accepted=False, reason="rejected", lam=1e10), lam_max=1e10).reason == "lam_max"
    assert _fit(_info(accepted=False, reason="rejected", lam=0.9e10), lam_max=1e10).reason == "max_iterations"
    assert _fit(_info(accepted=True, lam=1e10), lam_max=1e10).reason == "max_iterations"


def test_not_finite_stops_unconverged_and_each_stop_is_its_own_reason():
    result = _fit(_info(accepted=False, reason="not_finite", loss_before=float("inf")))
    assert (result.reason, result.converged, result.iterations) == ("not_finite", False, 1)
    later = _fit(_info(), _info(grad_norm_inf=0.0))
    assert (later.reason, later.iterations, later.converged) == ("gtol", 2, True)
    assert later.history[-1].converged == "gtol" and later.history[0].converged is None


def test_the_first_test_in_order_names_the_stop():
    both = _info(grad_norm_inf=0.0, loss_after=1.0, predicted_reduction=0.0, step_norm=0.0)
    assert _fit(both).reason == "gtol"  # gtol is checked first, then ftol, then xtol
    assert _fit(_info(loss_after=1.0, predicted_reduction=0.0, step_norm=0.0)).reason == "ftol"


def test_every_threshold_is_inclusive():
    """Exactly at each threshold the test fires (≤), with a loss of 4 so that ftol·|C₀| ≠ ftol/|C₀|."""
    ftol, xtol, gtol = 2.0**-20, 2.0**-20, 2.0**-30  # powers of two: the products below are exact
    at_ftol = _info(loss_before=4.0, loss_after=4.0 - ftol * 4.0, predicted_reduction=ftol * 4.0)
    assert _fit(at_ftol, ftol=ftol).reason == "ftol"
    assert _fit(_info(step_norm=xtol * (xtol + 4.0), theta_norm=4.0), xtol=xtol).reason == "xtol"
    assert _fit(_info(grad_norm_inf=gtol), gtol=gtol).reason == "gtol"


def test_a_zero_gradient_step_stops_whatever_the_gradient_norm_says():
    with pytest.warns(RuntimeWarning, match="gradient is exactly 0"):
        assert _fit(_info(reason="zero_gradient", accepted=False, grad_norm_inf=1.0)).reason == "gtol"


def test_defaults_run_200_iterations_without_a_bar(monkeypatch):
    monkeypatch.setattr(fit_module, "tqdm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a bar")))
    result = _iterate(Scripted(_info()))
    assert (result.reason, result.iterations) == ("max_iterations", 200)


def test_the_progress_bar_counts_iterations_and_shows_loss_and_lambda(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.updates, self.postfixes, self.closed = kwargs, [], [], False
            bars.append(self)

        def update(self, n):
            self.updates.append(n)

        def set_postfix(self, **values):
            self.postfixes.append(values)

        def close(self):
            self.closed = True

    monkeypatch.setattr(fit_module, "tqdm", Bar)
    _iterate(Scripted(_info(loss_after=0.25, lam=0.5)), max_iterations=3, progress=True)
    (bar,) = bars
    assert bar.kwargs == {"total": 3, "desc": "LM fit", "leave": False}
    assert bar.updates == [1, 1, 1] and bar.closed
    assert bar.postfixes[-1] == {"loss": "0.25", "lam": "0.5"}


def test_zero_tolerances_and_a_single_iteration_are_accepted():
    result = _fit(_info(), ftol=0.0, xtol=0.0, gtol=0.0)
    assert result.reason == "max_iterations"
    assert _iterate(Scripted(_info()), max_iterations=1).iterations == 1


@pytest.mark.parametrize("name", ["ftol", "xtol", "gtol"])
def test_a_negative_tolerance_is_refused_by_name(name):
    with pytest.raises(ValueError) as refused:
        _fit(_info(), **{name: -1.0})
    assert str(refused.value) == f"{name}: expected a number >= 0, got -1.0"


@pytest.mark.parametrize("value", [0, 1.5, True])
def test_max_iterations_must_be_a_positive_int(value):
    with pytest.raises(ValueError) as refused:
        _iterate(Scripted(_info()), max_iterations=value)
    assert str(refused.value) == f"max_iterations: expected an int >= 1, got {value!r}"
