"""Scaling benchmarks (issue: past the paper's wall).

    python benchmarks/scaling_bench.py memory     # peak RSS of one ggn step on MNIST at 10k, 100k, 600k rows
    python benchmarks/scaling_bench.py parallel   # one MNIST epoch (paper CNN, batch 600) with 1 and 2 processes

memory: a fresh process per case, the growth of its peak RSS over one LM step (rows = samples x 10 classes,
ggn curvature, the paper's CNN); it stays near memory_budget whatever the number of rows.
parallel: the same epoch (100 iterations of batch 600) on 1 process, and on 2 processes (gloo, loopback) that
each take half of every batch; one thread per process; wall time and final test accuracy side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEMORY_SNIPPET = """
import resource, sys, torch
sys.path.insert(0, {root!r})
import marquardt
from benchmarks.paper.mnist_data import load
from benchmarks.paper.models import paper_cnn
torch.set_num_threads(2)
x, y = load("train")
x, y = x[:{samples}], y[:{samples}]
opt = marquardt.LevenbergMarquardt(paper_cnn(0), "cross_entropy", memory_budget={budget})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
info = opt.step(x, y)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, info.form)
"""


def memory(samples_list=(1000, 10000, 60000), budget=256 * 2**20) -> list[dict]:
    out = []
    for samples in samples_list:
        code = MEMORY_SNIPPET.format(root=str(ROOT), samples=samples, budget=budget)
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - t0
        mib, form = res.stdout.split()
        row = {"rows": samples * 10, "samples": samples, "budget_mib": budget / 2**20, "peak_growth_mib": float(mib),
               "form": form, "wall_s_incl_startup": seconds}
        out.append(row)
        print(f"one ggn step, {samples * 10:>7} rows (MNIST {samples} samples x 10 classes), memory_budget "
              f"{budget / 2**20:.0f} MiB: peak RSS grew {float(mib):.1f} MiB ({form}; {seconds:.0f} s with startup)")
    return out


def epoch(rank: int, world: int, port: int, curvature: str, out_path: str) -> None:
    import torch.distributed as dist

    import marquardt
    from benchmarks.paper.mnist_data import load
    from benchmarks.paper.models import paper_cnn

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=300))
    x, y = load("train")
    x_test, y_test = load("test")
    model = paper_cnn(0)
    opt = marquardt.LevenbergMarquardt(model, "cross_entropy", curvature=curvature)
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for it in range(100):
        idx = perm[it * 600 : (it + 1) * 600]
        shard = idx[rank * 600 // world : (rank + 1) * 600 // world]
        opt.step(x[shard], y[shard])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    if rank == 0:
        Path(out_path).write_text(json.dumps({"seconds": seconds, "accuracy": accuracy}))
    if world > 1:
        dist.barrier()  # nobody tears the group down while a peer still finishes its last collective
        dist.destroy_process_group()


def parallel(curvature: str = "ggn") -> list[dict]:
    import torch.multiprocessing as mp

    out = []
    for world in (1, 2):
        path = f"/tmp/marquardt_epoch_{world}.json"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if world == 1:
            epoch(0, 1, port, curvature, path)
        else:
            mp.spawn(epoch, args=(world, port, curvature, path), nprocs=world, join=True)
        result = json.loads(Path(path).read_text())
        row = {"processes": world, "curvature": curvature, **result}
        out.append(row)
        print(f"one MNIST epoch (100 x batch 600, {curvature}), {world} process(es), 1 thread each: "
              f"{result['seconds']:.1f} s, test accuracy {result['accuracy']:.4f}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["memory", "parallel"])
    p.add_argument("--curvature", default="ggn", choices=["ggn", "ef"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = memory() if args.what == "memory" else parallel(args.curvature)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
