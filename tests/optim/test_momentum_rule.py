"""The default momentum rule: on a repeated batch each attempt keeps the lower-loss of the LMAM step and the plain
LM step; on changing batches LMAM acts alone."""

from __future__ import annotations

import copy

import pytest
import torch

from marquardt import LevenbergMarquardt
from marquardt.policy.momentum import compares_with_lm_step
from tests.models import sine_data, sine_mlp


@pytest.mark.parametrize("rule,changed,expected", [
    ("repeated_batch", False, True), ("repeated_batch", True, False),
    ("always", False, True), ("always", True, True),
    ("never", False, False), ("never", True, False),
])
def test_when_the_rule_compares(rule, changed, expected):
    assert compares_with_lm_step(rule, changed) is expected


def test_an_unknown_rule_is_refused_by_name():
    with pytest.raises(ValueError, match="compare_lm_step: expected one of"):
        compares_with_lm_step("sometimes", False)
    with pytest.raises(ValueError, match="compare_lm_step"):
        LevenbergMarquardt(sine_mlp(4), "mse", compare_lm_step="sometimes")


def _one_step_from(opt: LevenbergMarquardt, model: torch.nn.Module, x, y, **settings):
    """One step of a copy of ``opt`` (its model copied too) with other settings: (its result, its parameters)."""
    twin = copy.deepcopy(model)
    state = copy.deepcopy(opt.state_dict())
    state["param_groups"][0].update(settings)
    other = LevenbergMarquardt(twin, "mse")
    other.load_state_dict(state)
    info = other.step(x, y)
    return info, torch.cat([p.detach().reshape(-1) for p in twin.parameters()])


def test_each_step_on_a_repeated_batch_is_the_better_of_lmam_and_lm():
    x, y = sine_data(120, dtype=torch.float64)
    model = sine_mlp(6).double()
    opt = LevenbergMarquardt(model, "mse")
    winners = set()
    for _ in range(25):
        by_lmam = _one_step_from(opt, model, x, y, compare_lm_step="never")
        by_lm = _one_step_from(opt, model, x, y, momentum=None)
        info = opt.step(x, y)
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        candidates = [(r, t) for r, t in (by_lmam, by_lm) if r.attempts == 1 and r.reason == "downhill"]
        if info.attempts == 1 and info.reason == "downhill" and len(candidates) == 2 and by_lmam[0].momentum_used:
            best, best_theta = min(candidates, key=lambda c: c[0].loss_after)
            assert info.loss_after == best.loss_after
            torch.testing.assert_close(theta, best_theta, rtol=0, atol=0)
            assert info.momentum_used == (best is by_lmam[0])
            winners.add(info.momentum_used)
    assert winners == {True, False}  # both candidates won steps: the comparison decided something


def test_on_changing_batches_the_default_is_lmam_alone():
    x, y = sine_data(200, dtype=torch.float64)
    batches = [(x[i::4], y[i::4]) for i in range(4)]
    thetas = []
    for rule in ("repeated_batch", "never"):
        model = sine_mlp(6).double()
        opt = LevenbergMarquardt(model, "mse", compare_lm_step=rule)
        used = 0
        for k in range(12):
            info = opt.step(*batches[k % 4])
            used += info.momentum_used
        assert used > 0
        thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(thetas[0], thetas[1], rtol=0, atol=0)


def test_the_paper_preset_keeps_lmam_alone():
    assert LevenbergMarquardt(sine_mlp(4), "mse", preset="paper").config.momentum.compare_lm_step == "never"
    assert LevenbergMarquardt(sine_mlp(4), "mse").config.momentum.compare_lm_step == "repeated_batch"
