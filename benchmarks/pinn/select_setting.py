"""Choose marquardt's setting for a PINN problem on the training loss alone, never the evaluation error.

    python benchmarks/pinn/select_setting.py --problem poisson5d --budget 150
    python benchmarks/pinn/select_setting.py --problem poisson2d --settings "defaults" "delayed, no momentum"

Each candidate trains the problem's seed-1 network for the budget (CPU seconds, one thread). The score is the
loss before each step: on a problem that draws new points every step that is the loss on points the network has
not been fitted to, an estimate of the loss over the whole domain; on fixed points it is the training loss. The
median over the last tenth of the steps (at least 20) is printed; lower is better.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.pinn import problems as P  # noqa: E402
from benchmarks.pinn import run as R  # noqa: E402
from benchmarks.timing import git_revision, machine_description  # noqa: E402

SETTINGS: dict[str, dict] = {
    "defaults": {},  # the trust region with LMAM
    "no momentum": {"momentum": None},
    "delayed, no momentum": {"lambda_rule": "delayed", "momentum": None, "lambda_min_minibatch": None},
    "delayed": {"lambda_rule": "delayed", "lambda_min_minibatch": None},
}


def score(problem: P.Problem, options: dict, budget_s: float, seed: int = 1) -> tuple[float, int]:
    """(the median loss before a step over the last tenth of the steps, the number of steps)."""
    run = P.make_run(problem, seed)
    method = R.Marquardt(run, **options)
    cpu, before = 0.0, []
    while cpu < budget_s:
        start = time.process_time()
        info = method.opt.step(*run.next_batch())
        cpu += time.process_time() - start
        before.append(info.loss_before)
    return statistics.median(before[-max(20, len(before) // 10):]), len(before)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", choices=sorted(P.PROBLEMS), default="poisson5d")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--budget", type=float, default=150.0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{args.problem}, seed 1, {args.budget:g} CPU-s each; commit {git_revision()}, "
          f"{machine_description('cpu')}")
    for name in args.settings:
        value, steps = score(P.PROBLEMS[args.problem], SETTINGS[name], args.budget)
        print(f"{name:24s} {steps:7d} steps, loss before a step (median, last tenth) {value:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
