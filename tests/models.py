"""Models and data shared by the tests (one place, so that test files do not import each other)."""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_data(n: int = 1000, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's noisy sine: x on [-10, 10], y = sin x + U(0, 0.2) noise (variance 0.0033)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-10, 10, n).unsqueeze(1)
    y = torch.sin(x) + 0.2 * torch.rand(x.shape, generator=g)
    return x.to(dtype), y.to(dtype)


def sine_mlp(width: int = 20, seed: int = 0) -> nn.Sequential:
    """1-w-w-1 ELU MLP, the paper's sine network."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, width), nn.ELU(), nn.Linear(width, width), nn.ELU(), nn.Linear(width, 1))


def paper_cnn(seed: int = 0) -> nn.Sequential:
    """The paper's MNIST CNN (two convolutions with RReLU, one Linear)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 5), nn.RReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 5), nn.RReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 10),
    )


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    """A small RReLU CNN on 8 × 8 images with 3 classes (stochastic layers, convolutions, 185 parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.RReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 3))


def spirals(n: int = 120, classes: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Interleaved 2-d spirals: inputs [n, 2] and class indices [n]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    radius = torch.linspace(0.1, 1.0, n)
    angle = 4.0 * radius + labels * (2 * math.pi / classes) + 0.2 * torch.randn(n, generator=g)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return x.to(dtype), labels


def classifier_mlp(inputs: int = 2, width: int = 12, classes: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, width), nn.Tanh(), nn.Linear(width, classes))


class Exponential(nn.Module):
    """y(t) = a·exp(−b·t) + c: three scalar parameters (the tiny curve fit of the overhead benchmark)."""

    def __init__(self, a: float = 1.0, b: float = 0.5, c: float = 0.0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=dtype))
        self.b = nn.Parameter(torch.tensor(b, dtype=dtype))
        self.c = nn.Parameter(torch.tensor(c, dtype=dtype))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(-self.b * t) + self.c


def exponential_data(points: int = 100, seed: int = 0, dtype: torch.dtype = torch.float64):
    """t on [0, 4] and y = 2.5 exp(−1.3 t) + 0.5 + 0.01 N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 4, points, dtype=dtype)
    y = 2.5 * torch.exp(-1.3 * t) + 0.5 + 0.01 * torch.randn(points, generator=g, dtype=dtype)
    return t, y


def residuals(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return prediction - target
