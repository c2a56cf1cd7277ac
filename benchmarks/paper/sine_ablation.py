"""Ablation of the LM options on the noisy-sine task: iterations and CPU seconds to the noise floor.

    python benchmarks/paper/sine_ablation.py [--width 20] [--seeds 3]

Each configuration is the default with one switch changed (plus the paper and vanilla presets). This is the
measurement behind the defaults (uphill off, LMAM on, delayed-gratification λ); see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.paper.sine import lm_runner, mlp, sine_data, train  # noqa: E402

CONFIGS = {
    "default": {},
    "no momentum": {"momentum": None},
    "no momentum, no line search": {"momentum": None, "line_search": None},
    "no line search": {"line_search": None},
    "LMAM kappa=1": {"kappa": 1.0},
    "uphill on (guarded)": {"uphill": True},
    "Nielsen lambda": {"lambda_rule": "nielsen"},
    "Levenberg damping, no momentum": {"damping": "levenberg", "momentum": None},
    "lam_init=1e-3": {"lambda_init": 1e-3},
    "geodesic, no momentum": {"geodesic": True, "momentum": None},
    "preset paper": {"preset": "paper"},
    "preset vanilla": {"preset": "vanilla"},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-iterations", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y = sine_data(1000)
    print(f"noisy sine, 1-{args.width}-{args.width}-1, 1000 points, seeds 0..{args.seeds - 1}, "
          f"max {args.max_iterations} iterations")
    print(f"{'configuration':<34} {'median it':>9} {'median s':>9} {'reached':>8}  per seed (iterations)")
    for name, options in CONFIGS.items():
        its, secs = [], []
        for seed in range(args.seeds):
            model = mlp(args.width, seed=seed)
            run = train(name, model, lm_runner(model, x, y, **options), x, y, args.max_iterations, 60.0,
                        stop_at_floor=True)
            its.append(run.iterations_to_floor if run.iterations_to_floor is not None else float("inf"))
            secs.append(run.seconds_to_floor if run.seconds_to_floor is not None else float("inf"))
        reached = sum(i != float("inf") for i in its)
        print(f"{name:<34} {statistics.median(its):>9} {statistics.median(secs):>9.3f} {reached:>5}/{args.seeds}  {its}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
