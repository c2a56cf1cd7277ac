"""A binary classifier with one logit per sample, trained by Levenberg-Marquardt on nn.BCEWithLogitsLoss.

The loss module is taken as it is: its value is what each step reports, and its curvature is the exact
generalized Gauss-Newton one (a single row per sample, √(p(1 − p)) times the logit's gradient). The classes are
imbalanced (about a third of the samples are positive), so the loss weighs positives by ``pos_weight``, as one would for
any PyTorch optimizer.

    python examples/binary_classifier.py [--points 1000] [--iterations 40] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import marquardt


def rings(points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points in the plane, positive inside a ring of radius 1.2 to 1.8 (about a third of them)."""
    g = torch.Generator().manual_seed(seed)
    x = 4.0 * torch.rand(points, 2, generator=g) - 2.0
    radius = x.norm(dim=1, keepdim=True)
    y = ((radius > 1.2) & (radius < 1.8)).float()
    return x, y


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=40, help="LM iterations on the whole training set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    x, y = rings(args.points, args.seed)
    test_x, test_y = rings(2000, args.seed + 1)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    positive_share = float(y.mean())
    loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([(1 - positive_share) / positive_share]))
    opt = marquardt.LevenbergMarquardt(model, loss)
    for iteration in range(1, args.iterations + 1):
        info = opt.step(x, y)  # full batch: a few tens of LM iterations
        if iteration % 10 == 0 or iteration == args.iterations:
            with torch.no_grad():
                accuracy = float(((model(test_x) > 0).float() == test_y).float().mean())
            print(f"iteration {iteration}: loss {info.loss_after:.4f} (the module's value), test accuracy "
                  f"{accuracy:.3f}")
    return {"test_accuracy": accuracy, "positive_share": positive_share}


if __name__ == "__main__":
    main()
