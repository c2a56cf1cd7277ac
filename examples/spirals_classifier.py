"""Mini-batch classification with marquardt: two interleaved spirals, an MLP and cross-entropy.

Shows the training loop a PyTorch user writes: a DataLoader, one ``optimizer.step(inputs, targets)`` per
batch (LM needs the batch itself, not a closure), the exact generalized Gauss-Newton curvature of softmax
cross-entropy (``curvature="ef"`` would be the paper's empirical Fisher), evaluation on held-out points,
and a checkpoint of the model and the optimizer (λ, the damping vector and the momentum state) that resumes
training where it stopped.

    python examples/spirals_classifier.py [--epochs 8] [--batch-size 250] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import marquardt


def two_spirals(points_per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on two spirals, 1.5 turns each, with a little noise; labels 0 and 1."""
    angle = torch.rand(points_per_class, generator=generator) * 3 * math.pi
    radius = angle / (3 * math.pi)
    arm = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    x = torch.cat([arm, -arm]) + 0.02 * torch.randn(2 * points_per_class, 2, generator=generator)
    y = torch.cat([torch.zeros(points_per_class), torch.ones(points_per_class)]).long()
    return x, y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--points", type=int, default=1000, help="training points per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    x_train, y_train = two_spirals(args.points, generator)
    x_test, y_test = two_spirals(1000, generator)
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
    optimizer = marquardt.LevenbergMarquardt(model, "cross_entropy")
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True,
                        generator=generator)

    half = args.epochs // 2
    checkpoint = io.BytesIO()
    for epoch in range(args.epochs):
        if epoch == half and half > 0:
            # Save, rebuild both objects from scratch and resume: what a job that was stopped does.
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
            checkpoint.seek(0)
            state = torch.load(checkpoint, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer = marquardt.LevenbergMarquardt(model, "cross_entropy")
            optimizer.load_state_dict(state["optimizer"])
            lm_state = optimizer.state_dict()["state"][0]  # global LM state lives with the first parameter
            print(f"checkpoint restored after {lm_state['step']} steps, λ = {lm_state['lam']:.3g}")
        for inputs, targets in loader:
            info = optimizer.step(inputs, targets)
        print(f"epoch {epoch + 1}: last batch loss {info.loss_after:.4f} ({info.reason}, λ = {info.lam:.3g}), "
              f"test accuracy {accuracy(model, x_test, y_test):.3f}")
    result = {"train_accuracy": accuracy(model, x_train, y_train), "test_accuracy": accuracy(model, x_test, y_test)}
    print(f"final: train accuracy {result['train_accuracy']:.3f}, test accuracy {result['test_accuracy']:.3f}")
    return result


if __name__ == "__main__":
    main()
