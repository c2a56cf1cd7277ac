"""Data-parallel LM on torch.distributed: every rank forms the rows of its shard, the curvature, gradient and
every loss are summed over ranks, and every rank then solves the same system and takes the same step.

Why this gives identical steps everywhere: after the all-reduces every rank holds bit-identical A, g and loss
values (an all-reduce hands every rank the same result), and everything after that (damping, λ, the solve,
momentum, acceptance) is deterministic. Solving redundantly on every rank costs one factorisation per rank but
no broadcast of the step; with n up to a few thousand the factorisation is cheap next to forming A.

Failure behaviour: a rank that raises stops taking part in the collectives, and the others wait in their next
all-reduce until the process group's timeout (``init_process_group(timeout=...)``) expires and raises there.
Shutting down: call ``dist.barrier()`` before ``destroy_process_group()``; with gloo a rank that leaves while
a peer still finishes the last all-reduce can make that peer abort (seen once in the 2-process tests).
"""

from __future__ import annotations

import torch
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

    def check_same_parameters(self, shapes: list[tuple[int, ...]], device: torch.device) -> None:
        """Refuses ranks whose models differ in the number or shapes of trainable parameters."""
        if not self.active:
            return
        numel = sum(int(torch.Size(s).numel()) for s in shapes)
        signature = hash(tuple(shapes)) % (2**61)
        local = torch.tensor([numel, signature], dtype=torch.int64, device=device)
        high, low = local.clone(), local.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.group)
        if not torch.equal(high, low):
            raise ValueError(
                f"distributed: the ranks' models differ (this rank: {numel} trainable parameters; across ranks "
                f"{int(low[0])} to {int(high[0])}); every rank must hold the same model"
            )
