"""The paper's networks (ALGORITHM.md §7.2), built from a seed so every optimizer starts from the same weights."""

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
