"""Your own piece of the LM iteration: a λ rule written as a class, passed to the optimizer as an instance.

Every decision of an LM step (damping, λ rule, momentum, acceptance, line search, geodesic acceleration) is a
small class behind a base class in ``marquardt.policy``; an option takes a registered name or an instance. This
example writes a λ rule that moves λ by the gain ratio ρ = actual / predicted reduction in three bands (the
classic trust-region rule of Moré 1978), fits the noisy sine MLP with it and with the default rule, and prints
both final losses.

    python examples/custom_policy.py [--steps 40]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import marquardt
from marquardt.policy.lam import LambdaBounds, LambdaRule


class GainBands(LambdaRule):
    """λ ÷ 3 when the model predicted the decrease well (ρ > 0.75), × 2 when poorly (ρ < 0.25), else kept;
    × 4 after a rejected trial."""

    def accepted(self, lam: float, nu: float, gain_ratio: float | None, bounds: LambdaBounds) -> tuple[float, float]:
        rho = 1.0 if gain_ratio is None else gain_ratio
        if rho > 0.75:
            lam /= 3.0
        elif rho < 0.25:
            lam *= 2.0
        return min(max(lam, bounds.minimum), bounds.maximum), nu

    def rejected(self, lam: float, nu: float, bounds: LambdaBounds) -> tuple[float, float]:
        return min(lam * 4.0, bounds.maximum), nu


def sine_problem() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.linspace(-10, 10, 500).unsqueeze(1)
    return x, torch.sin(x) + 0.2 * torch.rand(x.shape, generator=generator)


def train(lambda_rule: str | LambdaRule, steps: int) -> float:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.ELU(), nn.Linear(16, 16), nn.ELU(), nn.Linear(16, 1))
    opt = marquardt.LevenbergMarquardt(model, "mse", lambda_rule=lambda_rule)
    x, y = sine_problem()
    for _ in range(steps):
        info = opt.step(x, y)
    return info.loss_after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    for name, rule in (("default ('delayed')", "delayed"), ("GainBands (this file)", GainBands())):
        print(f"{name:24s} loss after {args.steps} steps: {train(rule, args.steps):.5f}")


if __name__ == "__main__":
    main()
