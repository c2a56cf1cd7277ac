"""The validation study behind lambda_min_minibatch: MNIST accuracy on a held-out part of the training set.

    python benchmarks/paper/mnist_lambda_floor.py [--floors none 0.1 1 10] [--iterations 80]

Trains the paper's CNN (ggn) on train[:50000] in batches of 600 and reports the accuracy on train[50000:]
(never the test set) after 4, 10, 20, 40 and 80 iterations, for each λ floor. One thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import marquardt  # noqa: E402
from benchmarks.paper.mnist_data import load  # noqa: E402
from benchmarks.paper.models import paper_cnn  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--floors", nargs="+", default=["none", "0.1", "1", "10"])
    p.add_argument("--iterations", type=int, default=80)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y = load("train", args.data_dir)
    x_train, y_train, x_val, y_val = x[:50000], y[:50000], x[50000:], y[50000:]
    checkpoints = [c for c in (4, 10, 20, 40, 80, 160) if c <= args.iterations]
    print(f"{'λ floor':<10}" + "".join(f"{c:>9}" for c in checkpoints))
    for floor in args.floors:
        value = None if floor == "none" else float(floor)
        model = paper_cnn(0)
        opt = marquardt.LevenbergMarquardt(model, "cross_entropy", lambda_min_minibatch=value)
        perm = torch.randperm(50000, generator=torch.Generator().manual_seed(0))
        row = []
        for it in range(args.iterations):
            start = (it * 600) % 49800
            idx = perm[start : start + 600]
            opt.step(x_train[idx], y_train[idx])
            if it + 1 in checkpoints:
                with torch.no_grad():
                    row.append(float((model(x_val).argmax(1) == y_val).float().mean()))
        print(f"{floor:<10}" + "".join(f"{a:>9.4f}" for a in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
