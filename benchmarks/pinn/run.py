"""The physics-informed benchmarks of Dangel, Müller & Zeinhofer (NeurIPS 2024) on this machine: marquardt
against L-BFGS, Adam and an ENGD baseline, on the same points and initial weights, error against CPU time.

    python benchmarks/pinn/run.py                          # the two D = 257 problems, 3 seeds, 120 CPU-s each
    python benchmarks/pinn/run.py --problems poisson5d poisson2d_deep --seeds 1
    python benchmarks/pinn/run.py --quick                  # a few seconds per run (the test suite's variant)
    python benchmarks/pinn/run.py --problems heat1d --merge  # add or replace one problem in results/pinn/pinn.json
    python benchmarks/pinn/run.py --render --include /tmp/b/pinn.json  # add the optimizers of a run made beside it

The run writes results/pinn/pinn.json, pinn.png and pinn.md (while it runs, the logs of the finished runs are in
pinn.partial.json, removed at the end); ``python benchmarks/paper/report.py`` puts the
section into RESULTS.md.

Problems (benchmarks/pinn/problems.py): 2-D Poisson and 1+1-D heat with a 257-parameter tanh MLP and 900 + 120
points, 5-D Poisson with 449 parameters and 3000 + 500 points drawn anew every step, and 2-D Poisson with a
9,873-parameter MLP. Seeds are their model seed (1 is theirs); the points follow the weights on the same stream.

Optimizers, every one on the residuals of ``marquardt.pde.PDEResiduals`` (Taylor-mode values, so the baselines'
loss evaluations are as cheap as ours):

* **marquardt**: ``LevenbergMarquardt(model, residuals=...)`` at its defaults, and ``marquardt (delayed)``, the
  delayed λ rule without momentum, chosen on the training loss of poisson2d's seed 1 (BENCHMARKS.md), and without
  the mini-batch λ floor (``lambda_min_minibatch=None``), chosen on the training loss of poisson5d's seed 1: where
  the points change every step the floor of 1 would hold λ there (it only acts when the batch changes, so the
  fixed-point problems are unaffected); and for poisson5d ``marquardt (no momentum)``, the trust region without
  LMAM, chosen on the loss of the fresh points before each step (1.9e-11 against the defaults' 6.7e-11 and the
  delayed row's 3.5e-10, median over the last tenth of 150 CPU-s on seed 1);
* **L-BFGS**: ``torch.optim.LBFGS`` with the strong Wolfe line search, their best learning rate and history size
  (max_iter 20);
* **Adam**: their best learning rate;
* **ENGD**: Gauss-Newton on the same Jacobian (Taylor mode): the Gramian JᵀJ as an exponential moving average,
  plus their damping, solved by ``torch.linalg.lstsq`` (gelsd), then their grid line search over 2⁻³⁰ … 2⁰
  (31 step sizes, the lowest loss wins), with their best settings per problem.

The clock is ``time.process_time`` (CPU seconds of this process, all its threads) and stops while the error is
measured. The error is theirs, the root mean square of u_θ − u* over 10·N_Ω evaluation points, and the relative
error divides it by the root mean square of u*. Logged at growing intervals; the figures and the summary are
medians over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import marquardt  # noqa: E402
from benchmarks.pinn import problems as P  # noqa: E402
from benchmarks.timing import git_revision, machine_description  # noqa: E402
from marquardt import pde  # noqa: E402

#: their best runs' settings (the sweeps' best_runs metadata): L-BFGS (lr, history), Adam lr,
#: ENGD (damping, EMA factor, Gramian initialised to the identity)
THEIR_BEST = {
    "poisson2d": {"lbfgs": (0.5, 150), "adam": 1.6923389183852923e-3, "engd": (1e-10, 0.3, True)},
    "heat1d": {"lbfgs": (0.1, 125), "adam": 8.629006288964788e-4, "engd": (1e-12, 0.9, False)},
    "poisson5d": {"lbfgs": (0.05, 125), "adam": 1.5271013750735704e-3, "engd": (1e-11, 0.6, True)},
    "poisson2d_deep": {"lbfgs": (0.1, 200), "adam": 2.052447910724848e-4, "engd": (1e-10, 0.6, False)},
}
GRID = [2.0**k for k in range(-30, 1)]  # their grid line search's step sizes
TARGET = 1e-7  # the relative-error target


def residuals_for(problem: P.Problem) -> pde.PDEResiduals:
    """Poisson −Δu = f and u = g; heat ∂ₜu − ¼Δₓu = 0 and u = g on the boundary and at t = 0."""
    if problem.equation == "poisson":
        interior = -pde.laplacian(problem.dim_omega)
    else:
        interior = pde.derivative(0) - 0.25 * pde.laplacian(range(1, problem.in_dim))
    return pde.PDEResiduals(interior, pde.value())


class Optimizer:
    """One training method on a run: ``step()`` takes one step on the run's next batch and returns its loss."""

    def __init__(self, run: P.Run) -> None:
        self.run = run
        self.residuals = residuals_for(run.problem)

    def loss(self, batch: tuple) -> torch.Tensor:
        return 0.5 * sum(r.square().sum() for r in self.residuals(self.run.model, *batch))

    def step(self) -> float:
        raise NotImplementedError


