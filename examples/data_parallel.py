"""Data-parallel LM with torch.distributed: every rank takes its shard of each batch, all take the same step.

Launch with torchrun (gloo on CPUs; NCCL works the same way on GPUs):

    torchrun --nproc-per-node 2 examples/data_parallel.py [--steps 30] [--points 2000]

Without torchrun it runs as a single process. Each rank builds the curvature rows of its own shard; the
optimizer sums JᵀJ, the gradient and every loss over the ranks (``distributed="auto"`` does this whenever a
process group is initialised), so all ranks solve the same system and their parameters stay identical, equal
to one process on the whole batch up to rounding. The script checks that at the end.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

import marquardt


def sine_batch(points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(points, 1, generator=generator) * 8 - 4
    return x, torch.sin(x) + 0.05 * torch.randn(points, 1, generator=generator)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--points", type=int, default=2000, help="points in the whole batch (all ranks)")
    args = parser.parse_args(argv)

    launched = "WORLD_SIZE" in os.environ
    if launched:
        dist.init_process_group("gloo")  # torchrun sets MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE
    rank, world = (dist.get_rank(), dist.get_world_size()) if launched else (0, 1)
    try:
        torch.manual_seed(0)  # the same initial model on every rank
        model = nn.Sequential(nn.Linear(1, 20), nn.ELU(), nn.Linear(20, 20), nn.ELU(), nn.Linear(20, 1))
        optimizer = marquardt.LevenbergMarquardt(model, "mse")
        x, y = sine_batch(args.points, seed=1)  # every rank draws the same batch and keeps its shard
        shard = slice(rank * args.points // world, (rank + 1) * args.points // world)
        for step in range(args.steps):
            info = optimizer.step(x[shard], y[shard])  # the loss in `info` is already the whole batch's
            if rank == 0 and (step % 5 == 4 or step == args.steps - 1):
                print(f"step {step + 1:3d}: MSE/2 {info.loss_after:.3e} ({info.reason}, λ = {info.lam:.2g})")

        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        spread = 0.0
        if launched:
            # The largest difference between this rank's parameters and rank 0's, as every rank sees it.
            reference = theta.clone()
            dist.broadcast(reference, src=0)
            difference = (theta - reference).abs().max().reshape(1)
            dist.all_reduce(difference, op=dist.ReduceOp.MAX)
            spread = float(difference)
        if rank == 0:
            print(f"{world} rank(s); largest parameter difference between ranks: {spread:.1e}")
        return {"loss": info.loss_after, "spread": spread, "world": float(world)}
    finally:
        if launched:
            # gloo aborts a rank that tears the group down while a peer is still in its last collective
            dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
