"""Loss modules and binary cross-entropy: each one's exact (generalized) Gauss-Newton factor against autograd's
Hessian and gradient, the reported loss against the module's own value, and the refusals of the others."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from marquardt import LevenbergMarquardt
from marquardt.curvature.losses import BinaryCrossEntropy
from marquardt.curvature.modes import make_curvature
from tests.models import sine_data


@pytest.mark.parametrize("pos_weight", [None, torch.tensor([0.5, 3.0, 1.0])])
@pytest.mark.parametrize("per_entry_mean", [False, True])
def test_bce_factor_is_the_hessian_and_its_residual_the_gradient(pos_weight, per_entry_mean):
    torch.manual_seed(0)
    z = torch.tensor([[0.3, -2.0, 40.0], [-35.0, 0.0, 1.5], [2.0, 5.0, -0.7], [0.1, -0.1, 0.0]],
                     dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.3], [1.0, 1.0, 0.0], [0.5, 0.0, 1.0]], dtype=torch.float64)
    bce = BinaryCrossEntropy(pos_weight=pos_weight, per_entry_mean=per_entry_mean)
    W, rho = bce.weights(z, y)
    assert W.shape == (4, 3, 3) and rho.shape == (4, 3) and torch.isfinite(rho).all()
    for i in range(4):
        def loss(zi, i=i):
            return bce.per_sample_loss(zi.unsqueeze(0), y[i : i + 1])[0]

        H = torch.autograd.functional.hessian(loss, z[i])
        g = torch.func.grad(loss)(z[i])
        # p(1 − p) is floored at 1e-12 (e^-40 lies below): W Wᵀ is exact to that floor, W ρ exactly
        torch.testing.assert_close(W[i] @ W[i].T, H, rtol=1e-10, atol=3e-12)
        torch.testing.assert_close(W[i] @ rho[i], g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bce.hessian_factor(z, y), W)
    assert bce.rows_per_sample(3) == 3


def test_bce_hessian_without_targets_is_refused_only_with_a_positive_weight():
    z = torch.randn(3, 2, dtype=torch.float64)
    p = torch.sigmoid(z)
    torch.testing.assert_close(BinaryCrossEntropy().hessian_factor(z), torch.diag_embed((p * (1 - p)).sqrt()))
    with pytest.raises(ValueError, match="pos_weight: its curvature depends on the targets"):
        BinaryCrossEntropy(pos_weight=torch.ones(2)).hessian_factor(z)


def _binary_data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = ((x[:, :1] * x[:, 1:]) > 0).double()  # XOR-like quadrants
    return x, y


def _classifier(outputs=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, outputs)).double()


@pytest.mark.parametrize("loss", ["bce_with_logits", nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss(reduction="sum"),
                                  nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.5], dtype=torch.float64))],
                         ids=["string", "module", "module_sum", "module_pos_weight"])
def test_reported_bce_losses_are_the_modules_value(loss):
    x, y = _binary_data()
    model = _classifier()
    reference = loss if isinstance(loss, nn.Module) else nn.BCEWithLogitsLoss()
    with torch.no_grad():
        expected = float(reference(model(x), y))
    info = LevenbergMarquardt(model, loss).step(x, y)
    assert info.loss_before == pytest.approx(expected, rel=1e-13)
    with torch.no_grad():
        assert info.loss_after == pytest.approx(float(reference(model(x), y)), rel=1e-13)


def test_the_first_bce_step_is_the_explicit_generalized_gauss_newton_step():
    """δ = −(A + λ diag(d))⁻¹ g with A = (1/N) Σ J_zᵀ H J_z from jacrev and autograd's Hessian in z."""
    from torch.func import functional_call, jacrev

    from marquardt.types.layout import ParameterLayout

    x, y = _binary_data(20)
    model = _classifier(outputs=2)
    y2 = torch.cat([y, 1 - y], dim=1)
    layout = ParameterLayout.of(model)
    theta0 = layout.get_flat()
    Jz = jacrev(lambda t: functional_call(model, layout.as_dict(t), (x,)))(theta0)  # [N, 2, n]
    with torch.no_grad():
        z = model(x)
    p = torch.sigmoid(z)
    H = torch.diag_embed(p * (1 - p))
    A = torch.einsum("scn,scd,sdm->nm", Jz, H, Jz) / 20
    g = torch.einsum("scn,sc->n", Jz, p - y2) / 20
    lam = 1e-2
    expected = -torch.linalg.solve(A + lam * torch.eye(len(g), dtype=torch.float64), g)
    opt = LevenbergMarquardt(model, "bce_with_logits", damping="levenberg", lambda_init=lam, lambda_rule="fixed",
                             momentum=None, solver="primal")
    info = opt.step(x, y2)
    assert info.accepted
    torch.testing.assert_close(layout.get_flat() - theta0, info.multiplier * expected, rtol=1e-9, atol=1e-12)


