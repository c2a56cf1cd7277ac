"""The two ways of writing a PINN's residual function, side by side: torch.func (vmap(hessian(u))) against
torch.autograd.grad(..., create_graph=True), on examples/pinn_poisson.py's 1-D Poisson problem.

Both take the same steps (tested in tests/examples and tests/curvature/test_residual_function.py); this
measures what each costs per LM iteration, alternating the two styles, as the median of repeats.

    python benchmarks/pinn_styles.py [--width 20] [--points 50] [--iterations 20] [--repeats 5] [--json out.json]
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
    x = torch.linspace(0.0, 1.0, points + 2, dtype=torch.float64)[1:-1].unsqueeze(1)
    x_boundary = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    opt = marquardt.LevenbergMarquardt(model, residuals=pinn_poisson.STYLES[style])
    start = time.perf_counter()
    result = marquardt.fit(opt, x, x_boundary, max_iterations=iterations, ftol=0.0, xtol=0.0, gtol=0.0)
    return (time.perf_counter() - start) / result.iterations, result.loss


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    times: dict[str, list[float]] = {"torch_func": [], "autograd": []}
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
        "final_loss": losses,
    }
    print(f"{'style':>11} {'ms/iteration (median)':>22} {'final loss':>12}")
    for style, m in medians.items():
        print(f"{style:>11} {1e3 * m:22.2f} {losses[style]:12.4e}")
    print(f"torch_func / autograd: {report['ratio_torch_func_over_autograd']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
