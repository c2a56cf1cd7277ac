"""The config: every option validated once, at construction, naming the option; presets as values; old names."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from marquardt import LevenbergMarquardt
from marquardt.optim.config import OPTIONS, PAPER, PRESETS, VANILLA, Config, resolve

#: values that every option must refuse (beside its own table below): wrong types and non-finite numbers.
JUNK = ["x", math.nan, math.inf, -math.inf, object(), [1], {"a": 1}, b"bytes", 1j]

#: per option, more values it must refuse (out of range, wrong kind of number, None where not allowed).
BAD: dict[str, list] = {
    "curvature": ["gauss", 1, True],
    "curvature_samples": [0, -1, 1.5, 0.0, True, {1: 0.5}, {0: 2.0}, {0: 0.5, -1: None}],
    "loss_scale": ["avg", None, 1],
    "robust": ["tukey", "Huber", 1, True],
    "robust_scale": [0.0, -1.0, None, True, float("inf")],
    "engine": ["slow", None, True],
    "distributed": ["yes", None, 1],
    "damping": ["none", None, 1, True],
    "d_init": [-1e-3, None, True],
    "d_floor": [-1.0, None, True],
    "revert_d_on_reject": [1, 0, None, "True"],
    "lambda_rule": ["bogus", None, 2],
    "lambda_init": [0.0, -1.0, None, True],
    "lambda_up": [1.0, 0.5, -2.0, None, True],
    "lambda_down": [1.0, 0.0, None],
    "lambda_min": [0.0, -1e-10, None],
    "lambda_max": [0.0, -1.0, None],
    "lambda_min_minibatch": [0.0, -1.0, True],
    "lambda_skip_outside": [1, None, "no"],
    "trust_region_factor": [0, -1.0, float("inf"), "100", None],
    "momentum": ["adam", 1, True],
    "delta_p_mode": ["rel", None],
    "delta_p": [0.0, -0.6, None],
    "kappa": [0.0, -1.0, None],
    "xi": [0.0, 1.0, 1.5, -0.1, None, True],
    "paper_code_factor2": [1, None],
    "compare_lm_step": [True, "sometimes", None],
    "max_attempts": [0, -1, 2.0, 1.5, None, True],
    "step_multiplier": [0.0, -1.0, None],
    "acceptance": ["sideways", None, 1, True],
    "uphill_b": [0.0, -2.0, None],
    "uphill_max_ratio": [0.5, 0.999, -1.0, True],
    "line_search": ["cubic", 1, True],
    "line_search_apply_always": [1, None],
    "geodesic": ["x", 1, None, 0.75],
    "geodesic_alpha": [0.0, -0.75, None],
    "solver": ["cholesky", None, 1, True],
    "dual_method": ["lu", None],
    "dual_tol": [0.0, 1.0, 1e-20 * -1, 1, True],
    "primal_accumulation": ["kron", None],
    "blocks": [0, -3, 2.5, "row", None, True],
    "memory_budget": [0, -1, 1e9, None, True],
    "accumulate_dtype": [torch.float16, torch.int64, "float32"],
    "solve_dtype": [torch.bfloat16, "float64", 64],
    "solve_float64_max": [-1, 1.5, None, True],
}


def test_every_option_has_a_table_of_bad_values():
    assert sorted(BAD) == sorted(OPTIONS)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_option_refuses_wrong_values_at_construction_and_names_itself(name):
    model = nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    for value in JUNK + BAD[name]:
        with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
            LevenbergMarquardt(model, "mse", **{name: value})
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # nothing touched


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(OPTIONS)),
       value=st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                       st.text(max_size=12), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.integers(-2, 20), st.one_of(st.none(), st.floats(0, 2)), max_size=3)))
def test_any_value_is_either_kept_or_refused_by_name(name, value):
    """A property over arbitrary values: the optimizer either keeps the value as given (and its config holds it)
    or refuses it with a ValueError/TypeError that names the option; no other exception, no silent change."""
    try:
        opt = LevenbergMarquardt(nn.Linear(2, 1), "mse", **{name: value})
    except (ValueError, TypeError) as exc:
        assert name in str(exc)
        return
    assert opt.settings[name] == value or (value != value and opt.settings[name] != opt.settings[name])
    assert OPTIONS[name].check(value)


def test_the_issue_examples_are_refused():
    with pytest.raises(ValueError, match="Invalid geodesic value: 'x'"):
        LevenbergMarquardt(nn.Linear(2, 1), "mse", geodesic="x")
    with pytest.raises(ValueError, match="Invalid d_init value: inf"):
        LevenbergMarquardt(nn.Linear(2, 1), "mse", d_init=math.inf)
    with pytest.raises(ValueError, match="Invalid solve_float64_max value: 'x'"):
        LevenbergMarquardt(nn.Linear(2, 1), "mse", solve_float64_max="x")


def test_rules_between_options():
    with pytest.raises(ValueError, match="lambda_min=1.0 must be < lambda_max=0.5"):
        LevenbergMarquardt(nn.Linear(2, 1), "mse", lambda_min=1.0, lambda_max=0.5)
    with pytest.raises(ValueError, match="lambda_min_minibatch"):
        LevenbergMarquardt(nn.Linear(2, 1), "mse", lambda_min_minibatch=1e11)
    with pytest.raises(ValueError, match="curvature_samples"):
        LevenbergMarquardt(nn.Linear(2, 1), lambda z, y: z - y, curvature_samples=4)
    with pytest.raises(ValueError, match="geodesic"):
        LevenbergMarquardt(nn.Linear(2, 3), "cross_entropy", curvature="ef", geodesic=True)
    with pytest.raises(ValueError, match="curvature"):
        LevenbergMarquardt(nn.Linear(2, 3), "cross_entropy", curvature="gn")


def test_unknown_and_repeated_names():
    with pytest.raises(TypeError, match="unknown option 'lamda'; did you mean 'lambda_"):
        LevenbergMarquardt(nn.Linear(2, 1), "mse", lamda=1.0)
    with pytest.raises(TypeError, match="given twice"):
        LevenbergMarquardt(nn.Linear(2, 1), "mse", lam_init=1.0, lambda_init=2.0)
    with pytest.raises(ValueError, match="preset"):
        LevenbergMarquardt(nn.Linear(2, 1), "mse", preset="fastest")


def test_older_names_are_read():
    opt = LevenbergMarquardt(nn.Linear(2, 1), "mse", lam_init=0.5, lam_min=1e-6, lam_max=1e6, lam_skip_outside=True,
                             lam_min_minibatch=None, uphill=True)
    lam = opt.config.lam
    assert (lam.initial, lam.minimum, lam.maximum, lam.skip_outside, lam.minibatch_minimum) == (0.5, 1e-6, 1e6, True,
                                                                                                 None)
    assert opt.config.trial.acceptance == "uphill"
    assert LevenbergMarquardt(nn.Linear(2, 1), "mse", uphill=False).config.trial.acceptance == "downhill"
    with pytest.raises(ValueError, match="uphill"):
        LevenbergMarquardt(nn.Linear(2, 1), "mse", uphill="yes")


def test_presets_are_values():
    assert PRESETS["default"] == Config()
    assert PRESETS["paper"] is PAPER and PAPER.lam.rule == "fixed" and PAPER.trial.acceptance == "uphill"
    assert VANILLA.damping.kind == "levenberg" and VANILLA.momentum.kind is None
    mine = PAPER.with_options(max_attempts=3)
    opt = LevenbergMarquardt(nn.Linear(2, 1), "mse", preset=mine, xi=0.5)
    assert opt.config.trial.max_attempts == 3 and opt.config.momentum.xi == 0.5 and opt.config.lam.rule == "fixed"
    assert PAPER.trial.max_attempts == 1  # presets are never modified
    assert resolve("vanilla", {}) is VANILLA.with_options() or resolve("vanilla", {}) == VANILLA


def test_flat_round_trip():
    config = Config().with_options(momentum="olmam", memory_budget=2**20, curvature_samples={0: 0.5, 3: None})
    assert Config().with_options(**config.flat()) == config
    assert set(config.flat()) == set(OPTIONS)


def test_factored_settings_are_refused_at_construction_for_models_that_cannot_factor():
    cnn = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 8, 1))
    with pytest.raises(ValueError, match="dual_method='pcg' needs every trainable layer to be a Linear"):
        LevenbergMarquardt(cnn, "mse", dual_method="pcg")
    with pytest.raises(ValueError, match="primal_accumulation='factored'"):
        LevenbergMarquardt(nn.Linear(2, 1), lambda z, y: z - y, primal_accumulation="factored")  # the full engine
    LevenbergMarquardt(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)), "mse", dual_method="pcg")
