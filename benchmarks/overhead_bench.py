"""Fixed cost of an LM iteration on a tiny curve fit, beside scipy's curve_fit (MINPACK's lmdif).

The problem: y(t) = a·exp(−b·t) + c, 3 parameters, 100 points, float64. ``marquardt.fit`` runs 10 iterations
(ftol = xtol = gtol = 0, so it never stops early; no polish, which runs only after a fit converges); the figure is
its wall time divided by 10. scipy fits the same data from the same start to its own tolerances. Beside them, the
whole ``marquardt.fit`` at its default tolerances (with the polish), the figure to set against scipy's: past
convergence an iteration costs more than before it (the trust region's rejected attempts), and a fit at its
default tolerances stops there. One thread, interleaved rounds, medians.

    python benchmarks/overhead_bench.py [--repeats 100] [--check]

``--check`` exits 1 when an iteration costs more than 0.4 ms (the target of the composable-core issue).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import curve_fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import marquardt  # noqa: E402
from benchmarks.timing import machine_description  # noqa: E402
from tests.models import Exponential, exponential_data, residuals  # noqa: E402

TARGET_MS_PER_ITERATION = 0.4
ITERATIONS = 10


def ours(t: torch.Tensor, y: torch.Tensor) -> float:
    model = Exponential()
    opt = marquardt.LevenbergMarquardt(model, residuals)
    start = time.perf_counter()
    result = marquardt.fit(opt, t, y, max_iterations=ITERATIONS, ftol=0.0, xtol=0.0, gtol=0.0, polish=False)
    elapsed = time.perf_counter() - start
    assert result.iterations == ITERATIONS
    return elapsed / ITERATIONS


def whole_fit(t: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """Wall time of ``marquardt.fit`` at its defaults, and its iterations."""
    model = Exponential()
    opt = marquardt.LevenbergMarquardt(model, residuals)
    start = time.perf_counter()
    result = marquardt.fit(opt, t, y)
    elapsed = time.perf_counter() - start
    assert result.converged
    return elapsed, result.iterations


def scipy_fit(t: np.ndarray, y: np.ndarray) -> float:
    start = time.perf_counter()
    curve_fit(lambda tt, a, b, c: a * np.exp(-b * tt) + c, t, y, p0=(1.0, 0.5, 0.0))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t, y = exponential_data(100)
    t_np, y_np = t.numpy(), y.numpy()
    ours(t, y), whole_fit(t, y), scipy_fit(t_np, y_np)  # warm-up
    per_iteration, whole, scipy_total = [], [], []
    for _ in range(args.repeats):
        per_iteration.append(ours(t, y))
        whole.append(whole_fit(t, y))
        scipy_total.append(scipy_fit(t_np, y_np))
    ms = statistics.median(per_iteration) * 1e3
    print(machine_description("cpu"))
    print(f"marquardt.fit: {ms:.3f} ms per iteration ({ms * ITERATIONS:.2f} ms for {ITERATIONS} iterations); "
          f"scipy curve_fit: {statistics.median(scipy_total) * 1e3:.3f} ms for the whole fit "
          f"(medians of {args.repeats})")
    print(f"marquardt.fit at its default tolerances: {statistics.median(w for w, _ in whole) * 1e3:.3f} ms for the "
          f"whole fit ({statistics.median(k for _, k in whole):.0f} iterations)")
    if args.check and ms > TARGET_MS_PER_ITERATION:
        print(f"FAIL: {ms:.3f} ms per iteration > target {TARGET_MS_PER_ITERATION} ms")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
