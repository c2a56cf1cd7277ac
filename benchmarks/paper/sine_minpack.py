"""The noisy-sine task for our LM and for MINPACK's classic LM, from the same data and initial weights.

MINPACK (Moré's LM with its trust region, through scipy.optimize.least_squares(method="lm")) is the standard
LM implementation, so it answers a question the paper's baselines cannot: how many iterations does a
classic LM need on this problem, and is "within 1% of the best MSE in 30 iterations" within reach of an LM
at all. Both run in float64 and are counted per Jacobian evaluation (one LM iteration each; MINPACK's
rejected trial points cost function evaluations only). MINPACK needs at least as many residuals as
parameters, so only networks with fewer than 1,000 parameters are run.

    python benchmarks/paper/sine_minpack.py --seeds 0 1 2 3 4 --iterations 1000

Needs scipy (pip install scipy; not a dependency of marquardt). Writes results/sine/minpack_<arch>.json
and the per-iteration figure minpack_<arch>.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.func import functional_call, jacfwd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import marquardt  # noqa: E402
from benchmarks.paper.sine import mlp, mse_of, sine_data  # noqa: E402

CHECKPOINTS = (10, 30, 100, 300, 1000)


class _BudgetSpent(Exception):
    """Raised from the Jacobian callback to stop MINPACK after the iteration budget."""


def our_lm_curve(width: int, depth: int, seed: int, iterations: int, points: int) -> list[float]:
    """Training MSE before the first step and after each of `iterations` steps of our default LM."""
    x, y = (t.double() for t in sine_data(points, seed))
    model = mlp(width, depth, seed).double()
    opt = marquardt.LevenbergMarquardt(model, "mse")
    curve = [mse_of(model, x, y)]
    for _ in range(iterations):
        opt.step(x, y)
        curve.append(mse_of(model, x, y))
    return curve


def minpack_curve(width: int, depth: int, seed: int, iterations: int, points: int) -> list[float]:
    """Training MSE at every point where MINPACK evaluates the Jacobian (its accepted iterates), and at its
    final point; at most `iterations` Jacobians."""
    try:
        from scipy.optimize import least_squares
    except ImportError as e:  # a benchmark-only dependency
        raise SystemExit("sine_minpack.py needs scipy: pip install scipy") from e
    x, y = (t.double() for t in sine_data(points, seed))
    model = mlp(width, depth, seed).double()
    params = {name: p.detach() for name, p in model.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    if sum(sizes) > points:
        raise SystemExit(f"MINPACK's LM needs at least as many residuals ({points}) as parameters ({sum(sizes)})")
    theta0 = torch.cat([p.reshape(-1) for p in params.values()])

    def residuals(theta: torch.Tensor) -> torch.Tensor:
        unflat = {n: c.reshape(s) for n, c, s in zip(names, torch.split(theta, sizes), shapes)}
        return (functional_call(model, unflat, (x,)) - y).reshape(-1)

    curve: list[float] = []

    def jacobian(theta):
        t = torch.from_numpy(theta)
        curve.append(float((residuals(t) ** 2).mean()))
        if len(curve) > iterations:
            raise _BudgetSpent
        return jacfwd(residuals)(t).numpy()  # forward mode: one tangent per parameter, fewer than the rows

    # Tolerances at zero-ish so that only the Jacobian budget stops it (or MINPACK's own convergence tests,
    # after which the final point ends the curve).
    try:
        result = least_squares(lambda t: residuals(torch.from_numpy(t)).numpy(), theta0.numpy(), jac=jacobian,
                               method="lm", max_nfev=100 * iterations, xtol=1e-15, ftol=1e-15, gtol=1e-15)
        curve.append(float((result.fun**2).mean()))
    except _BudgetSpent:
        pass
    return curve


def at(curve: list[float], k: int) -> float:
    return curve[min(k, len(curve) - 1)]


def first_within(curve: list[float], level: float) -> int | None:
    return next((k for k, v in enumerate(curve) if v <= level), None)


def reproducing_command(record: dict) -> str:
    """The command line that writes this record (its network, points, seeds and budget)."""
    widths = record["arch"].split("-")[1:-1]
    return (f"python benchmarks/paper/sine_minpack.py --width {widths[0]} --depth {len(widths)} "
            f"--points {record['points']} --seeds {' '.join(map(str, record['seeds']))} "
            f"--iterations {record['iterations']}")


def comparison_lines(record: dict) -> list[str]:
    """The side-by-side table (medians over seeds) of a record that main() wrote; report.py reuses it."""
    runs, iterations = record["curves"], record["iterations"]
    # The level of the sine target, per seed: within 1% of the best MSE either optimizer reaches.
    best = [min(min(curves[k]) for curves in runs.values()) for k in range(len(record["seeds"]))]
    checkpoints = [k for k in CHECKPOINTS if k <= iterations]
    lines = [f"Noisy sine, {record['arch']} ELU MLP, {record['points']} points, float64, seeds {record['seeds']}: "
             "training MSE after k iterations (Jacobian evaluations), medians over seeds "
             f"(`{reproducing_command(record)}`):", "",
             "| optimizer | " + " | ".join(f"MSE after {k}" for k in checkpoints)
             + " | final MSE per seed | iterations to within 1% of the seed's best |",
             "|---|" + "---:|" * len(checkpoints) + "---|---|"]
    for name, curves in runs.items():
        hits = [first_within(c, 1.01 * b) for c, b in zip(curves, best)]
        medians = [statistics.median(at(c, k) for c in curves) for k in checkpoints]
        lines.append(f"| {name} | " + " | ".join(f"{m:.3e}" for m in medians)
                     + f" | {', '.join(f'{c[-1]:.2e}' for c in curves)} | "
                     + ", ".join(str(h) if h is not None else f"> {iterations}" for h in hits) + " |")
    return lines + ["", f"Best MSE per seed: {', '.join(f'{b:.3e}' for b in best)}.", ""]


def figure_path(record: dict, directory: Path) -> Path:
    return directory / f"minpack_{record['arch']}.png"


def plot_comparison(record: dict, path: Path) -> None:
    """Training MSE per iteration (Jacobian evaluation): every seed thin, the median over seeds thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.paper.sine import NOISE_VARIANCE

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, curves), color in zip(record["curves"].items(), ("C0", "C3")):
        for curve in curves:
            ax.loglog(range(1, len(curve) + 1), curve, color=color, lw=0.6, alpha=0.35)
        length = max(len(c) for c in curves)  # a run that converged early stays at its last value
        median = [statistics.median(at(c, k) for c in curves) for k in range(length)]
        ax.loglog(range(1, length + 1), median, color=color, lw=2, label=f"{name} (median of {len(curves)} seeds)")
    ax.axhline(NOISE_VARIANCE, color="k", ls=":", lw=0.8, label="noise variance")
    ax.axvline(31, color="0.5", ls="--", lw=0.8, label="30 iterations (the target)")
    ax.set(xlabel="Jacobian evaluations + 1 (iteration 0 is the start)", ylabel="training MSE",
           title=f"Noisy sine, {record['arch']} ELU MLP: our LM and MINPACK's, same data and start")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=10)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--iterations", type=int, default=1000, help="Jacobian evaluations (LM iterations) per run")
    p.add_argument("--out", type=Path, default=Path("results/sine"))
    args = p.parse_args(argv)
    arch = f"1-{'-'.join([str(args.width)] * args.depth)}-1"
    runs = {"LM (marquardt)": [], "MINPACK LM": []}
    for seed in args.seeds:
        runs["LM (marquardt)"].append(our_lm_curve(args.width, args.depth, seed, args.iterations, args.points))
        runs["MINPACK LM"].append(minpack_curve(args.width, args.depth, seed, args.iterations, args.points))
        print(f"seed {seed} done", flush=True)
    record = {"arch": arch, "points": args.points, "seeds": args.seeds, "iterations": args.iterations,
              "curves": runs}
    print()
    print("\n".join(comparison_lines(record)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"minpack_{arch}.json").write_text(json.dumps(record))
    figure = figure_path(record, args.out)
    plot_comparison(record, figure)
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
