"""The three ways of writing a PINN's residual function, side by side, on examples/pinn_poisson.py's 2-D Poisson
problem: torch.func (vmap(hessian(u))), torch.autograd.grad(..., create_graph=True), and marquardt.pde's
PDEResiduals (Taylor mode, whose Jacobian takes one forward and one backward pass).

All three take the same steps (tested in tests/examples and tests/pde); this measures what each costs per LM
iteration, alternating the styles, as the median of repeats.

    python benchmarks/pinn_styles.py [--width 20] [--points 200] [--iterations 10] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import pinn_poisson  # noqa: E402

import marquardt  # noqa: E402


def seconds_per_iteration(style: str, width: int, points: int, iterations: int) -> tuple[float, float]:
    """(wall seconds per iteration, final loss) of one fixed-length run."""
    model = pinn_poisson.network(width, seed=0)
    batch = pinn_poisson.points(points, max(4, points // 5), seed=1)
    opt = marquardt.LevenbergMarquardt(model, residuals=pinn_poisson.STYLES[style], loss_scale="sum")
    start = time.perf_counter()
    result = marquardt.fit(opt, *batch, max_iterations=iterations, ftol=0.0, xtol=0.0, gtol=0.0)
    return (time.perf_counter() - start) / result.iterations, result.loss


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    times: dict[str, list[float]] = {style: [] for style in pinn_poisson.STYLES}
    losses: dict[str, float] = {}
    seconds_per_iteration("torch_func", args.width, args.points, 2)  # warm-up (torch.func's first compile)
    for _ in range(args.repeats):
        for style in times:  # alternated, so that a drift in the machine's speed hits both alike
            t, loss = seconds_per_iteration(style, args.width, args.points, args.iterations)
            times[style].append(t)
            losses[style] = loss
    medians = {style: statistics.median(ts) for style, ts in times.items()}
    report = {
        "host": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "settings": vars(args) | {"json": None},
        "ms_per_iteration": {s: 1e3 * m for s, m in medians.items()},
        "ratio_torch_func_over_autograd": medians["torch_func"] / medians["autograd"],
        "ratio_autograd_over_taylor": medians["autograd"] / medians["taylor"],
        "final_loss": losses,
    }
    print(f"{'style':>11} {'ms/iteration (median)':>22} {'final loss':>12}")
    for style, m in medians.items():
        print(f"{style:>11} {1e3 * m:22.2f} {losses[style]:12.4e}")
    print(f"torch_func / autograd: {report['ratio_torch_func_over_autograd']:.2f}; autograd / taylor: "
          f"{report['ratio_autograd_over_taylor']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
