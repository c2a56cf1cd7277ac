"""The paper's networks (docs/algorithm.md, "The paper's experiments"), built from a seed so every optimizer starts from the same weights."""

from __future__ import annotations

import torch
from torch import nn


def paper_cnn(seed: int = 0) -> nn.Module:
    """Conv(1,4,5)-RReLU-MaxPool-Conv(4,8,5)-RReLU-MaxPool-Linear(128,10): 2202 parameters (the authors' CNN)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 5), nn.RReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 5), nn.RReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 10),
    )


def mnist_cnn(size: str = "100k", seed: int = 0) -> nn.Module:
    """Larger MNIST CNNs (ReLU): "100k" (118,346 parameters) and "1m" (1,111,946 parameters)."""
    torch.manual_seed(seed)
    c1, c2, hidden = {"100k": (32, 64, 64), "1m": (32, 64, 1024)}[size]
    return nn.Sequential(
        nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )


def mnist_mlp(size: str = "100k", seed: int = 0) -> nn.Module:
    """MNIST MLPs (ReLU): '100k' (784-128-64-10, 109,386 parameters) and '1m' (784-1024-256-10, 1,068,810)."""
    torch.manual_seed(seed)
    h1, h2 = {"100k": (128, 64), "1m": (1024, 256)}[size]
    return nn.Sequential(nn.Flatten(), nn.Linear(784, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 10))