def test_a_one_logit_classifier_learns_with_bce():
    x, y = _binary_data(200)
    model = _classifier()
    opt = LevenbergMarquardt(model, nn.BCEWithLogitsLoss())
    for _ in range(40):
        opt.step(x, y)
    with torch.no_grad():
        accuracy = float(((model(x) > 0).double() == y).double().mean())
    assert accuracy > 0.95


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_loss_modules_report_their_value_and_step_as_mse(reduction):
    x, y = sine_data(50, dtype=torch.float64)
    y2 = torch.cat([y, 2 * y], dim=1)
    a = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    b = copy.deepcopy(a)
    module = nn.MSELoss(reduction=reduction)
    by_module = LevenbergMarquardt(a, module)
    by_string = LevenbergMarquardt(b, "mse", loss_scale=reduction)
    for _ in range(4):
        with torch.no_grad():
            expected = float(module(a(x), y2))
        info, plain = by_module.step(x, y2), by_string.step(x, y2)
        assert info.loss_before == pytest.approx(expected, rel=1e-13)
        factor = 2.0 / 2 if reduction == "mean" else 2.0  # (z − y)² per entry, against ½‖z − y‖² per sample
        assert info.loss_after == pytest.approx(factor * plain.loss_after, rel=1e-9)
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in a.parameters()]),
                               torch.cat([p.reshape(-1) for p in b.parameters()]), rtol=1e-8, atol=1e-10)


class Custom(nn.Module):
    def forward(self, z, y):
        return (z - y).abs().mean()


@pytest.mark.parametrize("loss,message", [
    (nn.L1Loss(), "a L1Loss object has no Gauss-Newton form here; the supported loss modules are nn.MSELoss, "
                  "nn.CrossEntropyLoss, nn.BCEWithLogitsLoss"),
    (nn.KLDivLoss(), "a KLDivLoss object has no Gauss-Newton form"),
    (Custom(), "a Custom object has no Gauss-Newton form.*residuals=fn\\(model, \\*batch\\)"),
    (nn.MSELoss(reduction="none"), r"MSELoss\(reduction='none'\) returns per-entry losses"),
    (nn.BCEWithLogitsLoss(weight=torch.ones(1)), r"BCEWithLogitsLoss\(weight=...\) is not supported"),
])
def test_other_loss_objects_are_refused_naming_the_supported_ones(loss, message):
    with pytest.raises(ValueError, match=message):
        LevenbergMarquardt(nn.Linear(2, 1), loss)


def test_bad_bce_targets_and_settings_are_refused_by_name():
    x, y = _binary_data(10)
    opt = LevenbergMarquardt(_classifier(), "bce_with_logits")
    with pytest.raises(ValueError, match=r"targets: expected probabilities in \[0, 1\] for binary cross-entropy, got "
                                         r"range \[0, 2\]"):
        opt.step(x, 2 * y)
    with pytest.raises(ValueError, match=r"targets: expected probabilities in \[0, 1\] shaped like the model output "
                                         r"\(10, 1\)"):
        opt.step(x, y.squeeze(1))
    with pytest.raises(ValueError, match="curvature: loss='bce_with_logits' supports only 'ggn'"):
        LevenbergMarquardt(_classifier(), "bce_with_logits", curvature="ef")
    with pytest.raises(ValueError, match="loss_scale: 'sum' contradicts the loss module's reduction='mean'"):
        LevenbergMarquardt(_classifier(), nn.BCEWithLogitsLoss(), loss_scale="sum")
    assert isinstance(make_curvature(nn.BCEWithLogitsLoss(), None), BinaryCrossEntropy)


def test_a_checkpoint_names_its_loss_module():
    x, y = _binary_data(10)
    opt = LevenbergMarquardt(_classifier(), nn.BCEWithLogitsLoss())
    opt.step(x, y)
    saved = opt.state_dict()
    assert saved["param_groups"][0]["loss"] == "BCEWithLogitsLoss()"
    LevenbergMarquardt(_classifier(), nn.BCEWithLogitsLoss()).load_state_dict(saved)
    with pytest.raises(ValueError, match="its loss is 'BCEWithLogitsLoss\\(\\)', this optimizer's is 'mse'"):
        LevenbergMarquardt(_classifier(), "mse").load_state_dict(saved)


def _ce_data(n=30, classes=4, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, classes)).double()
    x, y = torch.randn(n, 2, dtype=torch.float64), torch.randint(0, classes, (n,))
    return model, x, y


