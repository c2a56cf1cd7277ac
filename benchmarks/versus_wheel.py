"""One LM iteration of this installation's marquardt against another installation's (e.g. the wheel of an
earlier commit), in interleaved rounds of the same run: the speed check of a refactoring.

    python benchmarks/versus_wheel.py --baseline-python /path/to/other/venv/bin/python [--rounds 5] [--check]

Each round runs the per-iteration case (the 1-64-64-1 sine MLP, 1,000 and 10,000 rows, default settings, one
thread) once in a fresh process of each interpreter, new and baseline in turn; a process reports the median of
its steps after a warm-up. The figure is the median over rounds of new/baseline. ``--check`` exits 1 when new
is more than 5% slower (ratio > 1.05) on any case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1.05

#: the timed code, run by each interpreter (both import the benchmark's model and data from this checkout)
CHILD = r"""
import json, statistics, sys, time, torch
sys.path.insert(0, {root!r})
import marquardt
from benchmarks.paper.sine import mlp, sine_data
torch.set_num_threads(1)
rows, repeats = {rows}, {repeats}
x, y = sine_data(rows)
opt = marquardt.LevenbergMarquardt(mlp(64), "mse")
opt.step(x, y)
times = []
for _ in range(repeats):
    start = time.process_time()
    opt.step(x, y)
    times.append(time.process_time() - start)
print(json.dumps({{"seconds": statistics.median(times), "file": marquardt.__file__}}))
"""


def run(python: str, rows: int, repeats: int) -> dict:
    code = CHILD.format(root=str(ROOT), rows=rows, repeats=repeats)
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd="/tmp").stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-python", required=True)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.timing import machine_description

    print(machine_description("cpu"), "- the timed processes run 1 torch thread")
    ok = True
    for rows, repeats in ((1000, 7), (10000, 3)):
        new, old, ratios = [], [], []
        for _ in range(args.rounds):
            a, b = run(args.python, rows, repeats), run(args.baseline_python, rows, repeats)
            new.append(a["seconds"])
            old.append(b["seconds"])
            ratios.append(a["seconds"] / b["seconds"])
        ratio = statistics.median(ratios)
        print(f"per-iteration {rows:>6} rows: new {statistics.median(new) * 1e3:8.1f} ms ({a['file']})\n"
              f"{'':>26}baseline {statistics.median(old) * 1e3:8.1f} ms ({b['file']})\n"
              f"{'':>26}new/baseline {ratio:.3f} (median of {args.rounds} rounds; per round {', '.join(f'{r:.3f}' for r in ratios)})")
        if args.check and ratio > TOLERANCE:
            print(f"FAIL: {rows} rows: new/baseline {ratio:.3f} > {TOLERANCE}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
