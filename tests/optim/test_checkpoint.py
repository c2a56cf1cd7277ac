"""Checkpoints: what load_state_dict refuses before anything changes, older formats, bit-identical resumes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from marquardt import LevenbergMarquardt
from tests.models import sine_data, sine_mlp


def _trained(width: int = 8, steps: int = 3, **options):
    x, y = sine_data(200, dtype=torch.float64)
    model = sine_mlp(width).double()
    opt = LevenbergMarquardt(model, "mse", **options)
    for _ in range(steps):
        opt.step(x, y)
    return model, opt, (x, y)


def _unchanged(opt: LevenbergMarquardt):
    """A snapshot of everything a load could change."""
    return copy.deepcopy(opt.state_dict()), opt.config, [p.detach().clone() for p in opt.layout.params]


def _assert_same(opt: LevenbergMarquardt, snapshot) -> None:
    state, config, params = snapshot
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"] and opt.config == config
    for key, value in state["state"][0].items():
        other = now["state"][0][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert all(torch.equal(p, q) for p, q in zip(opt.layout.params, params))


def test_a_checkpoint_of_another_width_is_refused_before_anything_changes():
    _, small, _ = _trained(8)
    _, wide, _ = _trained(9)
    snapshot = _unchanged(wide)
    with pytest.raises(ValueError, match=r"damping vector d has shape \(97,\), this model has 118"):
        wide.load_state_dict(small.state_dict())
    _assert_same(wide, snapshot)


@pytest.mark.parametrize("corrupt, message", [
    (lambda s: s["state"][0]["d"].__setitem__(0, float("nan")), "NaN, Inf or negative"),
    (lambda s: s["state"][0]["d"].__setitem__(3, -1.0), "NaN, Inf or negative"),
    (lambda s: s["state"][0].__setitem__("lam", float("inf")), "its lam is inf"),
    (lambda s: s["state"][0].__setitem__("nu", 0.0), "its nu is 0.0"),
    (lambda s: s["state"][0].__setitem__("s_prev", torch.zeros(5, dtype=torch.float64)), "previous step"),
    (lambda s: s["state"][0].__setitem__("step", -2), "step count"),
    (lambda s: s["param_groups"][0].__setitem__("xi", 2.0), "Invalid xi value"),
    (lambda s: s["param_groups"][0].__setitem__("flux", 1), "unknown option 'flux'"),
    (lambda s: s["param_groups"][0].__setitem__("loss", "cross_entropy"), "its loss is 'cross_entropy'"),
    (lambda s: s["param_groups"].append(dict(s["param_groups"][0])), "2 param groups"),
    (lambda s: s["param_groups"][0].__setitem__("params", [0, 1]), "2 trainable parameters"),
])
def test_bad_checkpoints_are_refused_by_name(corrupt, message):
    _, opt, _ = _trained()
    saved = copy.deepcopy(opt.state_dict())
    corrupt(saved)
    snapshot = _unchanged(opt)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(saved)
    _assert_same(opt, snapshot)


def test_not_a_state_dict():
    _, opt, _ = _trained()
    with pytest.raises(ValueError, match="state_dict"):
        opt.load_state_dict({"params": []})


def _old_names(state_dict):
    """The param group as versions before the config redesign wrote it (lam_* names, uphill as a bool)."""
    group = state_dict["param_groups"][0]
    for new, old in (("lambda_init", "lam_init"), ("lambda_min", "lam_min"), ("lambda_max", "lam_max"),
                     ("lambda_min_minibatch", "lam_min_minibatch"), ("lambda_skip_outside", "lam_skip_outside")):
        group[old] = group.pop(new)
    group["uphill"] = group.pop("acceptance") == "uphill"
    return state_dict


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_an_older_checkpoint_resumes_bit_identically(preset):
    x, y = sine_data(200, dtype=torch.float64)
    straight = sine_mlp(8).double()
    opt = LevenbergMarquardt(straight, "mse", preset=preset)
    for _ in range(8):
        opt.step(x, y)
    first = sine_mlp(8).double()
    opt_first = LevenbergMarquardt(first, "mse", preset=preset)
    for _ in range(4):
        opt_first.step(x, y)
    saved = _old_names(copy.deepcopy(opt_first.state_dict()))
    resumed = sine_mlp(8, seed=5).double()
    resumed.load_state_dict(first.state_dict())
    opt_resumed = LevenbergMarquardt(resumed, "mse")  # the checkpoint's settings (and preset) take over
    opt_resumed.load_state_dict(saved)
    assert opt_resumed.config == opt.config
    for _ in range(4):
        opt_resumed.step(x, y)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))


def test_setstate_translates_older_names():
    """torch.optim pickles only defaults, state and param groups; an older pickle has the older option names."""
    _, opt, _ = _trained(lambda_init=0.25, acceptance="uphill")
    old = {"defaults": dict(opt.defaults), "state": {}, "param_groups": [dict(opt.param_groups[0])]}
    _old_names(old)
    assert "lam_init" in old["param_groups"][0] and "uphill" in old["param_groups"][0]
    revived = LevenbergMarquardt.__new__(LevenbergMarquardt)
    revived.__setstate__(old)
    group = revived.param_groups[0]
    assert group["lambda_init"] == 0.25 and group["acceptance"] == "uphill" and "lam_init" not in group


def test_a_checkpoint_with_other_curvature_settings_takes_over_or_is_refused():
    x = torch.randn(40, 2, dtype=torch.float64)
    labels = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = torch.nn.Linear(2, 3).double()
    ef = LevenbergMarquardt(model, "cross_entropy", curvature="ef")
    ef.step(x, labels)
    ggn = LevenbergMarquardt(torch.nn.Linear(2, 3).double(), "cross_entropy")
    ggn.load_state_dict(ef.state_dict())
    assert ggn.curvature.name == "ef" and ggn.config.objective.curvature == "ef"
    geodesic = LevenbergMarquardt(torch.nn.Linear(2, 3).double(), "cross_entropy", geodesic=True)
    geodesic.step(x, labels)
    saved = copy.deepcopy(ggn.state_dict())
    saved["param_groups"][0]["geodesic"] = True  # ef with geodesic acceleration: not a valid combination
    snapshot = _unchanged(geodesic)
    with pytest.raises(ValueError, match="geodesic"):
        geodesic.load_state_dict(saved)
    _assert_same(geodesic, snapshot)


@pytest.mark.parametrize("keys", [{"state": {}}, {"param_groups": []}, {}])
def test_a_dict_without_both_keys_is_refused_word_for_word(keys):
    _, opt, _ = _trained()
    with pytest.raises(ValueError) as refused:
        opt.load_state_dict(keys)
    assert str(refused.value) == ("state_dict: expected the dict of LevenbergMarquardt.state_dict() (keys 'state' "
                                  "and 'param_groups')")


def test_a_damping_vector_of_the_wrong_type_is_named():
    _, opt, _ = _trained()
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["d"] = [1.0, 2.0]
    with pytest.raises(ValueError, match=r"damping vector d has shape list"):
        opt.load_state_dict(saved)
    saved["state"][0]["d"] = torch.full((97, 1), float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^state_dict: its damping vector d has shape \(97, 1\)"):
        opt.load_state_dict(saved)


def test_the_edges_of_the_state_are_accepted():
    """d = 0 in places (a parameter no sample moved yet) and a step count of 0 are valid states."""
    model, opt, (x, y) = _trained()
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["d"][:5] = 0.0
    saved["state"][0]["step"] = 0
    opt.load_state_dict(saved)
    assert opt.state_dict()["state"][0]["step"] == 0 and float(opt.state_dict()["state"][0]["d"][0]) == 0.0
    saved["state"][0]["d"][0] = float("nan")
    with pytest.raises(ValueError) as refused:
        opt.load_state_dict(saved)
    assert str(refused.value) == ("state_dict: its damping vector d holds NaN, Inf or negative entries; was it "
                                  "saved by an optimizer of another model?")


def test_a_float32_run_resumes_bit_identically_with_its_float64_damping():
    x, y = sine_data(100)
    straight = sine_mlp(6)
    opt = LevenbergMarquardt(straight, "mse")
    for _ in range(6):
        opt.step(x, y)
    first = sine_mlp(6)
    opt_first = LevenbergMarquardt(first, "mse")
    for _ in range(3):
        opt_first.step(x, y)
    saved = copy.deepcopy(opt_first.state_dict())
    assert saved["state"][0]["d"].dtype == torch.float64
    resumed = sine_mlp(6, seed=3)
    resumed.load_state_dict(first.state_dict())
    opt_resumed = LevenbergMarquardt(resumed, "mse")
    opt_resumed.load_state_dict(saved)
    assert opt_resumed.state_dict()["state"][0]["d"].dtype == torch.float64
    for _ in range(3):
        opt_resumed.step(x, y)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))


def test_a_checkpoint_without_a_loss_name_keeps_the_optimizers():
    from tests.models import Exponential, exponential_data, residuals

    opt = LevenbergMarquardt(Exponential(), residuals)
    opt.step(*exponential_data(20))
    saved = copy.deepcopy(opt.state_dict())
    del saved["param_groups"][0]["loss"]  # as written before checkpoints named their loss
    other = LevenbergMarquardt(Exponential(), residuals)
    other.load_state_dict(saved)
    assert other.settings["loss"] == "residual" and other.state_dict()["param_groups"][0]["loss"] == "residual"
    assert other.step(*exponential_data(20)).accepted


def test_a_checkpoint_taken_before_any_step_loads():
    fresh = LevenbergMarquardt(sine_mlp(4).double(), "mse").state_dict()
    assert not fresh["state"]
    opt = LevenbergMarquardt(sine_mlp(4).double(), "mse")
    opt.load_state_dict(fresh)
    assert opt.step(*sine_data(30, dtype=torch.float64)).accepted


def test_an_older_pickle_without_a_loss_name_is_an_mse_optimizer():
    _, opt, _ = _trained()
    old = {"defaults": dict(opt.defaults), "state": {}, "param_groups": [dict(opt.param_groups[0])]}
    del old["param_groups"][0]["loss"]
    revived = LevenbergMarquardt.__new__(LevenbergMarquardt)
    revived.__setstate__(old)
    assert revived.param_groups[0]["loss"] == "mse"


def test_unpickling_keeps_the_saved_loss_name():
    opt = LevenbergMarquardt(nn.Sequential(nn.Linear(2, 3)).double(), "cross_entropy")
    state = {"defaults": dict(opt.defaults), "state": {}, "param_groups": [dict(opt.param_groups[0])]}
    revived = LevenbergMarquardt.__new__(LevenbergMarquardt)
    revived.__setstate__(state)
    assert revived.param_groups[0]["loss"] == "cross_entropy"
