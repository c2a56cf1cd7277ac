"""Batches of any structure: step((x1, x2), y) calls model(x1, x2), step({"a": x1}, y) calls model(a=x1), and a
residual callable's targets may be a tuple or dict. Each gives exactly the steps of the same model on one
concatenated input, with every engine and solver."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from marquardt import LevenbergMarquardt


class TwoInputs(nn.Module):
    """f(x1, x2) = net([x1, x2]): the same function as Concatenated.net on cat([x1, x2])."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()

    def forward(self, x1, x2):
        return self.net(torch.cat([x1, x2], dim=1))


class Keywords(TwoInputs):
    def forward(self, *, position, velocity):  # keyword-only: called as model(**inputs)
        return super().forward(position, velocity)


def _data(n: int = 24):
    torch.manual_seed(1)
    x1, x2 = torch.randn(n, 1, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64)
    return x1, x2, torch.randn(n, 2, dtype=torch.float64)


OPTIONS = [dict(), dict(engine="functorch"), dict(engine="full"), dict(solver="dual"),
           dict(solver="block_diagonal"), dict(memory_budget=60_000), dict(curvature_samples=8, geodesic=False),
           dict(geodesic=True)]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", ["tuple", "list", "dict"])
def test_structured_inputs_step_like_one_concatenated_input(kind, options):
    x1, x2, y = _data()
    model = Keywords() if kind == "dict" else TwoInputs()
    plain = copy.deepcopy(model.net)
    inputs = {"tuple": (x1, x2), "list": [x1, x2], "dict": {"position": x1, "velocity": x2}}[kind]
    structured = LevenbergMarquardt(model, "mse", **options)
    reference = LevenbergMarquardt(plain, "mse", **options)
    for _ in range(3):
        a = structured.step(inputs, y)
        b = reference.step(torch.cat([x1, x2], dim=1), y)
        assert a.reason == b.reason
        assert (a.loss_before, a.loss_after, a.lam) == pytest.approx((b.loss_before, b.loss_after, b.lam), rel=1e-12)
    for p, q in zip(model.net.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_a_residual_callable_takes_structured_targets():
    x1, x2, y = _data()
    w = torch.linspace(0.5, 2.0, 24, dtype=torch.float64).unsqueeze(1)
    model = TwoInputs()
    plain = copy.deepcopy(model.net)
    structured = LevenbergMarquardt(model, lambda z, t: (z - t["y"]) * t["scale"])
    reference = LevenbergMarquardt(plain, lambda z, t: (z - t[:, :2]) * t[:, 2:])
    for _ in range(3):
        a = structured.step((x1, x2), {"y": y, "scale": w})
        b = reference.step(torch.cat([x1, x2], dim=1), torch.cat([y, w], dim=1))
        assert a.loss_after == pytest.approx(b.loss_after, rel=1e-12)


@pytest.mark.parametrize("inputs,targets,error,message", [
    (lambda x1, x2: (x1, x2[:5]), None, ValueError, r"inputs\[1\]: batch size 5 does not match inputs' batch size 24"),
    (lambda x1, x2: (x1, x2), lambda y: y[:5], ValueError, "targets: batch size 5 does not match inputs' batch "
                                                           "size 24"),
    (lambda x1, x2: (x1, "fast"), None, TypeError, r"inputs\[1\]: expected a torch.Tensor, got str"),
    (lambda x1, x2: (), None, ValueError, "inputs: expected at least one tensor, got an empty tuple"),
    (lambda x1, x2: (x1, x2.float()), None, ValueError, r"inputs\[1\]: dtype torch.float32 does not match"),
    (lambda x1, x2: {"position": x1, "velocity": x2.clone().fill_(float("nan"))}, None, ValueError,
     r"inputs\['velocity'\]: contains NaN or Inf"),
    (lambda x1, x2: (x1, x2), lambda y: (y, y), TypeError, "targets: expected a torch.Tensor, got tuple"),
    (lambda x1, x2: 3.0, None, TypeError, r"inputs: expected a torch.Tensor \[N, ...\] \(or a tuple, list or dict "
                                          r"of them\), got float"),
])
def test_bad_structured_batches_are_refused_by_name(inputs, targets, error, message):
    x1, x2, y = _data()
    model = TwoInputs()
    before = copy.deepcopy(model.state_dict())
    opt = LevenbergMarquardt(model, "mse")
    with pytest.raises(error, match=message):
        opt.step(inputs(x1, x2), y if targets is None else targets(y))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and not opt.state_dict()["state"]


def test_a_new_structured_batch_counts_as_a_new_batch():
    x1, x2, y = _data()
    opt = LevenbergMarquardt(TwoInputs(), "mse", lambda_min_minibatch=0.5, lambda_init=1e-3)
    opt.step((x1, x2), y)
    assert not opt.state_dict()["state"][0]["minibatch"]
    opt.step((x1, x2), y)  # the same tensors again: full-batch training
    assert not opt.state_dict()["state"][0]["minibatch"]
    assert opt.step((x1, x2 + 1.0), y).lam >= 0.5 and opt.state_dict()["state"][0]["minibatch"]
