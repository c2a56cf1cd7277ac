"""Models that do not keep the samples of a batch apart are differentiated whole, never one sample at a time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import marquardt
from marquardt.curvature.separable import mixes_samples
from tests.optim.mgh import FreudensteinRoth, JennrichSampson


class CentredLinear(nn.Module):
    """A linear layer whose outputs have the batch mean taken away: sample i's output depends on every input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return z - z.mean(dim=0, keepdim=True) + 0.1 * z**2


def _half_mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The optimizer's loss="mse": ½ ‖z − y‖² per sample, averaged over the samples."""
    with torch.no_grad():
        return 0.5 * float(((model(x) - y) ** 2).sum()) / x.shape[0]


@pytest.mark.parametrize("problem", [JennrichSampson, FreudensteinRoth])
def test_model_of_its_parameters_matches_the_residual_callable(problem):
    """A curve fit written as a module returning its residual vector, fitted with loss='mse' against zeros, takes
    exactly the steps of the same residuals passed as a residual callable."""
    as_loss, as_callable = problem(problem.x0), problem(problem.x0)
    m = as_loss.residuals(as_loss.x).numel()
    zeros = torch.zeros(m, dtype=torch.float64)
    same = dict(lambda_rule="delayed", momentum="lmam")  # (the two objectives' defaults differ)
    opt_loss = marquardt.LevenbergMarquardt(as_loss, "mse", **same)
    opt_callable = marquardt.LevenbergMarquardt(as_callable, lambda r, _t: r, **same)
    for _ in range(6):
        before = _half_mse(as_loss, zeros, zeros)
        a = opt_loss.step(zeros, zeros)
        b = opt_callable.step(torch.zeros(1, dtype=torch.float64))
        assert a.loss_before == pytest.approx(before, rel=1e-12)
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-12)
        torch.testing.assert_close(as_loss.x, as_callable.x, rtol=1e-10, atol=1e-12)
    assert a.engine == "full"


def test_batch_mixing_model_gets_its_true_loss_and_descends():
    torch.manual_seed(0)
    model = CentredLinear().double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    opt = marquardt.LevenbergMarquardt(model, "mse")
    for _ in range(5):
        before = _half_mse(model, x, y)
        info = opt.step(x, y)
        assert info.engine == "full"
        assert info.loss_before == pytest.approx(before, rel=1e-12)
        assert info.loss_after == pytest.approx(_half_mse(model, x, y), rel=1e-12)
        assert info.loss_after <= info.loss_before


@pytest.mark.parametrize("engine", ["functorch", "fast"])
def test_per_sample_engine_asked_by_name_is_refused_before_any_change(engine):
    model = CentredLinear().double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    opt = marquardt.LevenbergMarquardt(model, "mse", engine=engine)
    start = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"model: its output for sample 0 changes.*engine='full'"):
        opt.step(x, y)
    for p, p0 in zip(model.parameters(), start):
        assert torch.equal(p, p0)


def test_separable_models_are_not_flagged_and_keep_their_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    model[3].eval()  # a mix of flags, which the check must leave as they were
    x = torch.randn(16, 3)
    with torch.no_grad():
        z1 = model(x[:1])
    assert mixes_samples(model, x, z1) is None
    assert [m.training for m in model.modules()] == [True, True, True, True, False]
    opt = marquardt.LevenbergMarquardt(model.eval(), "mse")
    assert opt.step(x, torch.randn(16, 2)).engine != "full"


def test_reasons_name_what_is_wrong():
    ignores_input = JennrichSampson(JennrichSampson.x0)
    x = torch.zeros(10, dtype=torch.float64)
    with torch.no_grad():
        reason = mixes_samples(ignores_input, x, ignores_input(x[:1]))
    assert reason == "its output on one sample has shape (10,), not one leading entry per sample"
    one_sample = torch.zeros(1, 3)
    assert mixes_samples(CentredLinear(), one_sample, CentredLinear()(one_sample)) is None  # nothing to compare
