"""The configurations of the golden trajectories (tests/optim/test_golden.py).

Each case builds a model, a list of batches (step i uses batch i mod len) and the optimizer's arguments. The
trajectories were recorded by ``python -m tests.optim.golden.record`` at commit db1e0da, before the core was
redesigned, with the options spelled as they were then (flat keys); the test passes the same keys today, plus
the defaults of that time that have changed since: ``compare_lm_step="never"`` (momentum acts on every step; on a
repeated batch the default now also tries the plain LM step, tests/optim/test_momentum_rule.py),
``lambda_rule="delayed"`` (residuals now get the trust region), and, for residual callables, ``momentum=None`` and
``solver="primal"`` (for so few parameters 'auto' now turns to a QR solve when
the normal equations lose accuracy, tests/solve/test_qr.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tests.models import (
    Exponential,
    classifier_mlp,
    exponential_data,
    residuals,
    sine_data,
    sine_mlp,
    spirals,
    tiny_cnn,
)

STEPS = 10


@dataclass
class Case:
    name: str
    build: Callable[[], tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]]
    loss: Any = "mse"
    preset: str = "default"
    options: dict[str, Any] = field(default_factory=dict)


def _sine(points: int, dtype: torch.dtype = torch.float64, width: int = 8):
    def build():
        x, y = sine_data(points, dtype=dtype)
        return sine_mlp(width).to(dtype), [(x, y)]

    return build


def _sine_minibatches(dtype: torch.dtype = torch.float32):
    def build():
        x, y = sine_data(200, dtype=dtype)
        perm = torch.randperm(200, generator=torch.Generator().manual_seed(1))
        return sine_mlp(8).to(dtype), [(x[p], y[p]) for p in perm.split(50)]

    return build


def _spirals(dtype: torch.dtype = torch.float64):
    def build():
        x, labels = spirals(120, dtype=dtype)
        return classifier_mlp().to(dtype), [(x, labels)]

    return build


def _cnn(minibatch: bool, dtype: torch.dtype = torch.float32):
    def build():
        g = torch.Generator().manual_seed(2)
        x = torch.randn(96, 1, 8, 8, generator=g).to(dtype)
        labels = (x[:, 0, :4].sum(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].sum(dim=(1, 2)) > 0).long()
        batches = [(x[i : i + 32], labels[i : i + 32]) for i in range(0, 96, 32)] if minibatch else [(x, labels)]
        return tiny_cnn().to(dtype), batches

    return build


def _exponential():
    t, y = exponential_data(100)
    return Exponential(), [(t, y)]


CASES: list[Case] = [
    # solvers (sine MLP 1-8-8-1, n = 97: 200 points take the primal form, 64 points the dual form)
    Case("primal_f64", _sine(200)),
    Case("primal_f32", _sine(200, torch.float32)),
    Case("dual_cholesky_f64", _sine(64), options={"dual_method": "cholesky"}),
    Case("dual_cholesky_f32", _sine(64, torch.float32), options={"dual_method": "cholesky"}),
    Case("dual_pcg_f64", _sine(64), options={"dual_method": "pcg"}),
    Case("dual_pcg_f32", _sine(64, torch.float32), options={"dual_method": "pcg"}),
    Case("block_layer_f64", _sine(200), options={"solver": "block_diagonal"}),
    Case("block_unit_f32", _sine(200, torch.float32), options={"solver": "block_diagonal", "blocks": "unit"}),
    Case("block_group_f64", _sine(64), options={"solver": "block_diagonal", "blocks": 10}),
    Case("primal_chunked_f64", _sine(200), options={"solver": "primal", "memory_budget": 200_000}),
    Case("primal_factored_f64", _sine(200, width=32), options={"solver": "primal", "primal_accumulation": "factored"}),
    # engines
    Case("engine_functorch_f64", _sine(200), options={"engine": "functorch"}),
    Case("engine_full_f64", _sine(200), options={"engine": "full"}),
    Case("engine_functorch_dual_f32", _sine(64, torch.float32), options={"engine": "functorch"}),
    # curvature
    Case("ggn_f64", _spirals(), loss="cross_entropy"),
    Case("ggn_dual_f32", _spirals(torch.float32), loss="cross_entropy", options={"solver": "dual"}),
    Case("ef_f64", _spirals(), loss="cross_entropy", options={"curvature": "ef"}),
    Case("ggn_functorch_f64", _spirals(), loss="cross_entropy", options={"engine": "functorch"}),
    # damping and λ rules
    Case("damping_levenberg", _sine(200), options={"damping": "levenberg"}),
    Case("damping_marquardt", _sine(200), options={"damping": "marquardt", "d_floor": 1e-6}),
    Case("lambda_fixed", _sine(200), options={"lambda_rule": "fixed", "lambda_up": 10.0, "lambda_down": 10.0}),
    Case("lambda_nielsen", _sine(200), options={"lambda_rule": "nielsen"}),
    Case("revert_d_on_reject", _sine(200), options={"revert_d_on_reject": True, "line_search": None, "lam_init": 1e-6, "max_attempts": 1}),
    # momentum
    Case("momentum_off", _sine(200), options={"momentum": None}),
    Case("momentum_olmam", _sine(200), options={"momentum": "olmam"}),
    Case("momentum_absolute_factor2", _sine(200),
         options={"delta_p_mode": "absolute", "delta_p": 0.3, "paper_code_factor2": True}),
    # line search, uphill, geodesic
    Case("line_search_log", _sine(200), options={"line_search": "log", "max_attempts": 1, "lam_init": 1e-6}),
    Case("line_search_paper_text", _sine(200),
         options={"line_search": "paper_text", "max_attempts": 1, "lam_init": 1e-6, "line_search_apply_always": True}),
    Case("line_search_backtrack", _sine(200), options={"max_attempts": 1, "lam_init": 1e-6}),
    Case("uphill_guarded", _sine(200), options={"uphill": True, "lam_init": 1e-4}),
    Case("geodesic_primal", _sine(200), options={"geodesic": True}),
    Case("geodesic_dual", _sine(64), options={"geodesic": True, "dual_method": "cholesky"}),
    Case("geodesic_ggn", _spirals(), loss="cross_entropy", options={"geodesic": True}),
    # subsampled curvature
    Case("subsampled_quarter_f64", _sine(200), options={"curvature_samples": 0.25}),
    Case("subsampled_schedule_ggn", _spirals(), loss="cross_entropy", options={"curvature_samples": {0: 0.5, 5: None}}),
    Case("subsampled_count_dual", _sine(64), options={"curvature_samples": 16}),
    # presets
    Case("preset_paper", _sine(200), preset="paper"),
    Case("preset_vanilla", _sine(200), preset="vanilla"),
    Case("preset_paper_cnn_ef", _cnn(minibatch=True), loss="cross_entropy", preset="paper", options={"curvature": "ef"}),
    # mini-batches, dtypes, scales
    Case("minibatch_f32", _sine_minibatches()),
    Case("minibatch_cnn_ggn", _cnn(minibatch=True), loss="cross_entropy"),
    Case("cnn_full_batch_f64", _cnn(minibatch=False, dtype=torch.float64), loss="cross_entropy"),
    Case("loss_sum", _sine(200), options={"loss_scale": "sum"}),
    Case("accumulate_f32_solve_f64", _sine(200), options={"accumulate_dtype": torch.float32}),
    Case("solve_f32", _sine(200), options={"solve_dtype": torch.float32}),
    # residual callables (curve fitting)
    Case("residual_exponential", _exponential, loss=residuals),
    Case("residual_exponential_geodesic", _exponential, loss=residuals, options={"geodesic": True}),
    Case("residual_exponential_lmam", _exponential, loss=residuals, options={"momentum": "lmam"}),
]


def run(case: Case, make_optimizer: Callable[..., Any]) -> dict[str, Any]:
    """The case's trajectory: θ, λ, the reason and the losses after each of STEPS steps."""
    torch.manual_seed(0)
    model, batches = case.build()
    torch.manual_seed(0)
    options = dict(case.options)
    if case.preset == "default":  # the defaults of the recording (see the module docstring)
        options.setdefault("compare_lm_step", "never")
        options.setdefault("lambda_rule", "delayed")
        if callable(case.loss):
            options.setdefault("momentum", None)
            options.setdefault("solver", "primal")
    opt = make_optimizer(model, case.loss, preset=case.preset, **options)
    thetas, lams, reasons, losses = [], [], [], []
    for i in range(STEPS):
        x, y = batches[i % len(batches)]
        info = opt.step(x, y)
        thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]).clone())
        lams.append(info.lam)
        reasons.append(info.reason)
        losses.append((info.loss_before, info.loss_after))
    return {"theta": torch.stack(thetas), "lam": lams, "reason": reasons, "loss": losses}