CE_MODULES = {
    "plain": lambda: nn.CrossEntropyLoss(),
    "class_weights": lambda: nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)),
    "ignore_index": lambda: nn.CrossEntropyLoss(ignore_index=2),
    "label_smoothing": lambda: nn.CrossEntropyLoss(label_smoothing=0.2),
    "all_three_sum": lambda: nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64),
                                                 ignore_index=1, label_smoothing=0.1, reduction="sum"),
}


@pytest.mark.parametrize("targets", ["indices", "probabilities"])
@pytest.mark.parametrize("case", CE_MODULES)
def test_reported_cross_entropy_losses_are_the_modules_value(case, targets):
    module = CE_MODULES[case]()
    if targets == "probabilities" and module.ignore_index != -100:
        pytest.skip("ignore_index applies to class indices only")
    model, x, y = _ce_data()
    if targets == "probabilities":
        y = torch.softmax(torch.randn(30, 4, dtype=torch.float64), dim=1)
    with torch.no_grad():
        before = float(module(model(x), y))
    info = LevenbergMarquardt(model, module).step(x, y)
    with torch.no_grad():
        after = float(module(model(x), y))
    assert (info.loss_before, info.loss_after) == pytest.approx((before, after), rel=1e-12)


def test_the_first_weighted_cross_entropy_step_is_the_explicit_ggn_step():
    """A = Σᵢ J_zᵢᵀ (Σ_c tᵢc)(diag pᵢ − pᵢpᵢᵀ) J_zᵢ / Σ w_{yᵢ}, g the gradient of the module's value."""
    from torch.func import functional_call, jacrev

    from marquardt.types.layout import ParameterLayout

    module = CE_MODULES["all_three_sum"]()
    module.reduction = "mean"
    model, x, y = _ce_data(20)
    layout = ParameterLayout.of(model)
    theta0 = layout.get_flat()

    def value(t):
        return module(functional_call(model, layout.as_dict(t), (x,)), y)

    Jz = jacrev(lambda t: functional_call(model, layout.as_dict(t), (x,)))(theta0)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    w, eps, kept = module.weight, module.label_smoothing, (y != module.ignore_index).double()
    t = ((1 - eps) * w[y].unsqueeze(1) * nn.functional.one_hot(y, 4) + eps / 4 * w) * kept.unsqueeze(1)
    H = t.sum(1).view(-1, 1, 1) * (torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1))
    A = torch.einsum("scn,scd,sdm->nm", Jz, H, Jz) / float((w[y] * kept).sum())
    g = torch.func.grad(value)(theta0)
    lam = 1e-2
    expected = -torch.linalg.solve(A + lam * torch.eye(len(g), dtype=torch.float64), g)
    opt = LevenbergMarquardt(model, module, damping="levenberg", lambda_init=lam, lambda_rule="fixed", solver="primal")
    info = opt.step(x, y)
    assert info.accepted
    torch.testing.assert_close(layout.get_flat() - theta0, info.multiplier * expected, rtol=1e-9, atol=1e-12)


def test_a_plain_cross_entropy_module_steps_as_the_string():
    model, x, y = _ce_data()
    other = copy.deepcopy(model)
    a, b = LevenbergMarquardt(model, nn.CrossEntropyLoss()), LevenbergMarquardt(other, "cross_entropy")
    for _ in range(3):
        assert a.step(x, y).loss_after == pytest.approx(b.step(x, y).loss_after, rel=1e-12)


def test_ignored_samples_change_nothing():
    model, x, y = _ce_data()
    y[::3] = 7  # ignored
    other = copy.deepcopy(model)
    kept = y != 7
    a = LevenbergMarquardt(model, nn.CrossEntropyLoss(ignore_index=7), solver="primal")
    b = LevenbergMarquardt(other, "cross_entropy", solver="primal")
    for _ in range(3):
        assert a.step(x, y).loss_after == pytest.approx(b.step(x[kept], y[kept]).loss_after, rel=1e-11)


