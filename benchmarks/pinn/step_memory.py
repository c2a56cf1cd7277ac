"""Peak memory of marquardt's steps on the published 9,873-parameter PINN (2-D Poisson, 900 + 120 points).

    python benchmarks/pinn/step_memory.py [--steps 20] [--check]    # --check: exit 1 if a step needs 1 GB or more

The process's peak resident set (``VmHWM`` of /proc/self/status, Linux) is read before the first step, with the
network, the points and torch loaded, and after the last; the difference is what the steps added at their peak.
It also prints which solver form ran (the dual form keeps a 1,020² matrix where the primal would need 9,873²).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import marquardt  # noqa: E402
from benchmarks.pinn import problems as P  # noqa: E402
from benchmarks.pinn.run import residuals_for  # noqa: E402
from benchmarks.timing import git_revision, machine_description  # noqa: E402

LIMIT_MB = 1024.0


def peak_resident_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--problem", default="poisson2d_deep", choices=sorted(P.PROBLEMS))
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    problem = P.PROBLEMS[args.problem]
    run = P.make_run(problem, 1)
    opt = marquardt.LevenbergMarquardt(run.model, residuals=residuals_for(problem), loss_scale="sum")
    before = peak_resident_mb()
    forms = set()
    for _ in range(args.steps):
        info = opt.step(*run.next_batch())
        forms.add(info.form)
    added = peak_resident_mb() - before
    print(f"{machine_description('cpu')}, commit {git_revision()}")
    print(f"{args.problem} (D = {problem.parameters}): {args.steps} steps, forms {sorted(forms)}, engine {info.engine}; "
          f"peak resident memory {before:.0f} MB before the first step, +{added:.0f} MB at the steps' peak; loss "
          f"{info.loss_after:.3e}")
    if args.check and added >= LIMIT_MB:
        print(f"FAILED: the steps added {added:.0f} MB (limit {LIMIT_MB:.0f} MB)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
