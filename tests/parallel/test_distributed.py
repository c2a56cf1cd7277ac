"""Data-parallel LM: 2 processes (gloo, loopback) take the same steps as one process on the whole batch."""

from __future__ import annotations

import datetime
import gc
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from marquardt import LevenbergMarquardt

CONFIGS = {
    # tiny initial λ makes early trials fail: the line search rescues them (A) or they are rejected (B)
    "line_search": {"lam_init": 1e-7, "max_attempts": 1},
    "rejections": {"lam_init": 1e-7, "max_attempts": 1, "line_search": None},
    "block_diagonal": {"solver": "block_diagonal", "blocks": "unit", "lam_init": 1e-3},
    # every 2nd sample of each rank's shard is every 2nd sample of the whole batch: the same curvature subset
    "subsampled": {"curvature_samples": 0.5},
    # the correction's right-hand side is summed over the ranks like g (the geodesic decision is then the same)
    "geodesic": {"geodesic": True},
}
#: how close to one process: the ranks sum A and g in another order than one process does, and with λ ~ 1e-7
#: the solve amplifies that rounding in the smallest components
TOLERANCE = {"geodesic": 1e-10}
STEPS = 8


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-3, 3, 120, dtype=torch.float64).unsqueeze(1)
    return x, torch.sin(2 * x) + 0.1 * torch.rand(x.shape, generator=g, dtype=torch.float64)


def model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def train(net, x, y, options):
    opt = LevenbergMarquardt(net, "mse", **options)
    reasons = [opt.step(x, y).reason for _ in range(STEPS)]
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]), reasons


def worker(rank, world, port, options, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        x, y = data()
        shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        theta, reasons = train(model(), x[shard], y[shard], options)
        torch.save((theta, reasons), f"{out_path}.{rank}")
    finally:
        dist.barrier()  # nobody tears the group down while a peer still finishes its last collective
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", CONFIGS)
def test_two_processes_match_one(tmp_path, name):
    options = CONFIGS[name]
    mp.spawn(worker, args=(2, free_port(), options, str(tmp_path / "out")), nprocs=2, join=True)
    x, y = data()
    theta_ref, reasons_ref = train(model(), x, y, options)
    for rank in range(2):
        theta, reasons = torch.load(tmp_path / f"out.{rank}")
        assert reasons == reasons_ref
        assert float((theta - theta_ref).norm() / theta_ref.norm()) < TOLERANCE.get(name, 1e-6)
    if name == "line_search":
        assert "line_search" in reasons_ref
    if name == "rejections":
        assert "rejected" in reasons_ref


def mismatched_worker(rank, world, port, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        net = nn.Linear(1, 2 + rank).double()  # rank 1 holds a different model
        x = torch.zeros(4, 1, dtype=torch.float64)
        try:
            LevenbergMarquardt(net, "mse").step(x, torch.zeros(4, 2 + rank, dtype=torch.float64))
            message = "no error"
        except ValueError as exc:
            message = str(exc)
        torch.save(message, f"{out_path}.{rank}")
    finally:
        dist.barrier()  # nobody tears the group down while a peer still finishes its last collective
        dist.destroy_process_group()


def test_mismatched_models_are_refused(tmp_path):
    mp.spawn(mismatched_worker, args=(2, free_port(), str(tmp_path / "out")), nprocs=2, join=True)
    for rank in range(2):
        assert "the ranks differ in the trainable parameters" in torch.load(tmp_path / f"out.{rank}")


def test_distributed_true_without_a_process_group():
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        LevenbergMarquardt(nn.Linear(1, 1), "mse", distributed=True)


def setup_worker(rank, world, port, case, out_path):
    """One of the mismatches that aborted gloo or let the ranks drift apart; every rank must report it. (A long
    timeout: on a loaded machine a rank that gave up waiting would leave its peer in a collective it no longer
    joins.)"""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        x, y = data()
        shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        net, options = model(), {}
        if case == "dtype" and rank == 1:
            net, x, y = net.float(), x.float(), y.float()
        if case == "solver":
            options = {"solver": "primal" if rank == 0 else "block_diagonal"}
        if case == "momentum":
            options = {"momentum": "lmam" if rank == 0 else None}
        messages = []
        opt = LevenbergMarquardt(net, "mse", **options)
        for _ in range(2):  # the second call: a rank that caught the error and tries again
            try:
                opt.step(x[shard], y[shard])
                messages.append("no error")
            except (ValueError, RuntimeError) as exc:
                messages.append(str(exc))
        torch.save(messages, f"{out_path}.{rank}")
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.parametrize("case, words", [
    ("dtype", "the ranks differ in 'dtype'"),
    ("solver", "the ranks differ in 'solver'"),
    ("momentum", "the ranks differ in 'momentum'"),
])
def test_mismatched_setups_are_refused_on_every_rank(tmp_path, case, words):
    mp.spawn(setup_worker, args=(2, free_port(), case, str(tmp_path / "out")), nprocs=2, join=True)
    for rank in range(2):
        first, second = torch.load(tmp_path / f"out.{rank}")
        assert words in first
        assert "no longer pair up" in second  # refused at once, without a collective that could abort


def failing_worker(rank, world, port, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=10))
    try:
        x, y = data()
        shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        opt = LevenbergMarquardt(model(), "mse")
        opt.step(x[shard], y[shard])
        messages = []
        if rank == 1:  # this rank fails inside its second step, after the curvature's collectives
            opt.objective.loss_at = lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
        for _ in range(2):
            try:
                opt.step(x[shard], y[shard])
                messages.append("no error")
            except RuntimeError as exc:
                messages.append(str(exc).splitlines()[0])
        torch.save(messages, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_after_an_exception_on_one_rank_every_rank_refuses_further_steps(tmp_path):
    mp.spawn(failing_worker, args=(2, free_port(), str(tmp_path / "out")), nprocs=2, join=True)
    failed = torch.load(tmp_path / "out.1")
    assert failed[0] == "boom" and "no longer pair up" in failed[1]
    waiting = torch.load(tmp_path / "out.0")  # its peer left: the collective times out, then it refuses too
    assert waiting[0] != "no error" and "no longer pair up" in waiting[1]


def gloo_threads() -> list[str]:
    tasks = "/proc/self/task"
    names = [open(f"{tasks}/{task}/comm").read().strip() for task in os.listdir(tasks)]
    return sorted(name for name in names if "gloo" in name)


def release_worker(rank, world, port, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    x, y = data()
    shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    train(model(), x[shard], y[shard], {})
    running = gloo_threads()
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()
    torch.save((running, gloo_threads()), f"{out_path}.{rank}")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists threads through /proc")
def test_destroying_the_group_stops_its_threads(tmp_path):
    """marquardt imported before init_process_group (as this module is in each spawned process): building the
    optimizer must not leave the group referenced after destroy_process_group. Its gloo threads outliving it
    aborted examples/data_parallel.py at exit, now and then."""
    mp.spawn(release_worker, args=(2, free_port(), str(tmp_path / "out")), nprocs=2, join=True)
    for rank in range(2):
        running, left = torch.load(tmp_path / f"out.{rank}")
        assert running, "the check sees no gloo threads while the group is up"
        assert left == []