class Marquardt(Optimizer):
    def __init__(self, run: P.Run, **options) -> None:
        super().__init__(run)
        self.opt = marquardt.LevenbergMarquardt(run.model, residuals=self.residuals, loss_scale="sum", **options)

    def step(self) -> float:
        return self.opt.step(*self.run.next_batch()).loss_after


class LBFGS(Optimizer):
    def __init__(self, run: P.Run) -> None:
        super().__init__(run)
        lr, history = THEIR_BEST[run.problem.name]["lbfgs"]
        self.opt = torch.optim.LBFGS(run.model.parameters(), lr=lr, max_iter=20, history_size=history,
                                     line_search_fn="strong_wolfe")

    def step(self) -> float:
        batch = self.run.next_batch()

        def closure() -> torch.Tensor:
            self.opt.zero_grad()
            loss = self.loss(batch)
            loss.backward()
            return loss

        return float(self.opt.step(closure))


class Adam(Optimizer):
    def __init__(self, run: P.Run) -> None:
        super().__init__(run)
        self.opt = torch.optim.Adam(run.model.parameters(), lr=THEIR_BEST[run.problem.name]["adam"])

    def step(self) -> float:
        self.opt.zero_grad()
        loss = self.loss(self.run.next_batch())
        loss.backward()
        self.opt.step()
        return float(loss.detach())


class ENGD(Optimizer):
    """Energy natural gradient descent as their code runs it (optim/engd.py, approximation 'full'), on our
    Jacobian: G ← βG + (1 − β)JᵀJ, δ = −lstsq(G + μI, Jᵀr) by gelsd, then the grid line search."""

    def __init__(self, run: P.Run) -> None:
        super().__init__(run)
        self.damping, self.ema, identity = THEIR_BEST[run.problem.name]["engd"]
        self.params = list(run.model.parameters())
        n = sum(p.numel() for p in self.params)
        self.gramian = torch.eye(n, dtype=torch.float64) if identity else torch.zeros(n, n, dtype=torch.float64)

    @torch.no_grad()
    def step(self) -> float:
        batch = self.run.next_batch()
        got = self.residuals.jacobian(self.run.model, self.params, *batch)
        assert got is not None
        r, J = got
        self.gramian.mul_(self.ema).add_(J.T @ J, alpha=1 - self.ema)
        damped = self.gramian + self.damping * torch.eye(len(self.gramian), dtype=self.gramian.dtype)
        direction = -torch.linalg.lstsq(damped, (J.T @ r).unsqueeze(1), driver="gelsd").solution.squeeze(1)
        theta = torch.nn.utils.parameters_to_vector(self.params)
        losses = []
        for alpha in GRID:
            torch.nn.utils.vector_to_parameters(theta + alpha * direction, self.params)
            losses.append(float(self.loss(batch)))
        best = min(range(len(GRID)), key=lambda k: losses[k])
        loss0 = 0.5 * float(r.square().sum())
        step = GRID[best] if losses[best] <= loss0 else 0.0  # (no decrease on the grid: stay)
        torch.nn.utils.vector_to_parameters(theta + step * direction, self.params)
        return min(losses[best], loss0)


