"""The fixed cost of a tiny fit's LM iteration at two commits, side by side on one host.

    python benchmarks/overhead_versus_commit.py BASE [HEAD] [--rounds 5]

Each commit's ``python/`` and ``tests/`` trees are unpacked with ``git archive`` and given the compiled extension
of the installed package (the native ops are the same at both commits; only the Python changes are compared).
Each round runs each tree in a fresh process, alternately; a process reports the median of 40 fits of
``benchmarks/overhead_bench.py``'s problem (3 parameters, 100 points, 10 iterations each) with the default options
and with ``momentum=None``, and of 40 whole fits at ``fit``'s default tolerances (with the polish); the figures
are medians over rounds, in ms per iteration and ms per fit.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, statistics, time
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]  # (the tree, not the install)
sys.path[:0] = [ROOT + "/python", ROOT]
import torch, marquardt
assert marquardt.__file__.startswith(ROOT), marquardt.__file__
from tests.models import Exponential, exponential_data, residuals
torch.set_num_threads(1)
t, y = exponential_data(100)
def ms_per_iteration(**options):
    opt = marquardt.LevenbergMarquardt(Exponential(), residuals, **options)
    start = time.perf_counter()
    marquardt.fit(opt, t, y, max_iterations=10, ftol=0.0, xtol=0.0, gtol=0.0)
    return (time.perf_counter() - start) / 10 * 1e3
def ms_whole_fit():
    opt = marquardt.LevenbergMarquardt(Exponential(), residuals)
    start = time.perf_counter()
    marquardt.fit(opt, t, y)
    return (time.perf_counter() - start) * 1e3
ms_per_iteration(); ms_per_iteration(momentum=None); ms_whole_fit()
print(statistics.median(ms_per_iteration() for _ in range(40)),
      statistics.median(ms_per_iteration(momentum=None) for _ in range(40)),
      statistics.median(ms_whole_fit() for _ in range(40)))
"""


def unpack(commit: str, into: Path) -> Path:
    """The commit's python/ and tests/ with the installed package's compiled extension and build record."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit, "python", "tests"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    installed = Path(importlib.import_module("marquardt._C").__file__).parent
    for built in [*installed.glob("_C*.so"), installed / "_build_info.py"]:
        shutil.copy(built, into / "python" / "marquardt" / built.name)
    return into


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("head", nargs="?", default="HEAD")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        trees = {}
        for label, commit in (("base", args.base), ("head", args.head)):
            trees[label] = unpack(commit, Path(scratch) / label)
        results: dict[str, list[list[float]]] = {label: [] for label in trees}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                done = subprocess.run([sys.executable, "-c", f"ROOT = {str(tree)!r}\n" + CHILD], capture_output=True,
                                      text=True, cwd=scratch, check=True)
                results[label].append([float(v) for v in done.stdout.split()])
    for label, commit in (("base", args.base), ("head", args.head)):
        rows = results[label]
        print(f"{commit:>10}: default {statistics.median(r[0] for r in rows):.3f} ms per iteration, momentum=None "
              f"{statistics.median(r[1] for r in rows):.3f} ms (rounds: {', '.join(f'{r[0]:.3f}' for r in rows)}); "
              f"the whole fit at fit's default tolerances {statistics.median(r[2] for r in rows):.2f} ms "
              f"(rounds: {', '.join(f'{r[2]:.2f}' for r in rows)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
