"""Refusals of bad targets and bad residuals, word for word: the message is the user's only guide to the fix."""

from __future__ import annotations

import pytest
import torch

from marquardt.curvature.modes import make_curvature
from marquardt.curvature.objective import _check_residuals

CE = make_curvature("cross_entropy", "ggn")


def refusal(call, *args, kind=ValueError) -> str:
    with pytest.raises(kind) as refused:
        call(*args)
    return str(refused.value)


def test_cross_entropy_refusals():
    assert refusal(CE.check_targets, torch.zeros(2, 3, 1), torch.zeros(2, dtype=torch.long)) == (
        "model output: expected logits [N, C] for cross-entropy, got (2, 3, 1)")
    assert refusal(CE.check_targets, torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)) == (
        "model output: cross-entropy needs at least 2 logits per sample, got 1; a single logit with 0/1 targets is "
        "binary cross-entropy (a softmax over one class is constant, its loss is always 0): give the model 2 "
        "outputs, or use a residual callable")
    assert refusal(CE.check_targets, torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.long)) == (
        "targets: expected class indices of shape (4,), got (4, 1)")
    assert refusal(CE.check_targets, torch.zeros(4, 2), torch.full((4,), 2)) == (
        "targets: class indices must lie in [0, 1] for 2 logits, got range [2, 2]")
    assert refusal(CE.check_targets, torch.zeros(4, 2), torch.zeros(4, 3)) == (
        "targets: expected class indices (4,) or class probabilities (4, 2), got (4, 3) of dtype torch.float32")
    off = torch.tensor([[0.5, 0.5 + 3e-5], [1.0, 0.0]], dtype=torch.float64)
    assert refusal(CE.check_targets, torch.zeros(2, 2, dtype=torch.float64), off) == (
        "targets: class probabilities must be >= 0 and sum to 1 in every row (got rows summing to [1, 1.00003], "
        "minimum entry 0)")


def test_cross_entropy_accepts_two_logits_and_distributions_within_1e_5():
    CE.check_targets(torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]))
    exact = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.5, 0.5 + 0.5e-5]], dtype=torch.float64)
    CE.check_targets(torch.zeros(3, 2, dtype=torch.float64), exact)  # zeros allowed; a row 5e-6 off allowed


def test_residual_refusals():
    z = torch.zeros(4, 2)
    assert refusal(_check_residuals, [1.0], z, None, kind=TypeError) == (
        "residual callable: expected a tensor of residuals, got list")
    assert refusal(_check_residuals, torch.tensor(1.0), z, None) == (
        "residual callable: it returned a scalar; LM needs the residuals themselves (one per sample or output), "
        "not a loss: for a loss module such as nn.MSELoss use loss='mse', for nn.CrossEntropyLoss "
        "loss='cross_entropy'")
    assert refusal(_check_residuals, torch.zeros(8, dtype=torch.long), z, None, kind=TypeError) == (
        "residual callable: expected floating-point residuals, got dtype torch.int64")
    assert refusal(_check_residuals, torch.zeros(4, 4), z, torch.zeros(4)) == (
        "residual callable: it returned 16 residuals of shape (4, 4), but the model output has shape (4, 2) and "
        "the targets (4,); the residuals must have as many entries as the targets or the model output (is a "
        "[N, 1] output broadcast against [N] targets? reshape one of them)")
    assert "and the targets None;" in refusal(_check_residuals, torch.zeros(3), z, None)


def test_residuals_shaped_like_the_targets_or_the_output_pass():
    z = torch.zeros(4, 2)
    _check_residuals(torch.zeros(4), z, torch.zeros(4))  # like the targets
    _check_residuals(torch.zeros(8), z, torch.zeros(4))  # like the model output
    _check_residuals(torch.zeros(8), z, {"not": "a tensor"})