OPTIMIZERS: dict[str, Callable[[P.Run], Optimizer]] = {
    "marquardt": Marquardt,
    "marquardt (delayed)": lambda run: Marquardt(run, lambda_rule="delayed", momentum=None,
                                                lambda_min_minibatch=None),
    "marquardt (no momentum)": lambda run: Marquardt(run, momentum=None),
    "ENGD": ENGD,
    "L-BFGS": LBFGS,
    "Adam": Adam,
}


def train(problem: P.Problem, name: str, seed: int, budget_s: float, growth: float = 1.15) -> list[dict]:
    """The log of one run: (CPU s, wall s, steps, loss, error, relative error) at 0 and at growing CPU times
    until the budget is spent; the clocks stop while the error is measured."""
    run = P.make_run(problem, seed)
    method = OPTIMIZERS[name](run)
    rms, rel = P.errors(problem, run.model, run.x_eval)
    log = [{"cpu_s": 0.0, "wall_s": 0.0, "steps": 0, "loss": math.nan, "error": rms, "relative_error": rel}]
    cpu = wall = 0.0
    steps, next_log = 0, 0.05
    while cpu < budget_s:
        c0, w0 = time.process_time(), time.perf_counter()
        loss = method.step()
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        steps += 1
        if cpu >= next_log or cpu >= budget_s or not math.isfinite(loss):
            rms, rel = P.errors(problem, run.model, run.x_eval)
            log.append({"cpu_s": cpu, "wall_s": wall, "steps": steps, "loss": loss, "error": rms,
                        "relative_error": rel})
            next_log = max(next_log * growth, cpu)
            if not math.isfinite(loss):
                break
    return log


def error_at(log: list[dict], t: float, key: str = "relative_error") -> float:
    """The error of the last log entry at or before CPU time t."""
    return [e[key] for e in log if e["cpu_s"] <= t][-1]


def time_to(log: list[dict], error: float, key: str = "relative_error") -> float | None:
    """The CPU time of the first log entry at or below ``error`` (None if never)."""
    return next((e["cpu_s"] for e in log if e[key] <= error), None)


def _median_time(times: list[float | None]) -> float | None:
    """The median over the seeds of a time that a seed may never reach (None counts as never, after every
    time): None when the median seed did not reach it."""
    median = statistics.median(math.inf if t is None else t for t in times)
    return None if math.isinf(median) else median


def summarise(logs: dict[str, dict[int, list[dict]]]) -> dict[str, dict]:
    """Per optimizer, medians over the seeds: the final and best errors (theirs and relative), the CPU time to
    the 1e-7 target, and against L-BFGS in the same run: the time to L-BFGS's best error, and L-BFGS's."""
    out: dict[str, dict] = {}
    lbfgs = logs.get("L-BFGS", {})
    for name, by_seed in logs.items():
        final = [log[-1]["relative_error"] for log in by_seed.values()]
        best = [min(e["relative_error"] for e in log) for log in by_seed.values()]
        best_abs = [min(e["error"] for e in log) for log in by_seed.values()]
        reach = [time_to(log, TARGET) for log in by_seed.values()]
        entry = {"final_relative_error": statistics.median(final), "best_relative_error": statistics.median(best),
                 "best_error": statistics.median(best_abs), "steps": statistics.median(
                     log[-1]["steps"] for log in by_seed.values()),
                 "seconds_to_target": _median_time(reach), "seeds_reaching_target": sum(r is not None for r in reach)}
        if lbfgs:
            ratios = []
            for seed, log in by_seed.items():
                if seed not in lbfgs:
                    continue
                target = min(e["relative_error"] for e in lbfgs[seed])
                ours, theirs = time_to(log, target), time_to(lbfgs[seed], target)
                if ours is not None and theirs:
                    ratios.append(theirs / max(ours, 1e-9))
            entry["speedup_to_lbfgs_best"] = statistics.median(ratios) if len(ratios) == len(by_seed) else None
        out[name] = entry
    return out


