"""Noisy-sine regression (the paper's §3.2 / Fig. 1 task): LM against L-BFGS, Hessian-free, K-FAC, Adam and SGD.

    python benchmarks/paper/sine.py                          # 1-20-20-1 MLP, 1000 points, table + figure
    python benchmarks/paper/sine.py --quick                  # fewer iterations (used by the README demo)
    python benchmarks/paper/sine.py --width 64               # the wider 1-64-64-1 variant
    python benchmarks/paper/sine.py --width 10 --depth 1 --seeds 0 1 2 3 4   # the authors' 1-10-1 MLP: Figures
        1a (vanilla vs improved LM), 1b (all optimizers, time-matched and iteration-matched) and 3 (fitted
        curves), medians over the seeds, written to results/sine/sine_<arch>_seeds.json for report.py; the
        baselines use the best learning rate of a small sweep (time-matched, on a seed that is not reported)

Data: the authors' generator, x = linspace(−10, 10, N), y = sin x + 0.2·U[0, 1) (noise variance 0.2²/12 ≈ 3.3e-3,
the floor of the training MSE). Each optimizer runs from the same initial weights; times are CPU seconds on one
thread (torch.set_num_threads(1)), measured per optimizer step. The "floor" column is the time until the training
MSE first drops below 1.1 × the noise variance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import marquardt  # noqa: E402

NOISE_VARIANCE = 0.2**2 / 12
FLOOR = 1.1 * NOISE_VARIANCE


def sine_data(n: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-10, 10, n).unsqueeze(1)
    return x, torch.sin(x) + 0.2 * torch.rand(x.shape, generator=g)


def mlp(width: int, depth: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(1, width), nn.ELU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ELU()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


@dataclass
class Run:
    name: str
    iterations: int = 0
    seconds: float = 0.0
    final_mse: float = float("nan")
    best_mse: float = float("inf")
    seconds_to_floor: float | None = None
    iterations_to_floor: int | None = None
    curve: list[tuple[float, float]] = field(default_factory=list)  # (cpu seconds, mse)
    prediction: list[float] = field(default_factory=list)  # the fitted curve on GRID (Figure 3)


GRID = torch.linspace(-10, 10, 200).unsqueeze(1)


def mse_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(x) - y) ** 2).mean())


def train(
    name: str, model: nn.Module, step: Callable[[], None], x, y, max_iters: int, max_seconds: float,
    stop_at_floor: bool = False,
) -> Run:
    run = Run(name)
    clock = 0.0
    for it in range(1, max_iters + 1):
        t0 = time.process_time()
        step()
        clock += time.process_time() - t0
        mse = mse_of(model, x, y)
        run.curve.append((clock, mse))
        run.best_mse = min(run.best_mse, mse)
        if run.seconds_to_floor is None and mse <= FLOOR:
            run.seconds_to_floor, run.iterations_to_floor = clock, it
        run.iterations, run.seconds, run.final_mse = it, clock, mse
        if clock >= max_seconds or (stop_at_floor and run.seconds_to_floor is not None):
            break
    with torch.no_grad():
        run.prediction = model(GRID).reshape(-1).tolist()
    return run


def lm_runner(model, x, y, **options):
    opt = marquardt.LevenbergMarquardt(model, "mse", **options)
    return lambda: opt.step(x, y)


def adam_runner(model, x, y, lr=0.01):
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()

    return step


def sgd_runner(model, x, y, lr=0.01):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step():
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()

    return step


def lbfgs_runner(model, x, y, lr=1.0):
    opt = torch.optim.LBFGS(model.parameters(), lr=lr, max_iter=20, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    return lambda: opt.step(closure)


def hf_runner(model, x, y, lr=1.0):
    from marquardt.baselines import HessianFree

    opt = HessianFree(model, "mse", lr=lr)
    return lambda: opt.step(x, y)


def kfac_runner(model, x, y, lr=0.05):
    from marquardt.baselines import KFAC

    opt = KFAC(model, "mse", variant="paper", lr=lr)  # the variant the authors ran (lr 0.05 on the sine)
    return lambda: opt.step(x, y)


BASELINES = (("L-BFGS", lbfgs_runner), ("Hessian-free", hf_runner), ("K-FAC", kfac_runner), ("Adam", adam_runner),
             ("SGD", sgd_runner))
#: The learning-rate grid of each baseline (``--sweep``); the defaults of the runners are the starting values.
SWEEPS = {"L-BFGS": (0.1, 0.3, 1.0), "Hessian-free": (0.1, 0.3, 1.0), "K-FAC": (0.01, 0.05, 0.2),
          "Adam": (0.001, 0.003, 0.01, 0.03), "SGD": (0.003, 0.01, 0.03, 0.05)}
SWEEP_SEED = 100  # not one of the reported seeds


def sweep(width: int, depth: int, n: int, lm_iters: int, time_factor: float, out: Path) -> dict[str, float]:
    """Each baseline at each learning rate of its grid, time-matched to LM, on a seed that is not reported;
    best = the lowest final training MSE. Written to ``out`` for later runs."""
    x, y = sine_data(n, SWEEP_SEED)
    lm = mlp(width, depth, seed=SWEEP_SEED)
    budget = max(train("LM", lm, lm_runner(lm, x, y), x, y, lm_iters, 1e9).seconds, 1e-3) * time_factor
    best: dict[str, float] = {}
    for name, factory in BASELINES:
        scores = {}
        for lr in SWEEPS[name]:
            model = mlp(width, depth, seed=SWEEP_SEED)
            run = train(name, model, factory(model, x, y, lr=lr), x, y, 10**6, budget)
            scores[lr] = run.final_mse if run.final_mse == run.final_mse else float("inf")  # NaN: diverged
            print(f"sweep {name:<13} lr {lr:<6g} final MSE {scores[lr]:.3e}", flush=True)
        best[name] = min(scores, key=lambda k: scores[k])
    out.write_text(json.dumps(best, indent=1))
    print(f"best learning rates: {best} -> {out}")
    return best


def compare(
    width: int, n: int, lm_iters: int, seed: int, include_vanilla: bool = True, depth: int = 2,
    time_factor: float = 3.0, protocol: str = "time", lrs: dict[str, float] | None = None,
) -> list[Run]:
    """LM for ``lm_iters`` iterations, then every other optimizer from the same initial weights, given either
    ``time_factor`` × LM's CPU time (``protocol="time"``; the paper allows "the same time") or LM's number of
    iterations (``protocol="iterations"``; one L-BFGS iteration is one ``step``, up to 20 inner iterations)."""
    x, y = sine_data(n, seed)
    runs = []
    lm = mlp(width, depth, seed=seed)
    runs.append(train("LM (marquardt)", lm, lm_runner(lm, x, y), x, y, lm_iters, 1e9))
    if protocol == "time":
        max_iters, budget = 10**6, max(runs[0].seconds, 1e-3) * time_factor
    else:
        max_iters, budget = lm_iters, 1e9
    if include_vanilla:
        m = mlp(width, depth, seed=seed)
        runs.append(train("vanilla LM", m, lm_runner(m, x, y, preset="vanilla"), x, y, lm_iters, budget))
    for name, factory in BASELINES:
        m = mlp(width, depth, seed=seed)
        options = {"lr": lrs[name]} if lrs and name in lrs else {}
        runs.append(train(name, m, factory(m, x, y, **options), x, y, max_iters, budget))
    return runs


def print_table(runs: list[Run], title: str) -> None:
    print(f"\n{title}")
    print(f"{'optimizer':<16} {'iters':>7} {'cpu s':>8} {'final MSE':>11} {'best MSE':>11} {'s to floor':>11} {'it to floor':>11}")
    for r in runs:
        s_floor = f"{r.seconds_to_floor:.3f}" if r.seconds_to_floor is not None else "-"
        i_floor = str(r.iterations_to_floor) if r.iterations_to_floor is not None else "-"
        print(f"{r.name:<16} {r.iterations:>7} {r.seconds:>8.3f} {r.final_mse:>11.3e} {r.best_mse:>11.3e} {s_floor:>11} {i_floor:>11}")
    print(f"(noise variance {NOISE_VARIANCE:.3e}; floor = MSE <= {FLOOR:.3e}; times are CPU seconds, 1 thread)")


def plot(runs: list[Run], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        if r.curve:
            ts, ms = zip(*r.curve)
            ax.loglog([max(t, 1e-4) for t in ts], ms, label=r.name)
    ax.axhline(NOISE_VARIANCE, color="k", ls=":", label="noise variance")
    ax.set_xlabel("CPU seconds (1 thread)")
    ax.set_ylabel("training MSE")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_seeds(per_seed: dict[str, dict[str, list[Run]]], x, y, path: Path, title: str) -> None:
    """Figures 1a, 1b (time- and iteration-matched) and 3 in one image; curves are medians over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def median_curve(runs: list[Run]) -> list[float]:
        length = min(len(r.curve) for r in runs)
        return [statistics.median(r.curve[i][1] for r in runs) for i in range(length)]

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    timed, iterated = per_seed["time"], per_seed["iterations"]
    for name in ("LM (marquardt)", "vanilla LM"):
        axes[0].semilogy(range(1, len(median_curve(iterated[name])) + 1), median_curve(iterated[name]), label=name)
    axes[0].set(title="Fig. 1a: vanilla vs improved LM", xlabel="iteration", ylabel="training MSE (median)")
    for name, runs in timed.items():
        seconds = [statistics.median(r.curve[i][0] for r in runs) for i in range(min(len(r.curve) for r in runs))]
        axes[1].loglog([max(t, 1e-4) for t in seconds], median_curve(runs), label=name)
    axes[1].set(title="Fig. 1b: time-matched", xlabel="CPU seconds (1 thread)", ylabel="training MSE (median)")
    for name, runs in iterated.items():
        axes[2].semilogy(range(1, len(median_curve(runs)) + 1), median_curve(runs), label=name)
    axes[2].set(title="Fig. 1b: iteration-matched", xlabel="iteration", ylabel="training MSE (median)")
    for ax in axes[:3]:
        ax.axhline(NOISE_VARIANCE, color="k", ls=":", lw=0.8)
    axes[2].legend(fontsize=7)
    axes[3].scatter(x.reshape(-1), y.reshape(-1), s=2, color="0.7", label="data (seed 0)")
    for name, runs in iterated.items():
        axes[3].plot(GRID.reshape(-1), runs[0].prediction, label=name, lw=1)
    axes[3].set(title="Fig. 3: fitted curves (seed 0, iteration-matched)", xlabel="x", ylabel="y")
    axes[3].legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def multi_seed(args, title: str, arch: str) -> int:
    per_seed: dict[str, dict[str, list[Run]]] = {"time": {}, "iterations": {}}
    sweep_file = args.out / f"sweep_{arch}.json"
    if args.sweep or not sweep_file.is_file():
        sweep(args.width, args.depth, args.points, args.iterations, args.time_factor, sweep_file)
    lrs = json.loads(sweep_file.read_text())
    for seed in args.seeds:
        for protocol in per_seed:
            for run in compare(args.width, args.points, args.iterations, seed, depth=args.depth,
                               time_factor=args.time_factor, protocol=protocol, lrs=lrs):
                per_seed[protocol].setdefault(run.name, []).append(run)
        print(f"seed {seed} done", flush=True)
    for protocol, runs in per_seed.items():
        med = lambda rs, key: statistics.median(getattr(r, key) for r in rs)  # noqa: E731
        medians = [Run(name, iterations=int(med(rs, "iterations")), seconds=med(rs, "seconds"),
                       final_mse=med(rs, "final_mse"), best_mse=med(rs, "best_mse")) for name, rs in runs.items()]
        print_table(medians, f"{title}, {protocol}-matched, medians of {len(args.seeds)} seeds")
    figure = args.out / f"sine_{arch}_seeds.png"
    plot_seeds(per_seed, *sine_data(args.points, args.seeds[0]), figure, title)
    protocol = f"time-matched ({args.time_factor:g}x LM's CPU time)"
    record = {"title": title, "seeds": args.seeds, "learning_rates": lrs, "lm_iterations": args.iterations, "protocol": protocol,
              "noise_variance": NOISE_VARIANCE, "figure": figure.as_posix(),
              "runs": {name: [asdict(r) for r in rs] for name, rs in per_seed["time"].items()},
              "iteration_matched": {name: [asdict(r) for r in rs] for name, rs in per_seed["iterations"].items()}}
    (args.out / f"sine_{arch}_seeds.json").write_text(json.dumps(record))
    print(f"figure: {figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=20)
    p.add_argument("--depth", type=int, default=2, help="hidden layers (the authors' MLP: --width 10 --depth 1)")
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--iterations", type=int, default=100, help="LM iterations (the others are time-matched)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds: Figures 1a, 1b and 3")
    p.add_argument("--time-factor", type=float, default=None,
                   help="the others get this many times LM's CPU time (default 3; 1 with --seeds, as the paper)")
    p.add_argument("--quick", action="store_true", help="50 LM iterations")
    p.add_argument("--sweep", action="store_true", help="(with --seeds) redo the baselines' learning-rate sweep")
    p.add_argument("--out", type=Path, default=Path("results/sine"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.iterations = 50 if args.quick else args.iterations
    arch = "-".join(["1"] + [str(args.width)] * args.depth + ["1"])
    title = f"noisy sine, {arch} ELU MLP, {args.points} points"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.seeds:
        args.time_factor = 1.0 if args.time_factor is None else args.time_factor
        return multi_seed(args, title, arch)
    runs = compare(args.width, args.points, args.iterations, args.seed, depth=args.depth,
                   time_factor=3.0 if args.time_factor is None else args.time_factor)
    print_table(runs, title)
    figure = args.out / f"sine_w{args.width}.png"
    plot(runs, figure, title)
    (args.out / f"sine_w{args.width}.json").write_text(json.dumps([asdict(r) for r in runs]))
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
