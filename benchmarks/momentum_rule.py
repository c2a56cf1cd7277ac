"""When should LMAM momentum act? The measurement behind the default ``compare_lm_step="repeated_batch"``.

    python benchmarks/momentum_rule.py                 # MGH set, noisy sine (5 seeds), MNIST (30 iterations)
    python benchmarks/momentum_rule.py --no-mnist      # without MNIST (about a minute)
    python benchmarks/momentum_rule.py --check         # exit 1 unless the default keeps every claim below

Four settings, side by side on the same problems and starts:
- ``lmam alone``: momentum on every step (``compare_lm_step="never"``, the rule before this default);
- ``default``: LMAM, and on a batch that repeats the last step's, each attempt also evaluates the plain LM step
  and keeps the lower loss;
- ``compare always``: the same comparison on changing batches too;
- ``no momentum``: classic LM.

Problems: the 18 Moré-Garbow-Hillstrom least-squares problems written as modules that return their residuals,
fitted with ``loss="mse"`` against zeros (float64, standard starts, up to 500 iterations), and through a residual
callable; the noisy sine with the 1-20-20-1 network (1,000 points, iterations to the noise floor, as in
``benchmarks/paper/sine_ablation.py``); the paper's MNIST CNN (batches of 600, cross-entropy, accuracy on the
10,000 test images after 30 iterations, one seed); the 1-D Poisson PINN defined here (200
iterations of ``fit``, 3 seeds, relative L2 error of u; three sizes, ``PINNS``; reported, not checked: the seeds
spread over an order of magnitude).

``--check`` holds the default to: every MGH problem classic LM solves (with ``loss="mse"`` and through a residual
callable); the sine's median
iterations to the floor within 10% of LMAM alone's or better; on MNIST, every step as LMAM alone's.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import marquardt  # noqa: E402
from benchmarks.paper.sine import mlp, sine_data, train  # noqa: E402
from tests.optim.mgh import all_problems  # noqa: E402

SETTINGS = {
    "lmam alone": {"compare_lm_step": "never"},
    "default": {},
    "compare always": {"compare_lm_step": "always"},
    "no momentum": {"momentum": None},
}


def mgh(options: dict, residual_callable: bool = False) -> dict:
    """Problems solved (f within the test's tolerance of a known minimum), iterations and forward passes."""
    solved, iterations, passes = [], [], 0
    for name, make in all_problems():
        problem = make()
        with torch.no_grad():
            m = problem.residuals(problem.x).numel()
        zeros = torch.zeros(m, dtype=torch.float64)
        if residual_callable:
            opt = marquardt.LevenbergMarquardt(problem, lambda r, _t: r, **options)
            batch: tuple = (torch.zeros(1, dtype=torch.float64),)
        else:
            opt = marquardt.LevenbergMarquardt(problem, "mse", **options)
            batch = (zeros, zeros)
        result = marquardt.fit(opt, *batch, max_iterations=500, ftol=1e-15, xtol=1e-15, gtol=1e-20)
        if problem.at_known_minimum():
            solved.append(name)
        iterations.append(result.iterations)
        passes += opt.state[opt.layout.params[0]]["forward_passes"]
    return {"solved": solved, "total": len(iterations), "median_it": statistics.median(iterations),
            "passes": passes}


def sine(options: dict, seeds: int) -> dict:
    x, y = sine_data(1000)
    its, secs = [], []
    for seed in range(seeds):
        model = mlp(20, seed=seed)
        opt = marquardt.LevenbergMarquardt(model, "mse", **options)
        run = train("lm", model, lambda opt=opt: opt.step(x, y), x, y, 200, 60.0, stop_at_floor=True)
        its.append(run.iterations_to_floor if run.iterations_to_floor is not None else float("inf"))
        secs.append(run.seconds_to_floor if run.seconds_to_floor is not None else float("inf"))
    return {"iterations": its, "median_it": statistics.median(its), "median_s": statistics.median(secs)}


PINNS = ((20, 50), (10, 50), (10, 300))  # (width, interior points) of the PINN runs


def pinn_network(width: int, seed: int) -> torch.nn.Module:
    """1-width-width-1 tanh network, float64."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, 1)).double()


def pinn_residuals(model: torch.nn.Module, x: torch.Tensor, x_boundary: torch.Tensor):
    """u'' = −π² sin(πx) on (0, 1), u(0) = u(1) = 0 (solved by sin(πx)), in the autograd.grad style."""
    x = x.clone().requires_grad_(True)
    u = model(x)
    (u_x,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (u_xx,) = torch.autograd.grad(u_x.sum(), x, create_graph=True)
    return u_xx + math.pi**2 * torch.sin(math.pi * x), model(x_boundary)


def pinn(options: dict, width: int, points: int, seeds: int = 3, iterations: int = 200) -> dict:
    """The 1-D Poisson PINN above on ``points`` equispaced interior points: relative L2 error of u after ``fit``."""
    errors = []
    x_test = torch.linspace(0.0, 1.0, 1000, dtype=torch.float64).unsqueeze(1)
    exact = torch.sin(math.pi * x_test)
    for seed in range(seeds):
        model = pinn_network(width, seed)
        x = torch.linspace(0.0, 1.0, points + 2, dtype=torch.float64)[1:-1].unsqueeze(1)
        x_boundary = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
        opt = marquardt.LevenbergMarquardt(model, residuals=pinn_residuals, **options)
        marquardt.fit(opt, x, x_boundary, max_iterations=iterations)
        with torch.no_grad():
            errors.append(float((model(x_test) - exact).norm() / exact.norm()))
    return {"errors": errors, "median": statistics.median(errors)}


def mnist(options: dict, directory: str | None, iterations: int = 30) -> dict:
    from benchmarks.paper.mnist import batches, evaluate
    from benchmarks.paper.mnist_data import load
    from benchmarks.paper.models import paper_cnn

    x, y = load("train", directory)
    x_test, y_test = load("test", directory)
    model = paper_cnn(0)
    torch.manual_seed(10_000)  # the RReLU noise of the run
    opt = marquardt.LevenbergMarquardt(model, "cross_entropy", **options)
    order = batches(x.shape[0], 600, 0)
    losses, clock = [], 0.0
    for _ in range(iterations):
        idx = next(order)
        t0 = time.process_time()
        info = opt.step(x[idx], y[idx])
        clock += time.process_time() - t0
        losses.append(info.loss_after)
    accuracy, _ = evaluate(model, x_test, y_test)
    return {"losses": losses, "accuracy": accuracy, "seconds": clock}


def settings_comparison(description: str, argv: list[str] | None) -> argparse.Namespace:
    """The arguments of a side-by-side settings benchmark (--seeds, --no-mnist, --mnist-dir, --check), on one
    thread, with the host printed."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--no-mnist", action="store_true")
    p.add_argument("--mnist-dir", default=None, help="MNIST IDX directory (default ../shared/data/mnist)")
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"host: {platform.processor() or platform.machine()}, torch {torch.__version__}, one thread")
    return args


