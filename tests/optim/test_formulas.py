"""The optimizer uses its pieces as specified: one-step checks against hand computations, and the features that a
default (or paper) run must actually use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from marquardt import LevenbergMarquardt
from marquardt.solve.block import BlockDiagonalSystem
from marquardt.solve.dual import DualSystem
from marquardt.solve.primal import PrimalSystem
from tests.models import sine_data, sine_mlp

CPU = torch.device("cpu")


class Square(nn.Module):
    """z = θ² x: the second directional derivative is known in closed form, z_vv = 2 v² x."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))

    def forward(self, x):
        return self.theta**2 * x


def test_geodesic_step_against_its_closed_form():
    x = torch.linspace(0.5, 2.0, 9, dtype=torch.float64).unsqueeze(1)
    y = 4.0 * x
    model = Square(1.3)
    opt = LevenbergMarquardt(model, "mse", geodesic=True, geodesic_alpha=10.0, momentum=None)
    theta, n, lam = 1.3, 9, 1.0
    J = 2 * theta * x.squeeze(1)  # ∂z/∂θ per sample
    r = (theta**2 * x - y).squeeze(1)
    A, g = float(J @ J) / n, float(J @ r) / n
    d = max(0.01, A)
    v = -g / (A + lam * d)
    a = -(float(J @ (2 * v**2 * x.squeeze(1))) / n) / (A + lam * d)  # −(A + λd)⁻¹ α Jᵀ z_vv
    info = opt.step(x, y)
    assert info.geodesic_used and info.accepted
    assert float(model.theta) - theta == pytest.approx(v + 0.5 * a, rel=1e-12)


def test_default_runs_use_momentum_and_paper_runs_take_uphill_steps():
    x, y = sine_data(200, dtype=torch.float64)
    default = LevenbergMarquardt(sine_mlp(8).double(), "mse")
    infos = [default.step(x, y) for _ in range(15)]
    assert sum(i.momentum_used for i in infos) >= 10
    paper = LevenbergMarquardt(sine_mlp(8).double(), "mse", preset="paper")
    assert "uphill" in [paper.step(x, y).reason for _ in range(15)]


def test_the_previous_step_is_stored_and_reverting_d_follows_its_setting():
    x, y = sine_data(100, dtype=torch.float64)
    model = sine_mlp(4).double()
    opt = LevenbergMarquardt(model, "mse")
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert opt.step(x, y).accepted
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(opt.state_dict()["state"][0]["s_prev"], after - before, rtol=0, atol=1e-15)
    for revert in (True, False):
        opt = LevenbergMarquardt(sine_mlp(4).double(), "mse", revert_d_on_reject=revert, lambda_init=1e-12,
                                 max_attempts=1, line_search=None, momentum=None, d_init=1e-9)
        info = opt.step(x, y * 1e3)  # a Gauss-Newton step with λ ≈ 0 on a far target: rejected
        d = opt.state_dict()["state"][0]["d"]
        assert not info.accepted
        assert bool((d == 1e-9).all()) == revert


def test_d_floor_is_honoured():
    x, y = sine_data(100, dtype=torch.float64)
    opt = LevenbergMarquardt(sine_mlp(4).double(), "mse", d_floor=5.0)
    opt.step(x, y)
    assert float(opt.state_dict()["state"][0]["d"].min()) >= 5.0


def _systems(J: torch.Tensor, rho: torch.Tensor, alpha: float, d: torch.Tensor):
    n = J.shape[1]
    out = [PrimalSystem(n, alpha, J.dtype, CPU), DualSystem(n, alpha, J.dtype, CPU),
           BlockDiagonalSystem(n, alpha, J.dtype, CPU, blocks=[torch.arange(n)])]
    for system in out:
        system.add(J, rho)
        system.finalize()
        system.set_damping(d)
    return out


@pytest.mark.parametrize("form", [0, 1, 2], ids=["primal", "dual", "block"])
def test_predicted_reduction_is_the_quadratic_model_of_the_residuals(form):
    """f(θ) − ½α‖r + Jδ‖² for the Gauss-Newton model f = ½α‖r‖², computed directly."""
    torch.manual_seed(0)
    J = torch.randn(6, 9, dtype=torch.float64)
    rho = torch.randn(6, dtype=torch.float64)
    alpha = 1 / 6
    system = _systems(J, rho, alpha, torch.ones(9, dtype=torch.float64))[form]
    step = torch.randn(9, dtype=torch.float64)
    expected = 0.5 * alpha * float(rho @ rho) - 0.5 * alpha * float((rho + J @ step).pow(2).sum())
    assert system.predicted_reduction(step) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", [0, 1, 2], ids=["primal", "dual", "block"])
def test_every_system_feeds_the_running_maximum(form, dtype):
    from marquardt.policy.damping import MaxDiagonal

    torch.manual_seed(1)
    J = torch.randn(5, 7, dtype=dtype)
    system = _systems(J, torch.zeros(5, dtype=dtype), 0.5, torch.ones(7, dtype=dtype))[form]
    d = torch.full((7,), 0.01, dtype=torch.float64)
    d[2] = 50.0
    MaxDiagonal().update(d, system)
    expected = torch.maximum(torch.full((7,), 0.01, dtype=torch.float64), 0.5 * (J.double() ** 2).sum(dim=0))
    expected[2] = 50.0
    torch.testing.assert_close(d, expected, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)


@pytest.mark.parametrize("skip_outside", [True, False])
def test_lambda_outside_its_bounds_is_left_alone_only_when_asked(skip_outside):
    """The authors' rule makes no update at all to a λ outside [lambda_min, lambda_max] (lambda_skip_outside)."""
    from tests.models import Exponential, exponential_data, residuals

    opt = LevenbergMarquardt(Exponential(), residuals, lambda_rule="delayed", lambda_init=1e-9, lambda_min=1e-6,
                             lambda_skip_outside=skip_outside)
    info = opt.step(*exponential_data(20))
    assert info.accepted
    assert info.lam == (1e-9 if skip_outside else 1e-6)


def test_a_geodesic_correction_over_its_bound_rejects_the_attempt_and_says_so():
    x, y = sine_data(40, dtype=torch.float64)
    opt = LevenbergMarquardt(sine_mlp(5).double(), "mse", geodesic=True, geodesic_alpha=1e-12, max_attempts=3,
                             lambda_init=1e-3)
    info = opt.step(x, y)
    assert not info.accepted and info.attempts == 3 and not info.geodesic_used
    assert info.notes == ["geodesic correction too large: attempt rejected"] * 3
    assert info.lam > 1e-3


def test_a_rejected_geodesic_correction_moves_nielsens_lambda_and_nu():
    """Each rejection multiplies λ by ν and doubles ν (Nielsen): 1e-3 → ×2 → ×4 over two rejections."""
    x, y = sine_data(40, dtype=torch.float64)
    opt = LevenbergMarquardt(sine_mlp(5).double(), "mse", geodesic=True, geodesic_alpha=1e-12, max_attempts=2,
                             lambda_init=1e-3, lambda_rule="nielsen")
    info = opt.step(x, y)
    assert not info.accepted and info.attempts == 2
    assert info.lam == pytest.approx(1e-3 * 2 * 4, rel=1e-12)
    assert opt.state_dict()["state"][0]["nu"] == 8.0
