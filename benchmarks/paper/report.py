"""Aggregates the experiment JSONs into tables (median and IQR over seeds), figures and RESULTS.md.

    python benchmarks/paper/report.py [--mnist results/mnist] [--sine results/sine] [--output RESULTS.md]

Reads what ``mnist.py``, ``sine.py --seeds ...``, ``sine_minpack.py`` and ``benchmarks/pinn/run.py`` wrote; an
experiment that has not been run is left out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TARGET = 0.90
#: The paper's Table 1 (docs/algorithm.md, "The paper's experiments"): time to 90% (s, GPU), "epochs" (= iterations) to 90%, converged,
#: accuracy after "100 epochs" (= 100 iterations).
PAPER_TABLE1 = {
    "LM": (0.9, 4, "yes", 0.975), "K-FAC": (3.0, 26, "yes", 0.96), "Hessian-free": (4.7, 11, "no", 0.94),
    "L-BFGS": (5.6, 17, "yes", 0.91), "Adam": (0.1, 13, "yes", 0.965), "SGD": (0.1, 26, "yes", 0.96),
}
#: The paper's Figure 1b plateaus of the sine training loss (§7.1).
PAPER_FIGURE1 = {"LM (marquardt)": 0.001, "L-BFGS": 0.25, "Hessian-free": 0.25, "K-FAC": 0.5, "Adam": 0.5, "SGD": 0.5}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(median, lower quartile, upper quartile); inf values count as larger than any finite one."""
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]

    def at(q: float) -> float:
        pos = q * (len(v) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        if math.isinf(v[lo]) or math.isinf(v[hi]):
            return v[hi] if pos - lo > 0 else v[lo]
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return at(0.5), at(0.25), at(0.75)


def fmt(values: list[float], spec: str = ".3f", scale: float = 1.0, inf_text: str = "never") -> str:
    """Median [lower quartile, upper quartile]; NaN (a diverged run) counts as inf and prints as inf_text."""
    if not values:
        return "-"
    med, lo, hi = quartiles([math.inf if v != v else v * scale for v in values])
    show = lambda x: inf_text if math.isinf(x) else format(x, spec)  # noqa: E731
    return show(med) if len(values) == 1 else f"{show(med)} [{show(lo)}, {show(hi)}]"


def load_runs(directory: Path) -> dict[str, list[dict]]:
    """Optimizer -> its runs (one per seed), LM configurations first, then in the tables' order."""
    from benchmarks.paper.mnist import TABLE1

    runs: dict[str, list[dict]] = {}
    for path in sorted(directory.glob("*.json")):
        run = json.loads(path.read_text())
        runs.setdefault(run["optimizer"], []).append(run)
    rank = {name: i for i, name in enumerate(TABLE1)}
    return dict(sorted(runs.items(), key=lambda kv: (rank.get(kv[0], -1), list(runs).index(kv[0]))))


def first_reach(run: dict, target: float = TARGET) -> tuple[float, float]:
    """(iterations, step seconds) to the first evaluation at or above the target; (inf, inf) if never."""
    for it, seconds, acc, _ in run["evals"]:
        if acc >= target:
            return float(it), float(seconds)
    return math.inf, math.inf


def accuracy_at(run: dict, iteration: int) -> float | None:
    for it, _, acc, _ in run["evals"]:
        if it == iteration:
            return acc
    return None


def mnist_table(runs: dict[str, list[dict]], checkpoint: int = 100) -> list[str]:
    header = ("| optimizer | seeds | time to 90% (CPU s) | iterations to 90% | epochs to 90% | reached 90% | "
              f"accuracy after {checkpoint} it | final accuracy (it) |")
    lines = [header, "|" + "---|" * 8]
    for name, rs in runs.items():
        reach = [first_reach(r) for r in rs]
        epochs = [it * r["batch"] / r["n_train"] for (it, _), r in zip(reach, rs)]
        at = [a for a in (accuracy_at(r, checkpoint) for r in rs) if a is not None]
        final = [r["evals"][-1][2] for r in rs if r["evals"]]
        iters = sorted({r["evals"][-1][0] for r in rs if r["evals"]})
        lines.append(
            f"| {name} | {len(rs)} | {fmt([s for _, s in reach], '.2f')} | {fmt([i for i, _ in reach], '.0f')} | "
            f"{fmt(epochs, '.2f')} | {sum(math.isfinite(i) for i, _ in reach)}/{len(rs)} | "
            f"{fmt(at, '.4f')} | {fmt(final, '.4f')} ({'/'.join(map(str, iters))}) |"
        )
    return lines


def target_lines(table1: dict[str, list[dict]], epochs: dict[str, list[dict]]) -> list[str]:
    """The paper-experiments issue's MNIST targets, checked on the medians over seeds, for each LM configuration."""
    lines = ["| configuration | 90% within 4 iterations | ≥ 97.5% after 100 iterations | ≥ 98.0% after 5 epochs | "
             "time to 90% ≤ Adam's |", "|---|---|---|---|---|"]
    adam = [first_reach(r)[1] for r in table1.get("Adam", [])]
    adam_time = quartiles(adam)[0] if adam else math.nan

    def verdict(ok: bool | None, text: str) -> str:
        return f"{text} ({'met' if ok else 'missed'})" if ok is not None else "not run"

    for name in (n for n in table1 if n.startswith("LM (ggn")):
        rs = table1[name]
        its, secs = zip(*(first_reach(r) for r in rs))
        it_med, t_med = quartiles(list(its))[0], quartiles(list(secs))[0]
        at100 = [a for a in (accuracy_at(r, 100) for r in rs) if a is not None]
        acc_med = quartiles(at100)[0] if at100 else None
        final = [r["evals"][-1][2] for r in epochs.get(name, []) if r["evals"] and r["evals"][-1][0] >= 500]
        ep_med = quartiles(final)[0] if final else None
        lines.append(
            f"| {name} | {verdict(it_med <= 4, f'median {it_med:.0f}')} | "
            f"{verdict(acc_med >= 0.975 if acc_med is not None else None, f'{acc_med:.4f}' if acc_med else '-')} | "
            f"{verdict(ep_med >= 0.98 if ep_med is not None else None, f'{ep_med:.4f}' if ep_med else '-')} | "
            f"{verdict(math.isfinite(t_med) and t_med <= adam_time if adam else None, f'{t_med:.2f} s vs {adam_time:.2f} s')} |"
        )
    return lines


def paper_table1() -> list[str]:
    lines = ["| optimizer (paper, GPU) | time to 90% (s) | \"epochs\" (= iterations) to 90% | converged | accuracy after 100 it |",
             "|---|---:|---:|---|---:|"]
    for name, (t, it, conv, acc) in PAPER_TABLE1.items():
        lines.append(f"| {name} | {t} | {it} | {conv} | {acc:.3f} |")
    return lines


def median_curve(rs: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Iteration -> median over seeds of the test accuracy ('acc') or the mini-batch loss ('loss')."""
    if key == "loss":
        length = min(len(r["batch_loss"]) for r in rs)
        return list(range(1, length + 1)), [statistics.median(r["batch_loss"][i] for r in rs) for i in range(length)]
    common = set.intersection(*({e[0] for e in r["evals"]} for r in rs))
    its = sorted(common)
    table = [{e[0]: e[2] for e in r["evals"]} for r in rs]
    return its, [statistics.median(t[i] for t in table) for i in its]


def plot_mnist(runs: dict[str, list[dict]], path: Path, title: str, log_loss: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rs in runs.items():
        its, loss = median_curve(rs, "loss")
        ax_loss.plot(its, loss, label=name)
        its, acc = median_curve(rs, "acc")
        ax_acc.plot(its, acc, marker=".", label=name)
    ax_loss.set(xlabel="iteration (mini-batch)", ylabel="mini-batch loss (median over seeds)", title=title)
    if log_loss:
        ax_loss.set_yscale("log")
    ax_acc.set(xlabel="iteration (mini-batch)", ylabel="test accuracy (median over seeds)", ylim=(0.5, 1.0))
    ax_acc.axhline(TARGET, color="k", ls=":", lw=0.8)
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


HOST = "AMD EPYC (Zen 5, CPU family 26), 2 cores, torch 2.13.0+cpu, one thread per run"


def recorded(paths: list[Path]) -> str:
    """The commit that last recorded each optimizer's run files (the code measured is that commit's tree), grouped
    by commit, from git; empty outside a git checkout."""
    by_name: dict[str, list[str]] = {}
    for path in paths:
        by_name.setdefault(json.loads(path.read_text()).get("optimizer", path.stem), []).append(str(path))
    groups: dict[str, list[str]] = {}
    for name, files in by_name.items():
        try:
            stamp = subprocess.run(["git", "log", "-1", "--format=%h (%ad)", "--date=short", "--", *files],
                                   capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
        if stamp:
            groups.setdefault(stamp, []).append(name)
    if not groups:
        return ""
    parts = [f"{stamp}: {', '.join(names)}" for stamp, names in sorted(groups.items())]
    return f"Recorded on {HOST}, at commits " + "; ".join(parts) + "."


def sine_section(directory: Path, plot: bool = True) -> list[str]:
    lines = []
    for path in sorted(directory.glob("sine_*_seeds.json")):
        data = json.loads(path.read_text())
        for key, protocol in (("runs", data["protocol"]), ("iteration_matched", "iteration-matched")):
            lines += [f"### {data['title']}: {len(data['seeds'])} seeds, LM {data['lm_iterations']} iterations, "
                      f"the others {protocol}", "",
                      "| optimizer | iterations | final MSE | best MSE | CPU s to the noise floor | reached the floor | "
                      "paper's plateau |", "|---|---|---|---|---|---|---:|"]
            for name, rs in data[key].items():
                floor = [r["seconds_to_floor"] if r["seconds_to_floor"] is not None else math.inf for r in rs]
                paper = PAPER_FIGURE1.get(name)
                lines.append(
                    f"| {name} | {fmt([r['iterations'] for r in rs], '.0f')} | "
                    f"{fmt([r['final_mse'] for r in rs], '.3e', inf_text='diverged')} | "
                    f"{fmt([r['best_mse'] for r in rs], '.3e', inf_text='diverged')} | {fmt(floor, '.2f')} | "
                    f"{sum(math.isfinite(f) for f in floor)}/{len(rs)} | {paper if paper is not None else '-'} |")
            lines.append("")
        lines += [f"Noise variance {data['noise_variance']:.3e} (the floor of the training MSE; \"reached\" means "
                  f"≤ 1.1 × that). Figures 1a, 1b and 3: `{data['figure']}`. " + recorded([path]), ""]
        lines += sine_target_lines(data)
    minpack = sorted(directory.glob("minpack_*.json"))
    if minpack:
        # imports torch and marquardt
        from benchmarks.paper.sine_minpack import comparison_lines, figure_path, plot_comparison

        lines += ["### Our LM against MINPACK's LM (scipy), per iteration", ""]
        for path in minpack:
            record = json.loads(path.read_text())
            figure = figure_path(record, directory)
            if plot:
                plot_comparison(record, figure)
            lines += comparison_lines(record)[:-1] + [f"Figure: `{figure}`.", ""]
    return lines


def _first_reach_of_level(curve: list, level: float) -> tuple[float, float]:
    """(iterations, CPU s) until the MSE first drops to ``level`` along a run's (seconds, mse) curve."""
    return next(((i + 1, t) for i, (t, mse) in enumerate(curve) if mse <= level), (math.inf, math.inf))


def sine_target_lines(data: dict, within: float = 0.01, lm_iterations: int = 30) -> list[str]:
    """The paper-experiments issue's sine target, per seed then as medians: the training MSE within ``within``
    of the best value any optimizer reaches (over both protocols' runs), within ``lm_iterations`` LM
    iterations, and sooner in CPU time than every baseline."""
    lm_name = "LM (marquardt)"
    names = list(data["runs"])
    per_seed = {"lm_its": [], "lm_excess": [], **{n: [] for n in names}}
    for k in range(len(data["seeds"])):
        runs = {n: [data[key][n][k] for key in ("runs", "iteration_matched") if n in data[key]] for n in names}
        best = min(r["best_mse"] for rs in runs.values() for r in rs if r["best_mse"] == r["best_mse"])  # NaN: diverged
        level = best * (1 + within)
        lm_curve = runs[lm_name][0]["curve"]
        per_seed["lm_its"].append(_first_reach_of_level(lm_curve, level)[0])
        at = lm_curve[min(lm_iterations, len(lm_curve)) - 1][1]
        per_seed["lm_excess"].append(at / best - 1)
        for n in names:
            per_seed[n].append(min(_first_reach_of_level(r["curve"], level)[1] for r in runs[n]))
    lm_time = quartiles(per_seed[lm_name])[0]
    beaten = [n for n in names if n != lm_name and math.isfinite(t := quartiles(per_seed[n])[0]) and t <= lm_time]
    its = quartiles(per_seed["lm_its"])[0]
    reached = f"{its:.0f}" if math.isfinite(its) else f"not within its {len(lm_curve)}"
    if not math.isfinite(lm_time):
        first = "missed (LM does not get there)"
    else:
        first = "missed: " + ", ".join(beaten) + " no later" if beaten else "met (LM first)"
    return [
        f"Sine target: within {within:.0%} of the best training MSE any optimizer reaches (over both protocols' "
        f"runs), within {lm_iterations} LM iterations, and before every baseline in CPU time (medians over seeds):",
        "",
        "| part | measured | verdict |",
        "|---|---|---|",
        f"| LM iterations to that level | {reached} | {'met' if its <= lm_iterations else 'missed'} |",
        f"| LM's MSE after {lm_iterations} iterations | {quartiles(per_seed['lm_excess'])[0]:.1%} above the best | - |",
        "| CPU s to that level | " + ", ".join(f"{n} {fmt(per_seed[n], '.2f')}" for n in names) + f" | {first} |",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist", type=Path, default=Path("results/mnist"))
    p.add_argument("--sine", type=Path, default=Path("results/sine"))
    p.add_argument("--pinn", type=Path, default=Path("results/pinn/pinn.json"))
    p.add_argument("--output", type=Path, default=Path("RESULTS.md"))
    p.add_argument("--check", action="store_true", help="exit 1 if --output is not what this would write (no "
                   "figures are drawn)")
    args = p.parse_args(argv)
    out = ["# Results: the paper's experiments, reproduced", "",
           "Generated by `python benchmarks/paper/report.py` from the JSON runs under `results/`. Every figure is the",
           "median over seeds with the interquartile range in brackets; times are CPU seconds of the optimizer steps",
           "on one thread of this machine (evaluation excluded), so they compare optimizers with each other, not",
           "with the paper's GPU seconds.", ""]
    sections = [("table1", "MNIST CNN, Table 1 (batch 600, 100 iterations = 1 epoch)", "figure2.png", True),
                ("swapped", "MNIST CNN, train and test swapped (Figure 4: train on the 10k test images, batch 512, "
                 "evaluate on training images)", "figure4.png", True),
                ("ablation", "MNIST CNN, ablation (Figure 5)", "figure5.png", True),
                ("epochs", "MNIST CNN, full epochs", "epochs.png", False)]
    for key, title, figure, _ in sections:
        directory = args.mnist / key
        runs = load_runs(directory) if directory.is_dir() else {}
        if not runs:
            continue
        checkpoint = 100 if key != "swapped" else min(len(r["step_seconds"]) for rs in runs.values() for r in rs)
        first = next(iter(runs.values()))[0]
        setup = (f"Training set {first['n_train']} images in batches of {first['batch']}; accuracy on "
                 f"{first['n_eval']} evaluation images; seeds {sorted({r['seed'] for rs in runs.values() for r in rs})}.")
        provenance = recorded(sorted(directory.glob("*.json")))
        out += [f"## {title}", "", setup + (" " + provenance if provenance else ""), ""]
        out += mnist_table(runs, checkpoint) + [""]
        if key == "table1":
            out += ["The paper's Table 1 (its \"epochs\" are iterations, docs/algorithm.md, \"The paper's experiments\"):", ""] + paper_table1() + [""]
            epochs_dir = args.mnist / "epochs"
            out += ["Targets (medians over seeds):", ""]
            out += target_lines(runs, load_runs(epochs_dir) if epochs_dir.is_dir() else {}) + [""]
        if not args.check:
            plot_mnist(runs, args.mnist / figure, title.split(" (")[0])
        out += [f"Figure: `{(args.mnist / figure).as_posix()}`", ""]
    if args.sine.is_dir():
        sine = sine_section(args.sine, plot=not args.check)
        if sine:
            out += ["## Noisy sine (Figure 1)", ""] + sine
    if args.pinn.is_file():  # (written by benchmarks/pinn/run.py, which draws its own figure)
        from benchmarks.pinn.run import results_section

        out += [results_section(json.loads(args.pinn.read_text())), ""]
    notes = args.mnist.parent / "notes.md"  # hand-written reading of the numbers, kept beside the runs
    if notes.is_file():
        out += [notes.read_text().rstrip(), ""]
    text = "\n".join(out) + "\n"
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is not what the runs give: run python benchmarks/paper/report.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
