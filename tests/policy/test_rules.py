"""λ rules, uphill acceptance, line-search grids, damping and geodesic pieces against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from marquardt.policy import acceptance, geodesic, line_search
from marquardt.policy.lam import LambdaRule


def test_delayed_gratification():
    rule = LambdaRule("delayed", 2.0, 3.0)
    assert rule.accepted(1.0, 2.0, None) == (pytest.approx(1 / 3), 2.0)
    assert rule.rejected(1.0, 2.0) == (2.0, 2.0)
    assert rule.rejected(1e10, 2.0)[0] == 1e10  # clamped at lam_max
    assert rule.accepted(1e-10, 2.0, None)[0] == 1e-10


def test_fixed_factors_with_paper_skip():
    rule = LambdaRule("fixed", 10.0, 10.0, 1e-5, 1e5, skip_outside=True)
    assert rule.accepted(1.0, 2.0, None)[0] == pytest.approx(0.1)
    assert rule.accepted(1e-6, 2.0, None)[0] == 1e-6  # below the bound: no update, as the authors' code
    assert rule.rejected(2e5, 2.0)[0] == 2e5


@pytest.mark.parametrize("rho", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_nielsen(rho):
    rule = LambdaRule("nielsen")
    lam, nu = rule.accepted(1.0, 8.0, rho)
    assert lam == pytest.approx(max(1 / 3, 1 - (2 * rho - 1) ** 3)) and nu == 2.0
    lam, nu = rule.rejected(1.0, 4.0)
    assert (lam, nu) == (4.0, 8.0)


@pytest.mark.parametrize("rho", [1e200, -1e200, 1e3, -1e3])
def test_nielsen_extreme_gain_ratios_stay_finite(rho):
    """A predicted reduction near zero gives an extreme ρ; its cube overflowed a Python float and raised."""
    rule = LambdaRule("nielsen", lam_min=1e-12, lam_max=1e12)
    lam, nu = rule.accepted(1.0, 8.0, rho)
    if rho > 0:
        assert lam == pytest.approx(1 / 3)  # every ρ ≥ 1 gives the smallest factor
    else:
        assert lam == pytest.approx(1 + 2001.0**3)  # the same factor as ρ = −1000, below lam_max here
    assert nu == 2.0


def test_lambda_rule_validation():
    with pytest.raises(ValueError, match="lambda_rule"):
        LambdaRule("bogus")
    with pytest.raises(ValueError, match="up and down must be > 1"):
        LambdaRule("fixed", 0.5, 2.0)


def test_uphill_rule():
    # β = 0.9: (0.1)² C₁ ≤ C₀ allows up to 100x, but the guard caps at 1.5x
    assert acceptance.accept_uphill(1.0, 1.4, 0.9, 2, 1.5)
    assert not acceptance.accept_uphill(1.0, 1.6, 0.9, 2, 1.5)
    assert acceptance.accept_uphill(1.0, 50.0, 0.9, 2, None)
    assert not acceptance.accept_uphill(1.0, 150.0, 0.9, 2, None)
    # β ≤ 0: no uphill allowance at all
    assert not acceptance.accept_uphill(1.0, 1.0001, 0.0, 2, None)
    assert not acceptance.accept_uphill(1.0, 1.0001, -0.7, 2, None)
    # b = 1 accepts less freely than b = 2
    assert acceptance.accept_uphill(1.0, 3.0, 0.5, 2, None) and not acceptance.accept_uphill(1.0, 3.0, 0.5, 1, None)
    assert not acceptance.accept_uphill(1.0, math.inf, 0.99, 2, None)


def test_cosine():
    u = torch.tensor([1.0, 0.0])
    assert acceptance.cosine(u, torch.tensor([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert acceptance.cosine(u, torch.zeros(2)) == 0.0
    assert acceptance.cosine(u, torch.tensor([1.0, 1.0]), metric=torch.tensor([1.0, 0.0])) == pytest.approx(1.0)


def test_grids():
    log = line_search.grid("log")
    assert len(log) == 25 and log[0] == pytest.approx(1e-6) and log[-1] == pytest.approx(9.0)
    code = line_search.grid("paper_code")
    assert len(code) == 40 and code[0] == pytest.approx(1e-6) and code[-1] == pytest.approx(1.96**3)
    text = line_search.grid("paper_text")
    assert len(text) == 72 and text[1] == pytest.approx(0.125001)


@pytest.mark.parametrize("kind", ["log", "paper_code", "paper_text"])
def test_line_search_picks_the_best_grid_point(kind):
    f = lambda s: (math.log(s) - math.log(0.3)) ** 2  # noqa: E731
    s_star, value, evals = line_search.search(kind, f, c0=100.0)
    grid = line_search.grid(kind)
    assert evals == len(grid)
    assert value == min(f(s) for s in grid) and f(s_star) == value


def test_backtracking_finds_decrease_then_expands():
    f = lambda s: (s - 0.05) ** 2  # noqa: E731  f(0) = 0.0025 is C0
    s_star, value, evals = line_search.search("backtrack", f, c0=0.0025)
    assert value < 0.0025 and 0.01 < s_star < 0.2 and evals <= 30


def test_line_search_treats_nan_as_worst():
    s_star, value, _ = line_search.search("log", lambda s: math.nan if s > 1e-3 else 1.0 - s, c0=1.0)
    assert math.isfinite(value) and s_star <= 1e-3


def test_geodesic_second_derivative_matches_central_differences():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ELU(), torch.nn.Linear(8, 3)).double()
    from marquardt.curvature.params import ParameterLayout

    layout = ParameterLayout.of(model)
    x = torch.randn(5, 2, dtype=torch.float64)
    theta = layout.get_flat()
    v = torch.randn_like(theta)
    f = lambda t: torch.func.functional_call(model, layout.as_dict(t), (x,))  # noqa: E731
    z_vv = geodesic.second_directional_derivative(f, theta, v)
    h = 1e-4
    fd = (f(theta + h * v) - 2 * f(theta) + f(theta - h * v)) / h**2
    torch.testing.assert_close(z_vv, fd, rtol=1e-5, atol=1e-5)
    assert geodesic.acceptable(torch.ones(4), 0.1 * torch.ones(4), 0.75)
    assert not geodesic.acceptable(torch.ones(4), 0.5 * torch.ones(4), 0.75)
