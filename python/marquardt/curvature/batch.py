"""One step's batch as the objective sees it, and how batches are recognised from step to step."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from ..solve.system import Problem

Chunks = list[tuple[Any, Any, torch.Tensor | None]]  # (inputs, targets, weights or None) of each chunk


@dataclass
class Batch:
    """One step's batch as the objective sees it: its chunks, sizes (all ranks) and scale α."""

    inputs: Any  # a tensor, or the tuple of a residual function's arguments
    targets: torch.Tensor | None
    samples: int  # N over all ranks
    local_samples: int
    outputs_per_sample: int
    alpha: float
    mean_loss: bool
    curvature_samples: int  # m over all ranks (= samples unless subsampled)
    local_curvature_samples: int
    subsampled: bool
    problem: Problem
    weights: torch.Tensor | None = None  # per-sample weights wᵢ ≥ 0 (f = α Σ wᵢ ℓᵢ), None: all 1
    chunks: Chunks | None = None  # set by Objective.build_system: every evaluation of the step uses these


def _entries(x: Any) -> tuple:
    if isinstance(x, (tuple, list)):
        return tuple(x)
    return tuple(x.values()) if isinstance(x, dict) else (x,)


def _items(inputs: Any, targets: Any) -> tuple:
    """The entries a batch is compared by: each of its inputs (the arguments of a structured batch or of a
    residual function) and targets."""
    return (*_entries(inputs), *_entries(targets))


class SameBatch:
    """Recognises the tensors of the last batch passed again unchanged: the same objects (held weakly), data
    pointers and version counters (every in-place change through torch bumps the counter). A batch holding
    anything but tensors and None is never taken for the same."""

    def __init__(self) -> None:
        self._key: tuple | None = None  # the batch checked last
        self._stepped: tuple | None = None  # the batch of the last step that succeeded, for batch_changed

    @staticmethod
    def _key_of(inputs: Any, targets: Any) -> tuple:
        return tuple((weakref.ref(t), t.data_ptr(), t._version) if isinstance(t, torch.Tensor) else (None,)
                     for t in _items(inputs, targets))

    @staticmethod
    def _same(key: tuple | None, inputs: Any, targets: Any) -> bool:
        items = _items(inputs, targets)
        if key is None or len(key) != len(items):
            return False
        for (ref, *rest), t in zip(key, items):
            if ref is None:
                if t is not None:
                    return False
            elif ref() is not t or rest != [t.data_ptr(), t._version]:
                return False
        return True

    def matches(self, inputs: Any, targets: Any) -> bool:
        return self._same(self._key, inputs, targets)

    def matches_previous_step(self, inputs: Any, targets: Any) -> bool:
        return self._same(self._stepped, inputs, targets)

    def remember(self, inputs: Any, targets: Any) -> None:
        """These tensors passed the checks."""
        self._key = self._key_of(inputs, targets)

    def commit(self) -> None:
        """The step on the batch checked last succeeded."""
        self._stepped = self._key


def fingerprint(t: Any) -> tuple:
    """The shape and 64 evenly spaced entries of t (of each tensor, for a tuple): equal for the same batch passed
    again, almost surely not for another batch."""
    if isinstance(t, (tuple, list, dict)):
        return tuple(fingerprint(item) for item in _entries(t))
    if isinstance(t, (bool, int, float, str)):
        return (t,)
    if not isinstance(t, torch.Tensor) or t.numel() == 0:
        return ()
    flat = t.detach().reshape(-1)
    index = torch.linspace(0, flat.numel() - 1, 64, device=flat.device).long()
    return (tuple(t.shape), *flat[index].double().tolist())
