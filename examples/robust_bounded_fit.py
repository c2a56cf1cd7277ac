"""A robust, bounded curve fit with standard errors: a decaying exponential y = a·exp(−k·t) + c measured with a
few gross outliers, a decay rate known to be positive, and an offset known to lie in [0, 0.5].

A plain least-squares fit is pulled off by the outliers; the soft-L1 robust loss (scipy's definition, with
scale f: residuals much larger than f count linearly rather than quadratically) recovers the curve, the bounds
keep every iterate physical, and ``result.standard_errors()`` gives the Gauss-Newton standard errors that
scipy's ``curve_fit`` would report for the same robust fit.

    python examples/robust_bounded_fit.py [--points 80] [--outliers 8] [--seed 0]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

import marquardt

TRUE = {"a": 3.0, "k": 0.8, "c": 0.2}


class Decay(nn.Module):
    def __init__(self, a: float = 1.0, k: float = 0.1, c: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.k = nn.Parameter(torch.tensor(k, dtype=torch.float64))
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(-self.k * t) + self.c


def measurements(points: int, outliers: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples with noise 0.02 and `outliers` of them shifted by +2 to +4."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, 6.0, points, dtype=torch.float64)
    with torch.no_grad():
        y = Decay(**TRUE)(t) + 0.02 * torch.randn(points, generator=g, dtype=torch.float64)
    picked = torch.randperm(points, generator=g)[:outliers]
    y[picked] += 2.0 + 2.0 * torch.rand(outliers, generator=g, dtype=torch.float64)
    return t, y


def fit(t: torch.Tensor, y: torch.Tensor, robust: str | None) -> marquardt.FitResult:
    options: dict[str, Any] = {} if robust is None else {"robust": robust, "robust_scale": 0.05}
    opt = marquardt.LevenbergMarquardt(Decay(), residuals=lambda model, t, y: model(t) - y,
                                       bounds={"k": (0.0, None), "c": (0.0, 0.5)}, **options)
    return marquardt.fit(opt, t, y, max_iterations=200)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=80)
    parser.add_argument("--outliers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t, y = measurements(args.points, args.outliers, args.seed)
    plain, robust = fit(t, y, None), fit(t, y, "soft_l1")
    errors = robust.standard_errors()
    print(f"robust fit: {robust.message} after {robust.iterations} iterations, cost {robust.cost:.4g}")
    print(f"{'parameter':>9} {'true':>7} {'least squares':>14} {'soft_l1':>9} {'std err':>9}")
    out: dict[str, float] = {"converged": float(robust.converged)}
    for name in TRUE:
        print(f"{name:>9} {TRUE[name]:7.3f} {float(plain.x[name]):14.4f} {float(robust.x[name]):9.4f} "
              f"{float(errors[name]):9.4f}")
        out |= {f"{name}_plain": float(plain.x[name]), f"{name}_robust": float(robust.x[name]),
                f"{name}_stderr": float(errors[name])}
    return out


if __name__ == "__main__":
    main()
