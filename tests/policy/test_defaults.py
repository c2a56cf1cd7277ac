"""Each policy built without arguments is the policy the optimizer's defaults describe: the classes are public,
so a user who writes LMAM() or GuardedUphill() must get the documented rule, not a stale copy of it."""

from __future__ import annotations

from typing import Any

import pytest

from marquardt.optim.config import Config
from marquardt.policy.acceptance import GuardedUphill
from marquardt.policy.damping import Marquardt
from marquardt.policy.geodesic import GeodesicAcceleration
from marquardt.policy.lam import FactorRule, LambdaBounds
from marquardt.policy.line_search import GridSearch, grid
from marquardt.policy.momentum import LMAM
from marquardt.policy.registry import Registry

DEFAULTS = Config()


def test_lmam_defaults_are_the_configs():
    lmam, settings = LMAM(), DEFAULTS.momentum
    assert (lmam.delta_p_mode, lmam.delta_p, lmam.kappa, lmam.xi, lmam.paper_code_factor2) == (
        settings.delta_p_mode, settings.delta_p, settings.kappa, settings.xi, settings.paper_code_factor2)


def test_lambda_defaults_are_the_configs():
    rule, bounds, settings = FactorRule(), LambdaBounds(), DEFAULTS.lam
    assert (rule.up, rule.down) == (settings.up, settings.down)
    assert (bounds.minimum, bounds.maximum, bounds.skip_outside) == (
        settings.minimum, settings.maximum, settings.skip_outside)


def test_trial_defaults_are_the_configs():
    trial = DEFAULTS.trial
    uphill = GuardedUphill()
    assert (uphill.b, uphill.max_ratio) == (trial.uphill_b, trial.uphill_max_ratio)
    assert GeodesicAcceleration().alpha == trial.geodesic_alpha
    search = GridSearch()
    assert search.candidates == grid("log") and search.apply_always is trial.line_search_apply_always is False


def test_marquardt_damping_default_floor_is_the_configs():
    assert Marquardt().floor == DEFAULTS.damping.floor


class Shape:
    def __init__(self, settings: Any) -> None:
        self.settings = settings


class Square(Shape):
    pass


def test_a_registry_builds_by_name_passes_instances_and_names_its_option():
    shapes: Registry[Shape] = Registry("shape", Shape)
    assert shapes.register("square")(Square) is Square
    built = shapes.build("square", "the settings")
    assert type(built) is Square and built.settings == "the settings"
    mine = Square(None)
    assert shapes.build(mine, "ignored") is mine
    assert shapes.accepts("square") and shapes.accepts(mine) and not shapes.accepts("circle")
    assert shapes.names() == ["square"]
    with pytest.raises(ValueError, match=r"Invalid shape value: 'circle' \(expected one of \['square'\] or a Shape"):
        shapes.build("circle", None)
    with pytest.raises(ValueError, match="shape: 'square' is already registered"):
        shapes.register("square")(Square)
