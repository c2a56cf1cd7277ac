"""Batches of any structure: a model's inputs may be one tensor, a tuple (or list) of tensors passed as positional
arguments, or a dict passed as keyword arguments; targets of residual callables may be structured likewise.
Every tensor of a batch holds one entry per sample along its first dimension."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call


def call(model: Callable[..., Any], x: Any) -> Any:
    """``model(x)``, ``model(*x)`` for a tuple or list, ``model(**x)`` for a dict."""
    if isinstance(x, (tuple, list)):
        return model(*x)
    if isinstance(x, dict):
        return model(**x)
    return model(x)


def functional(model: nn.Module, params: dict[str, torch.Tensor], x: Any) -> Any:
    """:func:`call` with the parameters swapped for ``params`` (``torch.func.functional_call``)."""
    if isinstance(x, (tuple, list)):
        return functional_call(model, params, tuple(x))
    if isinstance(x, dict):
        return functional_call(model, params, (), x)
    return functional_call(model, params, (x,))


def leaves(x: Any) -> list[tuple[str, torch.Tensor]]:
    """(a name for messages, the tensor) of every tensor in x: ``inputs``, ``inputs[1]``, ``inputs['a']``."""
    return _named(x, "")


def _named(x: Any, path: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(x, torch.Tensor):
        return [(path, x)]
    if isinstance(x, (tuple, list)):
        return [item for i, value in enumerate(x) for item in _named(value, f"{path}[{i}]")]
    if isinstance(x, dict):
        return [item for key, value in x.items() for item in _named(value, f"{path}[{key!r}]")]
    return []


def is_structured(x: Any) -> bool:
    return isinstance(x, (tuple, list, dict))


def take(x: Any, index: Any) -> Any:
    """The samples ``index`` (a slice or an index tensor) of every tensor in x, the structure kept."""
    if isinstance(x, torch.Tensor):
        return x[index]
    if isinstance(x, (tuple, list)):
        return type(x)(take(value, index) for value in x)
    if isinstance(x, dict):
        return {key: take(value, index) for key, value in x.items()}
    return x


def samples(x: Any) -> int:
    """The leading size shared by every tensor of x (checked by the objective before)."""
    return leaves(x)[0][1].shape[0]


def shapes(x: Any) -> tuple:
    """The shapes of x's tensors, a key for per-shape caches."""
    return tuple(tuple(t.shape) for _, t in leaves(x))