def plot(results: dict, path: Path) -> None:
    """One panel per problem: the median relative error over the seeds against CPU seconds, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["problems"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, problem in zip(axes[0], names):
        for name, by_seed in results["problems"][problem]["logs"].items():
            times = sorted({e["cpu_s"] for log in by_seed.values() for e in log if e["cpu_s"] > 0})
            median = [statistics.median(error_at(log, t) for log in by_seed.values()) for t in times]
            # (one colour per optimizer in every panel, whichever optimizers a panel has)
            ax.loglog(times, median, label=name, color=f"C{list(OPTIMIZERS).index(name) % 10}")
        ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{problem} (D = {results['problems'][problem]['parameters']})")
        ax.set_xlabel("CPU seconds")
        ax.set_ylabel("relative L2 error of u")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_section(results: dict) -> str:
    """The RESULTS.md section: the published table beside this machine's medians."""
    lines = [
        "## Physics-informed networks against the published optimizers (Dangel, Müller & Zeinhofer, 2024)",
        "",
        "Problems, optimizers and clocks: the docstring of `benchmarks/pinn/run.py`. *Their error* is the published",
        "metric, the root mean square of u_θ − u* over the evaluation points; the targets are on the relative error",
        "(÷ the RMS of u*). Published: one RTX 6000 and their budget; here: this CPU, CPU seconds of one thread, the",
        "median over the seeds. Figure: `results/pinn/pinn.png`.",
        "",
    ]
    for problem, data in results["problems"].items():
        spec = P.PROBLEMS[problem]
        commands = "; ".join(f"`{r['command']}` (commit {r['commit']}, {r['host']}, {r['date']})"
                             for r in data["runs"])
        lines += [f"**{problem}** (D = {data['parameters']}; published budget {spec.published_budget_s:.0f} GPU-s, "
                  f"here {data['budget_s']:.0f} CPU-s; target ≤ {TARGET:g} relative within {spec.target_s:.0f} s; "
                  f"seeds {data['seeds']}). Commands: {commands}.", "",
                  "| optimizer | published error | their error here (best) | relative error (final) | "
                  "median CPU s to 1e-7 relative | steps | × sooner to L-BFGS's best |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        published = {"marquardt": None, "ENGD": spec.published.get("ENGD (full)"), "L-BFGS": spec.published.get(
            "L-BFGS"), "Adam": spec.published.get("Adam")}
        for name, s in data["summary"].items():
            pub = published.get(name)
            seeds = f"{s['seeds_reaching_target']}/{len(data['seeds'])} seeds"
            reach = f"{s['seconds_to_target']:.1f} ({seeds})" if s["seconds_to_target"] is not None else \
                f"not reached ({seeds})"
            speed = s.get("speedup_to_lbfgs_best")
            lines.append(f"| {name} | {f'{pub.error:.1e}' if pub else '-'} | {s['best_error']:.2e} | "
                         f"{s['final_relative_error']:.2e} | {reach} | {s['steps']:.0f} | "
                         f"{_times(speed)} |")
        others = ", ".join(f"{k} {v.error:.1e}" for k, v in spec.published.items() if k in ("KFAC", "Hessian-free"))
        lines += ["", f"Published, not run here: {others}.", ""]
    return "\n".join(lines)


def _times(speed: float | None) -> str:
    """A speed-up for the table: whole numbers from 10 up, two digits below (an optimizer slower than L-BFGS to
    L-BFGS's best shows its fraction, not 0×), '-' when it never got there."""
    if not speed:
        return "-"
    return f"{speed:.0f}×" if speed >= 10 else f"{speed:.2g}×"


def include(results: dict, other: dict, source: Path) -> None:
    """Adds (or replaces) each of ``other``'s optimizers in ``results``, problem by problem, with their runs'
    provenance; a problem must have the same seeds and budget in both."""
    for problem, data in other["problems"].items():
        kept = results["problems"].get(problem)
        if kept is None:
            results["problems"][problem] = data
            continue
        if kept["seeds"] != data["seeds"] or kept["budget_s"] != data["budget_s"]:
            raise SystemExit(f"--include {source}: {problem} has seeds {data['seeds']} and budget {data['budget_s']} "
                             f"there, seeds {kept['seeds']} and budget {kept['budget_s']} here")
        kept["logs"] = {k: v for k, v in kept["logs"].items() if k not in data["logs"]} | data["logs"]
        kept["runs"] = _runs_of(kept["runs"], set(kept["logs"]) - set(data["logs"])) + _runs_of(
            data["runs"], set(data["logs"]))


