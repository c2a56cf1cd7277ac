"""Data-parallel LM on torch.distributed: every rank forms the rows of its shard, the curvature, gradient and
every loss are summed over ranks, and every rank then solves the same system and takes the same step.

Why this gives identical steps everywhere: after the all-reduces every rank holds bit-identical A, g and loss
values (an all-reduce hands every rank the same result), and everything after that (damping, λ, the solve,
momentum, acceptance) is deterministic. Solving redundantly on every rank costs one factorisation per rank but
no broadcast of the step; with n up to a few thousand the factorisation is cheap next to forming A.

Failure behaviour: a rank that raises stops taking part in the collectives, and the others wait in their next
all-reduce until the process group's timeout (``init_process_group(timeout=...)``) expires and raises there.
Shutting down: call ``dist.barrier()`` and then ``destroy_process_group()`` on every rank. One more trap, in
torch itself: importing ``torch._dynamo`` after ``init_process_group`` keeps references to the default group
that ``destroy_process_group`` does not drop, and every ``torch.optim.Optimizer`` imports it on construction.
The gloo worker threads then outlive the group, and at interpreter exit one of them, still releasing its last
tensor, can abort the process ("terminate called without an active exception"; 3 runs in 40 of
examples/data_parallel.py on 2 loaded cores). This module imports it up front, so ``import marquardt`` before
``init_process_group`` is enough; a script that initialises first should ``import torch._dynamo`` before it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch._dynamo  # noqa: F401  (before any process group exists: see "Shutting down" above)
import torch.distributed as dist


class Communicator:
    """Sums over the ranks of the default (or given) process group; a no-op when none is initialised."""

    def __init__(self, enabled: bool | str = "auto", group=None) -> None:
        available = dist.is_available() and dist.is_initialized()
        if enabled is True and not available:
            raise ValueError("distributed=True but torch.distributed is not initialised (call init_process_group)")
        self.active = bool(available and enabled in ("auto", True))
        self.group = group
        self.world_size = dist.get_world_size(group) if self.active else 1

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def sum_float(self, value: float, device: torch.device) -> float:
        if not self.active:
            return value
        return float(self.sum_(torch.tensor([value], dtype=torch.float64, device=device))[0])

    def check_same_setup(self, setup: dict[str, Any]) -> None:
        """Refuses, on every rank and before any other collective, ranks whose setups differ (the parameters'
        shapes and dtype, every setting): a difference would either abort the collectives (different sizes) or
        let the ranks drift apart silently. The error names the first entry that differs."""
        if not self.active:
            return
        setups: list[Any] = [None] * self.world_size
        dist.all_gather_object(setups, setup, group=self.group)
        for rank, other in enumerate(setups):
            for key in setup:
                if other.get(key) != setup[key]:
                    name = "the trainable parameters" if key == "parameters" else repr(key)
                    raise ValueError(
                        f"distributed: the ranks differ in {name} (this rank: {setup[key]!r}; rank {rank}: "
                        f"{other.get(key)!r}); every rank must hold the same model and settings"
                    )