def main(argv: list[str] | None = None) -> int:
    args = settings_comparison(__doc__, argv)
    rows, failures = {}, []
    classic = mgh({"momentum": None}, residual_callable=True)
    print(f"MGH through a residual callable, classic LM (momentum=None, the default for residual callables "
          f"before 5c967f6): solved {len(classic['solved'])}/{classic['total']}, median iterations {classic['median_it']}")
    print(f"{'setting':<16} {'MGH solved':>10} {'median it':>9} {'passes':>7} | {'sine median it':>14} "
          f"{'median s':>8}  per seed")
    for name, options in SETTINGS.items():
        rows[name] = (mgh(options), sine(options, args.seeds))
        fit, run = rows[name]
        print(f"{name:<16} {len(fit['solved']):>7}/{fit['total']:<2} {fit['median_it']:>9} {fit['passes']:>7} | "
              f"{run['median_it']:>14} {run['median_s']:>8.3f}  {run['iterations']}", flush=True)
    print("PINN, relative L2 error of u after 200 iterations, median (3 seeds)")
    print(f"{'setting':<16} " + " ".join(f"{f'width {w}, {m + 2} rows':>22}" for w, m in PINNS))
    for name, options in SETTINGS.items():
        errors = [pinn(options, w, m) for w, m in PINNS]
        print(f"{name:<16} " + " ".join(f"{e['median']:>9.2e} ({max(e['errors']) / min(e['errors']):>4.0f}x spread)"
                                         for e in errors), flush=True)
    fit, run = rows["default"]
    for label, options in (("loss='mse'", {}), ("a residual callable", None)):
        solved = fit["solved"] if options is not None else mgh({}, residual_callable=True)["solved"]
        missing = sorted(set(classic["solved"]) - set(solved))
        if missing:
            failures.append(f"MGH with {label}: the default misses {missing}, which classic LM solves")
    if run["median_it"] > 1.1 * rows["lmam alone"][1]["median_it"]:
        failures.append(f"sine: median {run['median_it']} iterations against LMAM alone's "
                        f"{rows['lmam alone'][1]['median_it']}")
    if not args.no_mnist:
        runs = {name: mnist(SETTINGS[name], args.mnist_dir) for name in ("lmam alone", "default", "no momentum")}
        for name, r in runs.items():
            print(f"MNIST CNN, 30 iterations of 600, {name:<12}: test accuracy {r['accuracy']:.4f}, last batch loss "
                  f"{r['losses'][-1]:.4f}, {r['seconds']:.1f} CPU s")
        if runs["default"]["losses"] != runs["lmam alone"]["losses"]:
            failures.append("MNIST: the default's steps differ from LMAM alone's on changing batches")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
