"""Noisy-sine regression (the paper's §3.2 / Fig. 1 task): LM against L-BFGS, Hessian-free, K-FAC, Adam and SGD.

    python benchmarks/paper/sine.py                 # 1-20-20-1 MLP, 1000 points, table + figure
    python benchmarks/paper/sine.py --quick         # fewer iterations (used by the README demo)
    python benchmarks/paper/sine.py --width 64      # the wider 1-64-64-1 variant

Data: the authors' generator, x = linspace(−10, 10, N), y = sin x + 0.2·U[0, 1) (noise variance 0.2²/12 ≈ 3.3e-3,
the floor of the training MSE). Each optimizer runs from the same initial weights; times are CPU seconds on one
thread (torch.set_num_threads(1)), measured per optimizer step. The "floor" column is the time until the training
MSE first drops below 1.1 × the noise variance.
"""

from __future__ import annotations

import argparse
import json
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


def hf_runner(model, x, y):
    from marquardt.baselines import HessianFree

    opt = HessianFree(model, "mse")
    return lambda: opt.step(x, y)


def kfac_runner(model, x, y, lr=0.05):
    from marquardt.baselines import KFAC

    opt = KFAC(model, "mse", variant="paper", lr=lr)  # the variant the authors ran (lr 0.05 on the sine)
    return lambda: opt.step(x, y)


def compare(width: int, n: int, lm_iters: int, seed: int, include_vanilla: bool = True) -> list[Run]:
    x, y = sine_data(n, seed)
    runs = []
    lm = mlp(width, seed=seed)
    runs.append(train("LM (marquardt)", lm, lm_runner(lm, x, y), x, y, lm_iters, 1e9))
    budget = max(runs[0].seconds, 1e-3) * 3  # the others get three times LM's wall time
    if include_vanilla:
        m = mlp(width, seed=seed)
        runs.append(train("vanilla LM", m, lm_runner(m, x, y, preset="vanilla"), x, y, lm_iters, budget))
    baselines = (("L-BFGS", lbfgs_runner), ("Hessian-free", hf_runner), ("K-FAC", kfac_runner), ("Adam", adam_runner),
                 ("SGD", sgd_runner))
    for name, factory in baselines:
        m = mlp(width, seed=seed)
        runs.append(train(name, m, factory(m, x, y), x, y, 10**6, budget))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=20)
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--iterations", type=int, default=100, help="LM iterations (the others are time-matched)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="50 LM iterations")
    p.add_argument("--out", type=Path, default=Path("results/sine"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    iters = 50 if args.quick else args.iterations
    title = f"noisy sine, 1-{args.width}-{args.width}-1 ELU MLP, {args.points} points"
    runs = compare(args.width, args.points, iters, args.seed)
    print_table(runs, title)
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / f"sine_w{args.width}.png"
    plot(runs, figure, title)
    (args.out / f"sine_w{args.width}.json").write_text(json.dumps([asdict(r) for r in runs]))
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
