"""Where does the error floor of a fitted PINN come from: the optimizer, the number of training points, or the
precision of the targets? The same network, seed and optimizer on the published point counts and on k times
as many points, with the targets in float32 (as their scripts compute them) or float64, each to its plateau.

    python benchmarks/pinn/points_floor.py                       # poisson2d, k = 1 and 4, seed 1, 90 CPU-s each
    python benchmarks/pinn/points_floor.py --factors 1 --targets float64 --seeds 1 2
    python benchmarks/pinn/points_floor.py --problem heat1d --factors 1 2 4 --seeds 1 2
    python benchmarks/pinn/points_floor.py --problem poisson2d_deep --optimizer marquardt --factors 1 --budget 300

If the relative error at the plateau falls as k grows while the training loss stays at the same level, the
floor comes from the points (the fitted network matches u* only where it was asked to); if it falls with
float64 targets, from the rounding of f and u* to float32; if neither, from the optimizer or the network. The
optimizer is one of run.py's marquardt rows (``--optimizer``; by default ``marquardt (delayed)``, the delayed λ
rule without momentum). Besides the plateau, each run reports the lowest relative error and the CPU time at
which it first reached 1e-7 (the error is measured after every step, off the clock). The evaluation points are drawn as in problems.make_run (10·N_Ω fresh uniform
points after the training points); the error is always against u* in float64.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.pinn import problems as P  # noqa: E402
from benchmarks.pinn import run as R  # noqa: E402
from benchmarks.timing import git_revision, machine_description  # noqa: E402

#: the relative error whose first crossing each run reports
TARGET_ERROR = 1e-7
MARQUARDT_ROWS = [name for name in R.OPTIMIZERS if name.startswith("marquardt")]


def plateau(problem: P.Problem, seed: int, budget_s: float, optimizer: str = "marquardt (delayed)") -> dict:
    """Train for ``budget_s`` CPU seconds; the final training loss and errors, the step count, the lowest
    relative error and the CPU seconds at which it first fell to :data:`TARGET_ERROR` (None if it did not)."""
    run = P.make_run(problem, seed)
    method = R.OPTIMIZERS[optimizer](run)
    cpu, steps, loss = 0.0, 0, float("nan")
    best, reached = float("inf"), None
    while cpu < budget_s:
        start = time.process_time()
        loss = method.step()
        cpu += time.process_time() - start
        steps += 1
        rel = P.errors(problem, run.model, run.x_eval)[1]
        best = min(best, rel)
        if reached is None and rel <= TARGET_ERROR:
            reached = cpu
    rms, rel = P.errors(problem, run.model, run.x_eval)
    return {"loss": loss, "error": rms, "relative_error": rel, "steps": steps, "best_relative_error": best,
            "seconds_to_target": reached}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", choices=[k for k, v in P.PROBLEMS.items() if not v.resample], default="poisson2d")
    p.add_argument("--factors", nargs="+", type=int, default=[1, 4])
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--budget", type=float, default=90.0, help="CPU seconds per run")
    p.add_argument("--optimizer", choices=MARQUARDT_ROWS, default="marquardt (delayed)",
                   help="which of run.py's marquardt rows trains")
    p.add_argument("--targets", choices=["float32", "float64"], default="float32",
                   help="the dtype of f and u* at the (float32) points: float32 as in their scripts, or float64")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    base = P.PROBLEMS[args.problem]
    print(f"{args.problem}, {args.optimizer}, targets in {args.targets}, {args.budget:g} CPU-s per run; commit "
          f"{git_revision()}, "
          f"{machine_description('cpu')}")
    print(f"{'points':>12} {'seed':>5} {'steps':>7} {'training loss':>14} {'their error':>12} {'relative':>10} "
          f"{'best':>10} {'CPU-s to 1e-7':>14}")
    for k in args.factors:
        problem = dataclasses.replace(base, n_interior=k * base.n_interior, n_boundary=k * base.n_boundary,
                                      target_dtype=getattr(torch, args.targets))
        for seed in args.seeds:
            out = plateau(problem, seed, args.budget, args.optimizer)
            reached = f"{out['seconds_to_target']:.1f}" if out["seconds_to_target"] is not None else "-"
            print(f"{problem.n_interior:>6} + {problem.n_boundary:<4} {seed:>5} {out['steps']:>7} "
                  f"{out['loss']:>14.2e} {out['error']:>12.2e} {out['relative_error']:>10.2e} "
                  f"{out['best_relative_error']:>10.2e} {reached:>14}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
