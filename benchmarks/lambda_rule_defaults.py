"""Which λ rule should each objective get by default? The trust region against the delayed-gratification rule.

    python benchmarks/lambda_rule_defaults.py               # MGH, noisy sine (5 seeds), PINNs, MNIST (30 iterations)
    python benchmarks/lambda_rule_defaults.py --no-mnist    # without MNIST
    python benchmarks/lambda_rule_defaults.py --check       # exit 1 unless the defaults keep the claims below

Settings, side by side on the same problems and starts (every other option at its default):
- ``delayed``: ``lambda_rule="delayed"`` with LMAM momentum (compared with the plain LM step on repeated batches);
- ``trust region``: ``lambda_rule="trust_region", momentum=None`` (MINPACK's step control, nothing added);
- ``trust region + LMAM``: ``lambda_rule="trust_region"`` with the default momentum;
- ``default``: whatever the objective gets when nothing is given.

Problems: the 36 Moré-Garbow-Hillstrom instances from x₀ through a residual callable (float64, up to 500
iterations; solved when Σr² is within tolerance of a known minimum; 10·x₀ and 100·x₀ are in
``benchmarks/mgh_minpack.py``); the noisy sine with the 1-20-20-1 network (``loss="mse"``, iterations to the noise
floor, ``benchmarks/paper/sine_ablation.py``); the 1-D Poisson PINN of ``benchmarks/momentum_rule.py`` (a residual
function; relative L2 error after 200 iterations of ``fit``, median of 3 seeds, three sizes); the paper's MNIST CNN
(cross-entropy, batches of 600, test accuracy after 30 iterations).

``--check`` holds the defaults to: on MGH the default solves every instance that any setting solves; on the sine
its median iterations to the floor are within 10% of the best setting's; on every PINN size its median error is
within 3x of the best setting's; on MNIST its test accuracy is within 0.5 points of the best.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import marquardt  # noqa: E402
from benchmarks.mgh_minpack import PROBLEMS  # noqa: E402
from benchmarks.momentum_rule import PINNS, mnist, pinn, settings_comparison, sine  # noqa: E402

SETTINGS = {
    "delayed": {"lambda_rule": "delayed"},
    "trust region": {"lambda_rule": "trust_region", "momentum": None},
    "trust region + LMAM": {"lambda_rule": "trust_region"},
    "default": {},
}


def mgh(options: dict) -> dict:
    """Instances solved from x₀ through a residual callable, the median iterations and the CPU seconds."""
    solved, iterations, start = [], [], time.process_time()
    for name, make in PROBLEMS:
        problem = make()
        opt = marquardt.LevenbergMarquardt(problem, lambda r, _t: r, **options)
        try:
            result = marquardt.fit(opt, torch.zeros(1, dtype=torch.float64), max_iterations=500, ftol=1e-15,
                                   xtol=1e-15, gtol=1e-20)
            iterations.append(result.iterations)
            if problem.at_known_minimum():
                solved.append(name)
        except (ValueError, RuntimeError):
            iterations.append(500)
    return {"solved": solved, "median_it": statistics.median(iterations), "seconds": time.process_time() - start}


def main(argv: list[str] | None = None) -> int:
    args = settings_comparison(__doc__, argv)
    header = " ".join(f"{f'PINN w{w} {m + 2} rows':>16}" for w, m in PINNS)
    print(f"{'setting':<20} {'MGH x0':>7} {'med it':>6} {'CPU s':>6} | {'sine med it':>11} | {header}")
    rows = {}
    for name, options in SETTINGS.items():
        fits, run = mgh(options), sine(options, args.seeds)
        pinns = [pinn(options, w, m)["median"] for w, m in PINNS]
        rows[name] = {"mgh": fits, "sine": run, "pinn": pinns}
        print(f"{name:<20} {len(fits['solved']):>4}/{len(PROBLEMS):<2} {fits['median_it']:>6} {fits['seconds']:>6.1f} | "
              f"{run['median_it']:>11} | " + " ".join(f"{e:>16.2e}" for e in pinns), flush=True)
    failures = []
    default = rows["default"]
    anyone = set().union(*(set(r["mgh"]["solved"]) for r in rows.values()))
    if missing := sorted(anyone - set(default["mgh"]["solved"])):
        failures.append(f"MGH: the default misses {missing}, which another setting solves")
    best_sine = min(r["sine"]["median_it"] for r in rows.values())
    if default["sine"]["median_it"] > 1.1 * best_sine:
        failures.append(f"sine: the default's median {default['sine']['median_it']} iterations against {best_sine}")
    for i, (w, m) in enumerate(PINNS):
        best = min(r["pinn"][i] for r in rows.values())
        if default["pinn"][i] > 3 * best:
            failures.append(f"PINN width {w}, {m + 2} rows: the default's error {default['pinn'][i]:.2e} against {best:.2e}")
    if not args.no_mnist:
        runs = {name: mnist(SETTINGS[name], args.mnist_dir) for name in SETTINGS}
        for name, r in runs.items():
            print(f"MNIST CNN, 30 iterations of 600, {name:<20}: test accuracy {r['accuracy']:.4f}, "
                  f"{r['seconds']:.1f} CPU s", flush=True)
        best_accuracy = max(r["accuracy"] for r in runs.values())
        if runs["default"]["accuracy"] < best_accuracy - 0.005:
            failures.append(f"MNIST: the default's accuracy {runs['default']['accuracy']:.4f} against {best_accuracy:.4f}")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