def test_cross_entropy_module_refusals_name_the_argument():
    model, x, y = _ce_data()
    with pytest.raises(ValueError, match="curvature: nn.CrossEntropyLoss supports 'ggn' \\(default\\) or 'ef'"):
        LevenbergMarquardt(model, nn.CrossEntropyLoss(), curvature="gn")
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\] \(or be the ignore_index 2\), got "
                                         r"range \[0, 5\]"):
        y[0] = 5
        LevenbergMarquardt(model, nn.CrossEntropyLoss(ignore_index=2)).step(x, y)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss\(reduction='none'\) returns per-entry losses"):
        LevenbergMarquardt(model, nn.CrossEntropyLoss(reduction="none"))
    ef = LevenbergMarquardt(copy.deepcopy(model), nn.CrossEntropyLoss(label_smoothing=0.1), curvature="ef",
                            geodesic=False)
    y[0] = 1
    info = ef.step(x, y)
    with torch.no_grad():
        assert info.loss_before == pytest.approx(float(nn.CrossEntropyLoss(label_smoothing=0.1)(model(x), y)),
                                                 rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("module", ["HuberLoss", "SmoothL1Loss"])
def test_huber_and_smooth_l1_modules_report_their_value_and_match_the_robust_fit(module, reduction):
    x, y = sine_data(40, dtype=torch.float64)
    y = torch.cat([y, 3 * y], dim=1)
    y[::5] += 4.0  # outliers beyond the threshold
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    loss = nn.HuberLoss(delta=0.5, reduction=reduction) if module == "HuberLoss" else \
        nn.SmoothL1Loss(beta=0.5, reduction=reduction)
    other = copy.deepcopy(model)
    # the module's value is κ times the robust objective (κ = 1/c per-entry mean, ÷ beta for SmoothL1): with
    # d = 1 and a fixed λ, (κA + λI)δ = −κg is the robust step at λ/κ
    kappa = (1 / 2 if reduction == "mean" else 1.0) / (0.5 if module == "SmoothL1Loss" else 1.0)
    fixed = dict(damping="levenberg", lambda_rule="fixed", momentum=None, line_search=None, solver="primal")
    opt = LevenbergMarquardt(model, loss, lambda_init=1e-2, **fixed)
    reference = LevenbergMarquardt(other, "mse", robust="huber", robust_scale=0.5, loss_scale=reduction,
                                   lambda_init=1e-2 / kappa, **fixed)
    for _ in range(3):
        with torch.no_grad():
            expected = float(loss(model(x), y))
        info, robust = opt.step(x, y), reference.step(x, y)
        assert info.loss_before == pytest.approx(expected, rel=1e-12)
        assert info.loss_before == pytest.approx(kappa * robust.loss_before, rel=1e-12)
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in model.parameters()]),
                               torch.cat([p.reshape(-1) for p in other.parameters()]), rtol=1e-8, atol=1e-10)


def test_the_huber_string_is_the_unit_threshold_huber_summed_over_outputs():
    x, y = sine_data(20, dtype=torch.float64)
    y = y + 2.0 * (torch.arange(20) % 4 == 0).double().unsqueeze(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        expected = float(nn.HuberLoss(delta=1.0, reduction="sum")(model(x), y)) / 20
    assert LevenbergMarquardt(model, "huber").step(x, y).loss_before == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="a zero threshold is an L1 loss"):
        LevenbergMarquardt(model, nn.SmoothL1Loss(beta=0.0))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_two_logit_bce_modules_average_or_sum_over_every_entry(reduction):
    x, y = _binary_data(20)
    y2 = torch.cat([y, 1 - y], dim=1)
    model = _classifier(outputs=2)
    module = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 0.5]), reduction=reduction)  # float32 weights
    with torch.no_grad():
        expected = float(module(model(x), y2))
    opt = LevenbergMarquardt(model, module)
    assert opt.step(x, y2).loss_before == pytest.approx(expected, rel=1e-13)
    assert opt.curvature.pos_weight.dtype == torch.float32  # (cast to the outputs' dtype where used)


def test_a_cross_entropy_module_takes_the_empirical_fisher_when_asked():
    from marquardt.curvature.losses import EmpiricalFisherCE, GeneralizedGaussNewtonCE

    assert isinstance(make_curvature(nn.CrossEntropyLoss(), "ef"), EmpiricalFisherCE)
    assert isinstance(make_curvature(nn.CrossEntropyLoss(), None), GeneralizedGaussNewtonCE)
    assert isinstance(make_curvature(nn.CrossEntropyLoss(), "ggn"), GeneralizedGaussNewtonCE)


def test_float32_class_weights_and_the_last_class_index():
    model, x, y = _ce_data()
    y[0] = 3  # the last class: in range
    module = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 3.0]))  # float32 weights, float64 model
    with torch.no_grad():
        expected = float(nn.CrossEntropyLoss(weight=module.weight.double())(model(x), y))
    assert LevenbergMarquardt(model, module).step(x, y).loss_before == pytest.approx(expected, rel=1e-13)
    y[0] = 4  # one past it
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\] \(or be the ignore_index -100\), got "
                                         r"range \[0, 4\]"):
        LevenbergMarquardt(model, nn.CrossEntropyLoss(ignore_index=-100)).step(x, y)
