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
