"""Damping policies against their definitions, on a primal and a dual system (one running-max implementation)."""

from __future__ import annotations

import pytest
import torch

from marquardt.policy.damping import DAMPING, Levenberg, Marquardt, MaxDiagonal, running_max_
from marquardt.solve.dual import DualSystem
from marquardt.solve.primal import PrimalSystem

CPU = torch.device("cpu")


def _systems(J: torch.Tensor, alpha: float):
    n = J.shape[1]
    out = []
    for cls in (PrimalSystem, DualSystem):
        system = cls(n, alpha, J.dtype, CPU)
        system.add(J, torch.zeros(J.shape[0], dtype=J.dtype))
        system.finalize()
        out.append(system)
    return out


@pytest.mark.parametrize("form", [0, 1], ids=["primal", "dual"])
def test_max_diagonal_is_the_running_maximum(form):
    torch.manual_seed(0)
    J = torch.randn(4, 7, dtype=torch.float64)
    system = _systems(J, 0.5)[form]
    diag = 0.5 * (J * J).sum(dim=0)
    d = torch.full((7,), 0.01, dtype=torch.float64)
    d[0] = 100.0  # above the diagonal: kept
    MaxDiagonal(floor=0.0).update(d, system)
    expected = torch.maximum(torch.full((7,), 0.01, dtype=torch.float64), diag)
    expected[0] = 100.0
    torch.testing.assert_close(d, expected, rtol=1e-14, atol=0)
    floor = float(diag.max()) * 2
    MaxDiagonal(floor=floor).update(d, system)
    assert float(d[1:].min()) == floor and float(d[0]) == 100.0


def test_running_max_reads_a_strided_diagonal_without_copying():
    A = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    d = torch.tensor([1.0, 100.0, 1.0, 1.0], dtype=torch.float64)
    running_max_(d, A.diagonal(), floor=2.0)
    assert d.tolist() == [2.0, 100.0, 10.0, 15.0]
    d32 = torch.zeros(3, dtype=torch.float64)
    running_max_(d32, torch.tensor([1.5, float("nan"), -1.0], dtype=torch.float32), floor=0.0)
    assert d32.tolist() == [1.5, 0.0, 0.0]  # a NaN never enters d


def test_levenberg_and_marquardt():
    torch.manual_seed(1)
    J = torch.randn(5, 3, dtype=torch.float64)
    J[:, 2] = 0.0
    primal = _systems(J, 1.0)[0]
    d = torch.full((3,), 7.0, dtype=torch.float64)
    assert Levenberg().update(d, primal).tolist() == [1.0, 1.0, 1.0]
    Marquardt(floor=0.0).update(d, primal)
    torch.testing.assert_close(d[:2], (J[:, :2] ** 2).sum(dim=0))
    assert float(d[2]) == 1e-12  # a vanishing column is floored, never zero
    assert float(Marquardt(floor=0.5).update(d, primal)[2]) == 0.5


class _Settings:
    floor = 0.25


def test_registry():
    assert {"levenberg", "marquardt", "max_diagonal"} <= set(DAMPING.names())
    assert DAMPING.build("max_diagonal", _Settings()).floor == 0.25
    assert isinstance(DAMPING.build("levenberg", _Settings()), Levenberg)
