"""Whether a model keeps the samples of a batch apart, as the per-sample Jacobian engines assume.

The fast and torch.func engines differentiate the model one sample at a time. That is the Jacobian of the batched
forward only when sample i's output depends on input i alone and the output has one leading entry per sample. A
model that ignores its input and returns a fixed-length vector (a curve fit written as a module of its
parameters), or one that mixes samples through batch statistics, breaks that assumption: the per-sample rows and
losses then belong to a different function from the one the trial steps evaluate, and LM compares the two.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import structure

#: samples of the batch the check runs the model on (coupling through batch statistics shows with any two)
PROBE_SAMPLES = 8


def _eval_mode(model: nn.Module) -> dict[nn.Module, bool]:
    """Puts every submodule in eval mode (dropout off: the comparison must not see noise); the old flags."""
    flags = {m: m.training for m in model.modules()}
    for m in flags:
        m.training = False
    return flags


def mixes_samples(model: nn.Module, inputs: Any, one_sample_output: torch.Tensor) -> str | None:
    """Why the model's outputs are not one independent entry per sample, or None when they are.

    Checked on the first few samples: the batched forward's first and last rows must equal the model's output on
    those samples alone (to √ε of the dtype, relative to the outputs' size), and a one-sample input must give an
    output with one leading entry.
    """
    if one_sample_output.dim() == 0 or one_sample_output.shape[0] != 1:
        return (f"its output on one sample has shape {tuple(one_sample_output.shape)}, not one leading entry per "
                "sample")
    k = min(PROBE_SAMPLES, structure.samples(inputs))
    if k < 2:
        return None
    flags = _eval_mode(model)
    try:
        with torch.no_grad():
            batched = structure.call(model, structure.take(inputs, slice(0, k)))
            alone = [structure.call(model, structure.take(inputs, slice(i, i + 1))) for i in (0, k - 1)]
    finally:
        for m, flag in flags.items():
            m.training = flag
    if not isinstance(batched, torch.Tensor) or batched.dim() == 0 or batched.shape[0] != k:
        shape = tuple(batched.shape) if isinstance(batched, torch.Tensor) else type(batched).__name__
        return f"its output on {k} samples has shape {shape}, not {k} leading entries"
    tolerance = torch.finfo(batched.dtype).eps ** 0.5 * (1.0 + float(batched.abs().max()))
    for i, z in zip((0, k - 1), alone):
        if z.shape != batched[i:i + 1].shape or float((z - batched[i:i + 1]).abs().max()) > tolerance:
            return f"its output for sample {i} changes when other samples are in the batch"
    return None
