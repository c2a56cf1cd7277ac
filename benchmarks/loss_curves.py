"""Loss against CPU time: ours against torch-levenberg-marquardt, L-BFGS and Adam (optimizer issue).

    python benchmarks/loss_curves.py [--budget-scale 1.0] [--skip-mnist]

Sine MLPs (1-20-20-1 and 1-64-64-1, 1000 points, full batch; training MSE) and the paper's MNIST CNN (batches
of 600; loss on a fixed set of 2000 training images, evaluated outside the timing), each optimizer from the
same weights for the same CPU budget (one thread). Writes results/curves/<task>.png and .json and prints the
loss each optimizer had reached at a few fixed times. torch-levenberg-marquardt is skipped when not installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import marquardt  # noqa: E402
from benchmarks.paper.mnist import batches  # noqa: E402
from benchmarks.paper.mnist_data import load  # noqa: E402
from benchmarks.paper.models import paper_cnn  # noqa: E402
from benchmarks.paper.sine import adam_runner, lbfgs_runner, mlp, sine_data  # noqa: E402


def run_for(step, loss_of, budget: float) -> list[tuple[float, float]]:
    """Steps until the CPU budget is spent; (cumulative step seconds, loss after the step)."""
    curve, clock = [], 0.0
    while clock < budget:
        t0 = time.process_time()
        step()
        clock += time.process_time() - t0
        loss = loss_of()
        curve.append((clock, loss))
        if loss != loss:  # NaN: diverged
            break
    return curve


def sine_task(width: int, budget: float) -> dict[str, list]:
    x, y = sine_data(1000)
    mse = lambda model: lambda: float(((model(x) - y) ** 2).mean().detach())  # noqa: E731
    curves = {}
    def lm(model, **options):
        opt = marquardt.LevenbergMarquardt(model, "mse", **options)
        return lambda: opt.step(x, y)

    factories = {
        "ours": lm,
        "ours, curvature on 1/4": lambda m: lm(m, curvature_samples=0.25),
        "L-BFGS": lambda m: lbfgs_runner(m, x, y),
        "Adam": lambda m: adam_runner(m, x, y),
    }
    try:
        from torch_levenberg_marquardt.training import LevenbergMarquardtModule

        def tlm(model):
            module = LevenbergMarquardtModule(model, solve_method="cholesky")
            return lambda: module.training_step(x, y)

        factories["torch-levenberg-marquardt"] = tlm
    except ImportError:
        pass
    for name, make in factories.items():
        model = mlp(width, seed=0)
        curves[name] = run_for(make(model), mse(model), budget)
    return curves


def mnist_task(budget: float, data_dir: str | None) -> dict[str, list]:
    x, y = load("train", data_dir)
    x_fixed, y_fixed = x[-2000:], y[-2000:]
    curves = {}

    def loss_of(model):
        def evaluate() -> float:
            with torch.no_grad():
                return float(F.cross_entropy(model(x_fixed), y_fixed))

        return evaluate

    def stream():
        order = batches(58000, 600, 0)
        while True:
            idx = next(order)
            yield x[idx], y[idx]

    def lm(model, **options):
        opt, data = marquardt.LevenbergMarquardt(model, "cross_entropy", **options), stream()
        return lambda: opt.step(*next(data))

    def first_order(model, make_opt):
        opt, data = make_opt(model.parameters()), stream()

        def step():
            xb, yb = next(data)
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()

        return step

    def lbfgs(model):
        opt, data = torch.optim.LBFGS(model.parameters(), lr=0.5, line_search_fn="strong_wolfe"), stream()

        def step():
            xb, yb = next(data)

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                return loss

            opt.step(closure)

        return step

    factories = {
        "ours (ggn)": lambda m: lm(m),
        "ours (ggn, curvature on 1/4)": lambda m: lm(m, curvature_samples=0.25),
        "ours (ef)": lambda m: lm(m, curvature="ef"),
        "Adam (lr 0.01)": lambda m: first_order(m, lambda p: torch.optim.Adam(p, lr=0.01)),
        "L-BFGS (lr 0.5)": lbfgs,
    }
    try:
        from torch_levenberg_marquardt.loss import CrossEntropyLoss
        from torch_levenberg_marquardt.training import LevenbergMarquardtModule

        def tlm(model):
            module, data = LevenbergMarquardtModule(model, loss_fn=CrossEntropyLoss(), solve_method="cholesky",
                                                    use_vmap=False), stream()  # vmap cannot run RReLU
            return lambda: module.training_step(*next(data))

        factories["torch-levenberg-marquardt"] = tlm
    except ImportError:
        pass
    for name, make in factories.items():
        model = paper_cnn(0)
        torch.manual_seed(1)
        curves[name] = run_for(make(model), loss_of(model), budget)
    return curves


def report(task: str, curves: dict[str, list], out: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = max(c[-1][0] for c in curves.values())
    marks = [t for t in (0.1, 0.3, 1, 3, 10, 30, 100) if t <= total]
    print(f"\n{task}: {ylabel} reached by each CPU time (one thread)")
    print(f"{'optimizer':<32}" + "".join(f"{f'{t:g} s':>11}" for t in marks) + f"{'steps':>8}")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        reached = []
        for t in marks:
            before = [loss for s, loss in curve if s <= t]
            reached.append(f"{min(before):11.3e}" if before else f"{'-':>11}")
        print(f"{name:<32}" + "".join(reached) + f"{len(curve):>8}")
        ax.loglog([max(s, 1e-3) for s, _ in curve], [loss for _, loss in curve], label=name)
    ax.set(xlabel="CPU seconds (1 thread)", ylabel=ylabel, title=task)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{task}.png", dpi=110)
    plt.close(fig)
    (out / f"{task}.json").write_text(json.dumps(curves))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every CPU budget")
    p.add_argument("--skip-mnist", action="store_true")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=Path("results/curves"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for width, budget in ((20, 3.0), (64, 10.0)):
        report(f"sine_1-{width}-{width}-1", sine_task(width, budget * args.budget_scale), args.out, "training MSE")
    if not args.skip_mnist:
        report("mnist_cnn", mnist_task(60.0 * args.budget_scale, args.data_dir), args.out,
               "loss on 2000 training images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
