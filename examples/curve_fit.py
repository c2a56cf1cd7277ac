"""Nonlinear least squares with marquardt: fit a damped oscillation to noisy samples.

The model is a module whose parameters are the four unknowns of y(t) = a·exp(−b·t)·cos(c·t + d). A residual
callable turns the module's output into residuals, and ``marquardt.fit`` iterates LM until one of MINPACK's
convergence tests (ftol, xtol, gtol) holds. The standard errors come from the result's Gauss-Newton
covariance s²(JᵀJ)⁻¹ at the solution, s² = ‖r‖²/(points − parameters), as scipy's curve_fit computes it.

    python examples/curve_fit.py [--points 200] [--noise 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import marquardt

TRUE = {"a": 2.0, "b": 0.3, "c": 3.0, "d": 0.5}
FIRST_GUESS = {"a": 1.0, "b": 0.1, "c": 2.5, "d": 0.0}  # rough, as a user's would be


class DampedOscillation(nn.Module):
    """y(t) = a·exp(−b·t)·cos(c·t + d), one scalar parameter per unknown."""

    def __init__(self, a: float, b: float, c: float, d: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))
        self.d = nn.Parameter(torch.tensor(d, dtype=torch.float64))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(-self.b * t) * torch.cos(self.c * t + self.d)


def noisy_samples(points: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """t on [0, 10] and y = the true curve + Gaussian noise of standard deviation `noise`."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 10, points, dtype=torch.float64)
    with torch.no_grad():
        y = DampedOscillation(**TRUE)(t) + noise * torch.randn(points, generator=generator, dtype=torch.float64)
    return t, y


def residuals(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return prediction - target


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.05, help="standard deviation of the added noise")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t, y = noisy_samples(args.points, args.noise, args.seed)
    model = DampedOscillation(**FIRST_GUESS)
    optimizer = marquardt.LevenbergMarquardt(model, residuals)
    result = marquardt.fit(optimizer, t, y, max_iterations=200)
    errors = {name: float(e) for name, e in result.standard_errors().items()}  # √diag of s²(JᵀJ)⁻¹

    print(f"converged: {result.converged} ({result.reason}) after {result.iterations} iterations, "
          f"cost ½·Σr² = {result.cost:.4g}")
    print(f"{'parameter':>9} {'true':>8} {'fitted':>10} {'std err':>9}")
    fitted = {}
    for name, p in model.named_parameters():
        fitted[name] = p.item()
        print(f"{name:>9} {TRUE[name]:8.3f} {fitted[name]:10.4f} {errors[name]:9.4f}")
    return {"iterations": result.iterations, "converged": float(result.converged),
            **{f"{k}_fitted": v for k, v in fitted.items()}, **{f"{k}_stderr": v for k, v in errors.items()}}


if __name__ == "__main__":
    main()
