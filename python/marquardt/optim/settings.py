"""Hyperparameters of LevenbergMarquardt: the defaults, the paper preset, and their validation."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..policy.damping import DAMPING_KINDS
from ..policy.line_search import GRIDS

#: Recommended settings (ALGORITHM.md §0.4): max-diagonal damping, delayed-gratification λ (2/3), relative
#: LMAM, log-grid line search applied only on decrease, uphill steps off, geodesic acceleration off.
DEFAULTS: dict[str, Any] = {
    "curvature": None,  # 'gn' for mse, 'ggn' (default) or 'ef' for cross_entropy
    "damping": "max_diagonal",
    "d_init": 0.01,
    "d_floor": 0.0,
    "revert_d_on_reject": False,
    "lam_init": 1.0,
    "lambda_rule": "delayed",
    "lambda_up": 2.0,
    "lambda_down": 3.0,
    "lam_min": 1e-10,
    "lam_max": 1e10,
    # A floor for λ while the batches change from step to step (mini-batch training; detected by the optimizer,
    # see LevenbergMarquardt._note_batch). Without it λ falls to ~1e-3 on MNIST and every step over-fits its
    # own batch: on a validation split (train[50000:], paper CNN, ggn, 80 iterations of 600) the accuracy was
    # 88.4% with no floor, 96.3% with 0.1, 97.8% with 1.0 and 97.3% with 10 (BENCHMARKS.md). None disables it.
    "lam_min_minibatch": 1.0,
    "lam_skip_outside": False,
    # Subsampled curvature: A from curvature_samples evenly strided samples of each batch (a count, or a
    # fraction of the batch; the offset rotates from step to step), the gradient and every loss from the whole
    # batch (ALGORITHM.md §9 item 6; HF does the same). None = the whole batch. A quarter of the batch cut the
    # time to the sine noise floor 2.5-3x at the same iteration count (BENCHMARKS.md). A schedule
    # {first step: setting, ...} changes it as training goes on, e.g. {0: 0.25, 10: None}: a quarter of the
    # batch for the first 10 steps, then all of it (see curvature_samples_at).
    "curvature_samples": None,
    "max_attempts": 10,
    "step_multiplier": 1.0,
    "momentum": "lmam",
    "delta_p_mode": "relative",
    "delta_p": 0.6,
    "kappa": 0.5,
    "xi": 0.9,
    "paper_code_factor2": False,
    # Deviation from ALGORITHM.md §4.3 (log grid): backtracking from s = 1 (then doubling while it improves)
    # reached the sine noise floor in as few or fewer iterations with ~3x fewer forward passes
    # (benchmarks/paper/sine_ablation.py, BENCHMARKS.md); the grids stay available.
    "line_search": "backtrack",
    "line_search_apply_always": False,
    "uphill": False,
    "uphill_b": 2.0,
    "uphill_max_ratio": 1.5,
    "geodesic": False,
    "geodesic_alpha": 0.75,
    "loss_scale": "mean",
    "distributed": "auto",  # sum over torch.distributed ranks when a process group is initialised
    "solver": "auto",  # 'primal', 'dual', 'block_diagonal', or 'auto' (smallest that fits memory_budget)
    # How the dual system (K + λ/α I) y = v is solved. 'pcg': the rows stay factored per Linear layer and
    # conjugate gradients run on the exact K, preconditioned by a Hadamard-product Gram (solve/pcg.py;
    # 3-4x less time per iteration on the 1-64-64-1 sine MLP at 1000 rows, BENCHMARKS.md); 'cholesky': K is
    # formed from the rows and factored. 'auto': 'pcg' when every trainable layer is a Linear on [batch,
    # features] inputs, the fast Jacobian engine runs and the problem is large and wide enough for it to pay
    # (solve.pcg.factored_dual_pays), else 'cholesky'.
    "dual_method": "auto",
    # CG stops at this relative residual of the row-space system; None = 1e-10 for float32 rows (below the
    # rounding of a float32 K, which the Cholesky path factors) and 1e-12 for float64 rows. The step then
    # equals the Cholesky one to about this times the preconditioned condition number (1-4 measured).
    "dual_tol": None,
    # How the primal A = α𝒥ᵀ𝒥 is accumulated. 'factored': for Linear layers on [batch, features] inputs, each
    # large weight's diagonal block from symmetric Kronecker products (about half its flops, one GEMM), the rest
    # from the rows (solve.kronecker.accumulate_gram_); 'rows': jtj_accumulate_ of the explicit rows. 'auto':
    # 'rows' on the CPU where jtj_accumulate_ runs our AVX-512 SYRK (faster than the Kronecker GEMMs at every
    # size measured); elsewhere 'factored' when such a model has a weight where it pays
    # (solve.kronecker.kronecker_pays: at least 8 x 8 and 1,024 entries) and the fast Jacobian engine runs.
    "primal_accumulation": "auto",
    "blocks": "layer",  # block_diagonal: 'layer', 'unit' (a weight row with its bias) or a group size
    "engine": "auto",
    "memory_budget": 512 * 2**20,
    # A = α𝒥ᵀ𝒥 (or the dual K) is accumulated in the parameters' dtype (None) or the one given, then factored
    # in solve_dtype. None = float64 up to solve_float64_max (ALGORITHM.md §7 A17: "form A in float32, factor
    # in float64"), above that the accumulation dtype: a float64 Cholesky of n = 4353 costs ~1.8 s on one core
    # against ~0.9 s in float32, and a float32 factorisation that fails only raises λ (BENCHMARKS.md).
    "accumulate_dtype": None,
    "solve_dtype": None,
    "solve_float64_max": 1024,
}

#: What the authors' code does (ALGORITHM.md §0.4 and §7): ×10/÷10 λ with bounds [1e-5, 1e5] that skip the
#: update, damping reverted on failure, absolute LMAM (δP = 0.6, ξ = 0.9), the code's cubic line-search grid
#: applied unconditionally after a failure, unguarded uphill acceptance (b = 2), one attempt per batch.
PAPER: dict[str, Any] = {
    "lambda_rule": "fixed",
    "lambda_up": 10.0,
    "lambda_down": 10.0,
    "lam_min": 1e-5,
    "lam_max": 1e5,
    "lam_skip_outside": True,
    "lam_min_minibatch": None,
    "revert_d_on_reject": True,
    "max_attempts": 1,
    "momentum": "lmam",
    "delta_p_mode": "absolute",
    "delta_p": 0.6,
    "xi": 0.9,
    "line_search": "paper_code",
    "line_search_apply_always": True,
    "uphill": True,
    "uphill_b": 2.0,
    "uphill_max_ratio": None,
}

#: Plain LM for comparisons ("vanilla LM" of the paper's Fig. 1a): λI damping, ×10/÷10, nothing else.
VANILLA: dict[str, Any] = {
    "damping": "levenberg",
    "lambda_rule": "fixed",
    "lambda_up": 10.0,
    "lambda_down": 10.0,
    "momentum": None,
    "line_search": None,
    "uphill": False,
    "max_attempts": 1,
    "lam_min_minibatch": None,
}

PRESETS = {"default": {}, "paper": PAPER, "vanilla": VANILLA}


def resolve(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults, then the preset, then the user's overrides; every value validated."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"LevenbergMarquardt got unknown options {unknown}; valid options: {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **PRESETS[preset], **overrides}
    validate(settings)
    return settings


def _positive(settings: dict[str, Any], *names: str) -> None:
    for name in names:
        value = settings[name]
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"Invalid {name} value: {value!r} (expected a finite number > 0)")


def validate(s: dict[str, Any]) -> None:
    _positive(s, "lam_init", "lambda_up", "lambda_down", "lam_min", "lam_max", "step_multiplier", "delta_p")
    _positive(s, "kappa", "xi", "uphill_b", "geodesic_alpha", "memory_budget")
    if s["damping"] not in DAMPING_KINDS:
        raise ValueError(f"Invalid damping value: {s['damping']!r} (expected one of {DAMPING_KINDS})")
    if not (isinstance(s["d_init"], (int, float)) and s["d_init"] >= 0) or s["d_floor"] < 0:
        raise ValueError(f"Invalid d_init/d_floor: {s['d_init']!r}, {s['d_floor']!r} (expected >= 0)")
    if not isinstance(s["max_attempts"], int) or s["max_attempts"] < 1:
        raise ValueError(f"Invalid max_attempts value: {s['max_attempts']!r} (expected an int >= 1)")
    if s["momentum"] not in (None, "lmam", "olmam"):
        raise ValueError(f"Invalid momentum value: {s['momentum']!r} (expected None, 'lmam' or 'olmam')")
    if s["line_search"] not in (None, *GRIDS):
        raise ValueError(f"Invalid line_search value: {s['line_search']!r} (expected None or one of {GRIDS})")
    if s["loss_scale"] not in ("mean", "sum"):
        raise ValueError(f"Invalid loss_scale value: {s['loss_scale']!r} (expected 'mean' or 'sum')")
    if s["distributed"] not in ("auto", True, False):
        raise ValueError(f"Invalid distributed value: {s['distributed']!r} (expected 'auto', True or False)")
    if s["solver"] not in ("auto", "primal", "dual", "block_diagonal"):
        raise ValueError(
            f"Invalid solver value: {s['solver']!r} (expected 'auto', 'primal', 'dual' or 'block_diagonal')"
        )
    if s["dual_method"] not in ("auto", "cholesky", "pcg"):
        raise ValueError(
            f"Invalid dual_method value: {s['dual_method']!r} (expected 'auto', 'cholesky' or 'pcg')"
        )
    if s["primal_accumulation"] not in ("auto", "rows", "factored"):
        raise ValueError(f"Invalid primal_accumulation value: {s['primal_accumulation']!r} "
                         "(expected 'auto', 'rows' or 'factored')")
    if not (s["dual_tol"] is None or (isinstance(s["dual_tol"], float) and 0.0 < s["dual_tol"] < 1.0)):
        raise ValueError(f"Invalid dual_tol value: {s['dual_tol']!r} (expected None or a float in (0, 1))")
    if not (s["blocks"] in ("layer", "unit") or (isinstance(s["blocks"], int) and s["blocks"] >= 1)):
        raise ValueError(f"Invalid blocks value: {s['blocks']!r} (expected 'layer', 'unit' or an int >= 1)")
    if s["engine"] not in ("auto", "fast", "functorch", "full"):
        raise ValueError(f"Invalid engine value: {s['engine']!r} (expected 'auto', 'fast', 'functorch' or 'full')")
    for name in ("accumulate_dtype", "solve_dtype"):
        allowed = (None, torch.float32, torch.float64)
        if s[name] not in allowed:
            raise ValueError(f"Invalid {name}: {s[name]!r} (expected one of {allowed})")
    if s["uphill_max_ratio"] is not None and not s["uphill_max_ratio"] >= 1:
        raise ValueError(f"Invalid uphill_max_ratio: {s['uphill_max_ratio']!r} (expected None or >= 1)")
    if s["lam_min_minibatch"] is not None and not (0 < s["lam_min_minibatch"] < s["lam_max"]):
        raise ValueError(f"Invalid lam_min_minibatch: {s['lam_min_minibatch']!r} (expected None or in (0, lam_max))")
    _validate_curvature_samples(s["curvature_samples"])
    if s["lam_min"] >= s["lam_max"]:
        raise ValueError(f"Invalid lambda bounds: lam_min={s['lam_min']} must be < lam_max={s['lam_max']}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_sample_setting(m: Any) -> bool:
    """None (the whole batch), a count >= 1 or a fraction in (0, 1]."""
    return m is None or (_is_int(m) and m >= 1) or (isinstance(m, float) and 0.0 < m <= 1.0)


def _validate_curvature_samples(m: Any) -> None:
    expected = "expected None, an int >= 1, a fraction in (0, 1], or a schedule {first step: one of those} with key 0"
    if isinstance(m, dict):
        steps_ok = 0 in m and all(_is_int(k) and k >= 0 for k in m)
        if not (steps_ok and all(_is_sample_setting(v) for v in m.values())):
            raise ValueError(f"Invalid curvature_samples value: {m!r} ({expected})")
    elif not _is_sample_setting(m):
        raise ValueError(f"Invalid curvature_samples value: {m!r} ({expected})")


def subsamples_curvature(setting: Any) -> bool:
    """Whether the setting (or any entry of a schedule) builds the curvature from part of the batch."""
    values = setting.values() if isinstance(setting, dict) else (setting,)
    return any(v is not None for v in values)


def curvature_samples_at(setting: Any, step: int) -> int | float | None:
    """The curvature sample setting in force at ``step`` (0 = the first step): the setting itself, or for a
    schedule ``{first step: setting}`` the entry with the largest first step <= ``step``."""
    if not isinstance(setting, dict):
        return setting
    return setting[max(k for k in setting if k <= step)]
