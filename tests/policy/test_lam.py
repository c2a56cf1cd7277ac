"""λ rules against their definitions (Marquardt's factors, delayed gratification, Nielsen)."""

from __future__ import annotations

import pytest

from marquardt.policy.lam import LAMBDA_RULES, FactorRule, LambdaBounds, NielsenRule
from marquardt.policy.registry import Registry

DEFAULT = LambdaBounds()


def test_delayed_gratification():
    rule = FactorRule(2.0, 3.0)
    assert rule.accepted(1.0, 2.0, None, DEFAULT) == (pytest.approx(1 / 3), 2.0)
    assert rule.rejected(1.0, 2.0, DEFAULT) == (2.0, 2.0)
    assert rule.rejected(1e10, 2.0, DEFAULT)[0] == 1e10  # clamped at the maximum
    assert rule.accepted(1e-10, 2.0, None, DEFAULT)[0] == 1e-10


def test_fixed_factors_with_paper_skip():
    rule = FactorRule(10.0, 10.0)
    bounds = LambdaBounds(1e-5, 1e5, skip_outside=True)
    assert rule.accepted(1.0, 2.0, None, bounds)[0] == pytest.approx(0.1)
    assert rule.accepted(1e-6, 2.0, None, bounds)[0] == 1e-6  # below the bound: no update, as the authors' code
    assert rule.rejected(2e5, 2.0, bounds)[0] == 2e5
    assert rule.rejected(2e5, 2.0, LambdaBounds(1e-5, 1e5))[0] == 1e5  # without the skip: clamped


@pytest.mark.parametrize("rho", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_nielsen(rho):
    rule = NielsenRule()
    lam, nu = rule.accepted(1.0, 8.0, rho, DEFAULT)
    assert lam == pytest.approx(max(1 / 3, 1 - (2 * rho - 1) ** 3)) and nu == 2.0
    assert rule.rejected(1.0, 4.0, DEFAULT) == (4.0, 8.0)
    assert rule.accepted(1.0, 8.0, None, DEFAULT)[0] == pytest.approx(1 / 3)  # no prediction: ρ taken as 1


@pytest.mark.parametrize("rho", [1e200, -1e200, 1e3, -1e3])
def test_nielsen_extreme_gain_ratios_stay_finite(rho):
    """A predicted reduction near zero gives an extreme ρ; its cube overflowed a Python float and raised."""
    lam, nu = NielsenRule().accepted(1.0, 8.0, rho, LambdaBounds(1e-12, 1e12))
    if rho > 0:
        assert lam == pytest.approx(1 / 3)  # every ρ ≥ 1 gives the smallest factor
    else:
        assert lam == pytest.approx(1 + 2001.0**3)  # the same factor as ρ = −1000, below the maximum here
    assert nu == 2.0


def test_factor_validation():
    with pytest.raises(ValueError, match="up and down must be > 1"):
        FactorRule(0.5, 2.0)


class _Settings:
    up, down = 4.0, 5.0


def test_registry_builds_names_and_keeps_instances():
    assert {"delayed", "fixed", "nielsen"} <= set(LAMBDA_RULES.names())
    built = LAMBDA_RULES.build("fixed", _Settings())
    assert isinstance(built, FactorRule) and (built.up, built.down) == (4.0, 5.0)
    assert isinstance(LAMBDA_RULES.build("nielsen", _Settings()), NielsenRule)
    mine = NielsenRule()
    assert LAMBDA_RULES.build(mine, _Settings()) is mine
    with pytest.raises(ValueError, match="lambda_rule.*'bogus'.*delayed"):
        LAMBDA_RULES.build("bogus", _Settings())
    registry: Registry = Registry("thing", FactorRule)
    registry.register("a")(lambda s: FactorRule())
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(lambda s: FactorRule())


def test_nielsen_keeps_its_bounds():
    bounds = LambdaBounds(1e-8, 10.0)
    assert NielsenRule().accepted(1e-9, 2.0, 0.0, bounds)[0] == 1e-8  # ρ = 0 doubles λ: still below the floor
    assert NielsenRule().accepted(9.0, 2.0, 0.0, bounds)[0] == 10.0  # doubled past the ceiling
    assert NielsenRule().rejected(8.0, 4.0, bounds) == (10.0, 8.0)


@pytest.mark.parametrize("up, down", [(1.0, 3.0), (2.0, 1.0)])
def test_a_factor_of_one_is_refused(up, down):
    with pytest.raises(ValueError, match="up and down must be > 1"):
        FactorRule(up, down)
