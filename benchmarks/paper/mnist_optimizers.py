"""The optimizers of the MNIST experiments, each as ``make(model, lr) -> step(x, y) -> batch loss``.

Learning rates default to the paper's App. B values for full MNIST (docs/algorithm.md, "The paper's experiments": SGD 0.1 with
momentum 0.9 and weight decay 5e-4, Adam 0.05, L-BFGS 0.005, HF 0.1, K-FAC 1); ``SWEEPS`` holds the small grid of
the learning-rate sweep (the paper's protocol is "best hyper-parameters per optimizer"), which
``mnist.py sweep`` runs on a validation split of the training set.

L-BFGS is ``torch.optim.LBFGS`` with its default ``max_iter=20``: one iteration is up to 20 inner L-BFGS
iterations on the same mini-batch, as in the authors' code (docs/algorithm.md, "The paper's experiments").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import marquardt
from marquardt.baselines import KFAC, HessianFree

Step = Callable[[torch.Tensor, torch.Tensor], float]

SCHEDULED = "LM (ggn, curvature 1/4 then all from it 10)"

#: Our optimizer's configurations: name -> (preset, options).
LM_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "LM (ggn)": ("default", {}),
    # Curvature from a quarter of the batch (150 of 600 samples: 1350 rows with the rank-9 factor, 1500 before;
    # the dual form), gradient from all of it. On the validation split (commit 2386184, 10 rows per sample): 60
    # samples took 0.11 s/it but ~10 iterations to 90%, 150 took 0.22 s/it and 3-4 iterations, the whole batch
    # 0.81 s/it and 4 (a quarter also suits the sine task, BENCHMARKS.md).
    "LM (ggn, curvature on 1/4)": ("default", {"curvature_samples": 0.25}),
    # 100 of 600 samples (900 rows with the rank-9 factor). Chosen for time to 90% on the validation split
    # (train[:50000] / train[50000:], seeds 0-2, commit 2386184): 60 samples 7 [6, 9] iterations at 0.12 s/it,
    # 100 samples 5 [5, 10] at 0.14 s/it, 150 samples 5 [4, 6] at 0.22 s/it; all three ~97.3-97.5% after 100.
    "LM (ggn, curvature on 1/6)": ("default", {"curvature_samples": 100}),
    # A schedule: curvature from a quarter of the batch for the first 10 iterations (the fast start of 1/4),
    # then from all of it (the exact GGN's accuracy later on). Chosen on the validation split (train[:50000] /
    # train[50000:], seeds 0-2, commit e64b790; `mnist.py validation`), accuracy after 100 iterations, median:
    # whole batch 97.66%, 1/4 97.53%, 1/4 then all from 10 97.66%, from 20 97.59%, 1/4 then 1/2 from 10
    # 97.40%; 90% after 4-6 iterations (0.75-1.22 s) as with 1/4 alone (0.90-1.17 s), whole batch 4 (2.9-3.2 s).
    SCHEDULED: ("default", {"curvature_samples": {0: 0.25, 10: None}}),
    "LM (ef)": ("default", {"curvature": "ef"}),
    "LM paper preset (ef)": ("paper", {"curvature": "ef"}),
}

#: Figure 5: the ablation of the paper (line search, momentum, uphill steps, vanilla), on both curvatures.
ABLATION: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("default", {}),
    "no line search": ("default", {"line_search": None}),
    "no momentum": ("default", {"momentum": None}),
    "uphill on (guarded)": ("default", {"uphill": True}),
    "vanilla": ("vanilla", {}),
}

#: The curvatures the ablation runs on: the paper's empirical Fisher, and our exact GGN from a quarter of each
#: batch (the full-batch GGN costs 4x the time per iteration; the ablation compares the switches, not the curvature).
ABLATION_CURVATURES: dict[str, dict[str, Any]] = {
    "ef": {"curvature": "ef"},
    "ggn, curvature on 1/4": {"curvature": "ggn", "curvature_samples": 0.25},
}

PAPER_LR = {"SGD": 0.1, "Adam": 0.05, "L-BFGS": 0.005, "Hessian-free": 0.1, "K-FAC": 1.0}
SWEEPS = {
    "SGD": (0.01, 0.03, 0.1, 0.3),
    "Adam": (0.001, 0.003, 0.01, 0.05),
    "L-BFGS": (0.005, 0.05, 0.5, 1.0),
    "Hessian-free": (0.1, 0.3, 1.0),
    "K-FAC": (0.01, 0.1, 1.0),
}


def lm(model: nn.Module, preset: str = "default", **options: Any) -> Step:
    opt = marquardt.LevenbergMarquardt(model, "cross_entropy", preset=preset, **options)
    return lambda x, y: opt.step(x, y).loss_before


def _first_order(opt: torch.optim.Optimizer, model: nn.Module) -> Step:
    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def sgd(model: nn.Module, lr: float) -> Step:
    return _first_order(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4), model)


def adam(model: nn.Module, lr: float) -> Step:
    return _first_order(torch.optim.Adam(model.parameters(), lr=lr), model)


def lbfgs(model: nn.Module, lr: float) -> Step:
    opt = torch.optim.LBFGS(model.parameters(), lr=lr, line_search_fn="strong_wolfe")

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return float(opt.step(closure).detach())

    return step


def hessian_free(model: nn.Module, lr: float) -> Step:
    opt = HessianFree(model, "cross_entropy", lr=lr)
    return lambda x, y: opt.step(x, y)["loss_before"]


def kfac(model: nn.Module, lr: float) -> Step:
    opt = KFAC(model, "cross_entropy", variant="paper", lr=lr)  # the preconditioner + SGD the authors ran
    return lambda x, y: opt.step(x, y)["loss"]


BASELINES: dict[str, Callable[[nn.Module, float], Step]] = {
    "SGD": sgd, "Adam": adam, "L-BFGS": lbfgs, "Hessian-free": hessian_free, "K-FAC": kfac,
}


def make(name: str, model: nn.Module, lr: float | None = None) -> Step:
    """The step function of optimizer ``name`` (an LM config, an ablation ``"ablation: <variant> (<curv>)"``
    or a baseline) on ``model``; baselines use ``lr`` or their paper value."""
    if name in LM_CONFIGS:
        preset, options = LM_CONFIGS[name]
        return lm(model, preset, **options)
    if name.startswith("ablation: "):
        variant, curvature = name[len("ablation: "):].rsplit(" (", 1)
        preset, options = ABLATION[variant]
        return lm(model, preset, **ABLATION_CURVATURES[curvature[:-1]], **options)
    if name in BASELINES:
        return BASELINES[name](model, PAPER_LR[name] if lr is None else lr)
    raise ValueError(f"optimizer: unknown {name!r}; expected one of {sorted(LM_CONFIGS) + sorted(BASELINES)}")
