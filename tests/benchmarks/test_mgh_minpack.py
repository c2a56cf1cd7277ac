"""benchmarks/mgh_minpack.py's measures, on single starts (the whole comparison is a benchmark, not a test)."""

from __future__ import annotations

import numpy as np
import torch

import marquardt
from benchmarks.mgh_minpack import PROBLEMS, gradient_inf, gradient_rounding
from marquardt.optim.polish import run_polish


def test_the_gradient_rounding_level_separates_a_polished_minimiser_from_a_start():
    """Osborne 2: at x₀ ‖Jᵀr‖∞ is orders of magnitude above its rounding level; once the fit's polish keeps no
    further step it is within it (the polish stops on the same measure), and the level is at least the
    product's own rounding ε maxⱼ Σᵢ |Jᵢⱼ||rᵢ|."""
    problem = dict(PROBLEMS)["Osborne2"]()
    x0 = problem.x.detach().numpy().copy()
    assert gradient_inf(problem, x0) > 1e6 * gradient_rounding("Osborne2", x0)
    opt = marquardt.LevenbergMarquardt(problem, lambda r, _t: r)
    marquardt.fit(opt, torch.zeros(1, dtype=torch.float64), max_iterations=3000, ftol=1e-15, xtol=1e-15, gtol=1e-15)
    for _ in range(3):  # (each polish measures the rounding where it starts)
        if run_polish(opt, (torch.zeros(1, dtype=torch.float64),), None, max_steps=10).steps == 0:
            break
    x = problem.x.detach().numpy().copy()
    level = gradient_rounding("Osborne2", x)
    assert gradient_inf(problem, x) <= level
    theta = torch.tensor(x)
    J = torch.func.jacrev(problem.residuals)(theta)
    r = problem.residuals(theta).detach()
    product_rounding = float(np.finfo(np.float64).eps * (J.abs().T @ r.abs()).max())
    assert product_rounding <= level < 1e3 * product_rounding