def test_the_distribution_tolerance_is_absolute():
    """1e-5 absolute, not relative too: a row summing to 1 + 1.5e-5 is refused (rtol would let up to 2e-5 by)."""
    rows = torch.tensor([[0.5, 0.5 + 1.5e-5], [0.5, 0.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="must be >= 0 and sum to 1"):
        CE.check_targets(torch.zeros(2, 2, dtype=torch.float64), rows)


# ------------------------------------------------------------------------- loss modules and residual functions
def _message(call) -> str:
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return str(info.value)


def test_loss_module_messages_word_for_word():
    from torch import nn

    from marquardt import LevenbergMarquardt

    def build(loss, **options):
        return lambda: LevenbergMarquardt(nn.Linear(2, 2), loss, **options)

    assert _message(build(nn.L1Loss())) == (
        "loss: a L1Loss object has no Gauss-Newton form here; the supported loss modules are nn.MSELoss, "
        "nn.CrossEntropyLoss, nn.BCEWithLogitsLoss, nn.HuberLoss, nn.SmoothL1Loss (or the strings 'mse', "
        "'cross_entropy', 'bce_with_logits'); for any other objective pass residuals=fn(model, *batch) or a "
        "residual callable")
    assert _message(build(nn.MSELoss(reduction="none"))) == (
        "loss: MSELoss(reduction='none') returns per-entry losses; LM needs one value (reduction='mean' or 'sum')")
    assert _message(build(nn.MSELoss(), curvature="ggn")) == "curvature: nn.MSELoss supports only 'gn', got 'ggn'"
    assert _message(build(nn.BCEWithLogitsLoss(), curvature="gn")) == (
        "curvature: nn.BCEWithLogitsLoss supports only 'ggn', got 'gn'")
    assert _message(build(nn.BCEWithLogitsLoss(weight=torch.ones(2)))) == (
        "loss: nn.BCEWithLogitsLoss(weight=...) is not supported; pass per-sample weights to step(..., weight=w) "
        "instead")
    assert _message(build(nn.HuberLoss(), curvature="ggn")) == "curvature: nn.HuberLoss supports only 'gn', got 'ggn'"
    assert _message(build("bce_with_logits", curvature="gn")) == (
        "curvature: loss='bce_with_logits' supports only 'ggn', got 'gn'")
    assert _message(build("huber", curvature="ef")) == "curvature: loss='huber' supports only 'gn', got 'ef'"
    assert _message(build("hinge")) == (
        "loss: expected 'mse', 'cross_entropy', 'bce_with_logits', 'huber', a loss module or a residual callable, "
        "got 'hinge'")


def test_residual_function_messages_word_for_word():
    from marquardt import LevenbergMarquardt
    from tests.models import Exponential, exponential_data

    t, y = exponential_data(6)

    def step(fn):
        return lambda: LevenbergMarquardt(Exponential(), residuals=fn).step(t, y)

    assert _message(step(lambda m, t, y: ())) == (
        "residuals: the function returned an empty tuple; it must return at least one tensor")
    assert _message(step(lambda m, t, y: "r")) == (
        "residuals: the function must return a tensor or a tuple of tensors, got str")
    assert _message(step(lambda m, t, y: (m(t) - y, 1.0))) == (
        "residuals: the function must return a tensor or a tuple of tensors, got float (group 1)")
    assert _message(step(lambda m, t, y: ["r"])) == (  # a list of one group is still a list of groups
        "residuals: the function must return a tensor or a tuple of tensors, got str (group 0)")
    assert _message(step(lambda m, t, y: (m(t) > y).long())) == (
        "residuals: expected real floating-point residuals, got dtype torch.int64")
    assert _message(step(lambda m, t, y: (m(t) - y)[:0])) == (
        "residuals: the function returned no residuals (0 entries) for this batch")
    calls = []

    def unstable(m, t, y):
        calls.append(1)
        return (m(t) - y)[: 6 if len(calls) == 1 else 5]

    assert _message(step(unstable)) == (
        "residuals: the function returned shapes [(5,)] for a batch on which it returned [(6,)] before; the "
        "residuals of one batch must keep their shapes (every step evaluates the function several times)")


def test_a_one_group_list_is_not_refused():
    from marquardt import LevenbergMarquardt
    from tests.models import Exponential, exponential_data

    assert LevenbergMarquardt(Exponential(), residuals=lambda m, t, y: [m(t) - y]).step(*exponential_data(6)).accepted
