"""Convergence on the Moré-Garbow-Hillstrom least-squares problems, float64, standard starting points."""

from __future__ import annotations

import pytest
import torch

import marquardt
from tests.optim.mgh import all_problems


@pytest.mark.parametrize("name,make", all_problems(), ids=[name for name, _ in all_problems()])
def test_reaches_known_minimum(name, make):
    problem = make()
    opt = marquardt.LevenbergMarquardt(problem, lambda residuals, _targets: residuals)
    result = marquardt.fit(opt, torch.zeros(1, dtype=torch.float64), max_iterations=500, ftol=1e-15, xtol=1e-15,
                           gtol=1e-20)
    with torch.no_grad():
        f = float((problem.residuals(problem.x) ** 2).sum())
    assert any(abs(f - f_star) <= problem.rtol * max(f_star, 1e-4) for f_star in problem.f_star), (name, f, result.reason)
    # the reported objective is ½ mean r² over the residuals
    m = problem.residuals(problem.x).numel()
    assert result.loss == pytest.approx(f / (2 * m), rel=1e-9, abs=1e-30)
    assert torch.isfinite(problem.x).all()


def test_float32_curve_fit():
    torch.manual_seed(0)
    t = torch.linspace(0, 4, 200)
    y = 2.5 * torch.exp(-1.3 * t) + 0.5 + 0.001 * torch.randn(200)

    class Decay(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(1.0))
            self.k = torch.nn.Parameter(torch.tensor(0.5))
            self.c = torch.nn.Parameter(torch.tensor(0.0))

        def forward(self, t):
            return self.a * torch.exp(-self.k * t) + self.c

    model = Decay()
    opt = marquardt.LevenbergMarquardt(model, lambda pred, target: pred - target)
    result = marquardt.fit(opt, t, y, max_iterations=100, ftol=1e-7)
    assert result.converged
    assert float(model.a) == pytest.approx(2.5, abs=0.01)
    assert float(model.k) == pytest.approx(1.3, abs=0.01)
    assert float(model.c) == pytest.approx(0.5, abs=0.01)