def _runs_of(runs: list[dict], names: set[str]) -> list[dict]:
    """The runs' provenance, each narrowed to the optimizers in ``names`` (runs left with none dropped)."""
    narrowed = [dict(r, optimizers=[o for o in r["optimizers"] if o in names]) for r in runs]
    return [r for r in narrowed if r["optimizers"]]


def _seed_keys(obj: dict) -> dict:
    """JSON turns the logs' integer seeds into strings; this turns them back."""
    return {int(k) if k.isdigit() else k: v for k, v in obj.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="+", choices=sorted(P.PROBLEMS), default=["poisson2d", "heat1d"])
    p.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--budget", type=float, help="CPU seconds per run (default: the problem's target time)")
    p.add_argument("--quick", action="store_true", help="2 CPU-s per run, seed 1 (a smoke test)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "pinn")
    p.add_argument("--merge", action="store_true", help="keep the other problems of an existing pinn.json")
    p.add_argument("--render", action="store_true", help="only redraw pinn.png and pinn.md from pinn.json")
    p.add_argument("--include", nargs="+", type=Path, default=[],
                   help="with --render: first add the optimizers of these pinn.json files to the same problems (runs "
                        "with the same seeds and budget, made side by side with another --out)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU seconds are one core's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.budget = args.seeds[:1], args.budget or 2.0
    tag = "_quick" if args.quick else ""
    path = args.out / f"pinn{tag}.json"
    results: dict = {"problems": {}}
    if args.include and not args.render:
        p.error("--include: only with --render")
    if args.render:
        results = json.loads(path.read_text(), object_hook=_seed_keys)
        for other in args.include:
            include(results, json.loads(other.read_text(), object_hook=_seed_keys), other)
        args.problems = []
        for data in results["problems"].values():  # (the summaries follow the logs as this code reads them)
            data["logs"] = {k: data["logs"][k] for k in OPTIMIZERS if k in data["logs"]}
            data["summary"] = summarise(data["logs"])
    elif args.merge and path.is_file():
        results = json.loads(path.read_text(), object_hook=_seed_keys)
    provenance = {"optimizers": args.optimizers,
                  "command": "python benchmarks/pinn/run.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                  "commit": git_revision(), "host": machine_description("cpu"), "date": time.strftime("%Y-%m-%d")}
    partial = args.out / f"pinn{tag}.partial.json"
    for problem_name in args.problems:
        problem = P.PROBLEMS[problem_name]
        budget = args.budget or problem.target_s
        logs: dict[str, dict[int, list[dict]]] = {}
        runs = [provenance]
        kept = results["problems"].get(problem_name)
        if kept and kept["seeds"] == args.seeds and kept["budget_s"] == budget:
            # the same seeds and budget: the other optimizers' logs stay beside the new ones
            logs = {k: v for k, v in kept["logs"].items() if k not in args.optimizers}
            runs = _runs_of(kept["runs"], set(logs)) + runs
        for name in args.optimizers:
            logs[name] = {}
            for seed in args.seeds:
                logs[name][seed] = train(problem, name, seed, budget)
                last = logs[name][seed][-1]
                print(f"{problem_name:15s} {name:20s} seed {seed}: {last['steps']:6d} steps, loss {last['loss']:.2e}, "
                      f"relative error {last['relative_error']:.2e} (best "
                      f"{min(e['relative_error'] for e in logs[name][seed]):.2e}) in {last['cpu_s']:.1f} CPU-s",
                      flush=True)
                args.out.mkdir(parents=True, exist_ok=True)  # (what is done so far survives an interrupted run)
                partial.write_text(json.dumps({problem_name: logs}, indent=1))
        logs = {k: logs[k] for k in OPTIMIZERS if k in logs}
        results["problems"][problem_name] = {"parameters": problem.parameters, "budget_s": budget,
                                             "seeds": args.seeds, "runs": runs, "logs": logs,
                                             "summary": summarise(logs)}
    results["problems"] = {k: results["problems"][k] for k in P.PROBLEMS if k in results["problems"]}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    partial.unlink(missing_ok=True)
    plot(results, args.out / f"pinn{tag}.png")
    section = results_section(results)
    (args.out / f"pinn{tag}.md").write_text(section + "\n")
    print(section)
    return results


if __name__ == "__main__":
    main()
