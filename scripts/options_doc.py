"""Writes docs/options.md, the option reference, from the option table itself (marquardt/optim/config.py: each
option's group, the values it takes, and its default in each preset) and the meanings below.

    python scripts/options_doc.py           # rewrite docs/options.md
    python scripts/options_doc.py --check   # exit 1 if docs/options.md is not what this would write
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from marquardt.optim.config import OPTIONS, resolve

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "options.md"

#: what each option does, and where a default was chosen by a measurement, which one
MEANING = {
    "curvature": "The curvature of cross-entropy: 'ggn' (exact generalized Gauss-Newton, the default) or 'ef' "
                 "(the paper's empirical Fisher); 'gn' for least squares.",
    "curvature_samples": "Build the curvature from this many (or this fraction of) evenly strided samples of each "
                         "batch, the gradient and loss from all of it; a schedule {first step: setting} changes "
                         "it as training goes ({0: 0.25, 10: None} was chosen on an MNIST validation split).",
    "loss_scale": "The objective is the mean of the per-sample losses ('mean') or their sum; a loss module's "
                  "reduction sets it.",
    "robust": "A robust loss for least squares, scipy's definitions, with the Triggs-corrected curvature.",
    "robust_scale": "The robust loss's scale f (scipy's f_scale): residuals much larger than f count less.",
    "engine": "How the Jacobian rows are formed: 'fast' (from layer inputs and signals, Linear/Conv layers), "
              "'functorch' (vmap of jacrev), 'full' (the whole batch at once); 'auto' picks and falls back, and "
              "takes the rows a residual function gives itself (marquardt.pde.PDEResiduals: Taylor mode).",
    "distributed": "Sum the curvature, gradient and losses over torch.distributed ranks ('auto': when a process "
                   "group is initialised).",
    "damping": "The damping vector d: 'max_diagonal' (the running maximum of diag A: no parameter evaporation), "
               "'marquardt' (this step's diagonal), 'levenberg' (1).",
    "d_init": "The damping's starting value d₀.",
    "d_floor": "A lower bound on every damping entry.",
    "revert_d_on_reject": "Keep the previous damping when a step takes no trial (the authors' code).",
    "lambda_rule": "How λ moves: 'auto' ('trust_region' for residuals, a residual callable or function; "
                   "'delayed' for a loss name or module: benchmarks/lambda_rule_defaults.py), "
                   "'delayed' (÷lambda_down on success, ×lambda_up on failure), 'fixed' (the same "
                   "factors, the paper's ×10/÷10), 'nielsen' (from the gain ratio), 'trust_region' (MINPACK's: "
                   "λ makes the step as long as a radius in the D-norm, which the gain ratio moves).",
    "lambda_init": "λ at the first step.",
    "lambda_up": "λ's factor after a rejected trial.",
    "lambda_down": "λ's divisor after an accepted trial.",
    "lambda_min": "λ's lower bound.",
    "lambda_max": "λ's upper bound; reaching it without an accepted trial stops fit() with 'lam_max'.",
    "lambda_min_minibatch": "λ's floor while the batch changes between steps (1.0 chosen on an MNIST validation "
                            "split for the paper's CNN): small λ over-fits each batch.",
    "lambda_skip_outside": "No λ update at all outside [lambda_min, lambda_max] (the authors' code).",
    "trust_region_factor": "With lambda_rule='trust_region', the first radius is this times ‖Dθ₀‖ (MINPACK's "
                           "factor).",
    "momentum": "Adaptive momentum: 'auto' (None for residuals of a model with at most 64 parameters, a "
                "parametric fit; 'lmam' otherwise), 'lmam' (Ampazis & Perantonis), 'olmam' (with an adapted ξ), "
                "or None.",
    "compare_lm_step": "When an attempt also evaluates the plain LM step and keeps the lower loss: "
                       "'repeated_batch' (when the batch repeats the last step's: full batches, curve fits), "
                       "'always' or 'never' (LMAM alone). Chosen by benchmarks/momentum_rule.py: on the MGH set "
                       "18/18 solved against LMAM alone's 17/18, on the noisy sine 32 median iterations to the "
                       "floor against 36, mini-batch steps unchanged.",
    "delta_p_mode": "LMAM's step radius δP: 'absolute' (δP itself) or 'relative' (κ times ‖δ_LM‖ in the H-norm).",
    "delta_p": "LMAM's absolute radius δP (the paper's 0.6).",
    "kappa": "LMAM's relative radius factor κ.",
    "xi": "LMAM's ξ: how much of the step goes to decreasing the loss, against alignment with the last step.",
    "paper_code_factor2": "The factor 2 on c_g in the authors' LMAM code.",
    "max_attempts": "Trials per step at rising λ before the step gives up.",
    "step_multiplier": "η, multiplying every step (the paper's learning rate of LM).",
    "acceptance": "'downhill' (take a trial that lowers the loss) or 'uphill' (also nearly parallel uphill steps, "
                  "Transtrum & Sethna).",
    "uphill_b": "The exponent b of the uphill test (1 − β)^b C₁ ≤ C₀.",
    "uphill_max_ratio": "An uphill trial's largest loss, relative to C₀ (None: unguarded, the authors' code).",
    "line_search": "A line search along a rejected trial's step: 'backtrack', or a grid ('log', 'paper_code', "
                   "'paper_text').",
    "line_search_apply_always": "Take the line search's best point even if it does not lower the loss (the "
                                "authors' code).",
    "geodesic": "Geodesic acceleration (Transtrum & Sethna): a second-order correction of the step.",
    "geodesic_alpha": "The largest ratio 2‖a‖/‖v‖ of correction to step that is accepted.",
    "solver": "The form of the solve: 'primal' (n × n), 'dual' (m × m, Woodbury), 'block_diagonal', or 'auto' "
              "(by the sizes and the memory budget).",
    "dual_method": "How the dual form solves: 'cholesky' (forms K) or 'pcg' (factored rows, preconditioned CG).",
    "dual_tol": "The PCG's relative residual tolerance (None: its default).",
    "primal_accumulation": "How the primal A is accumulated: 'rows' (SYRK) or 'factored' (Kronecker products of "
                           "a Linear layer's inputs and signals).",
    "blocks": "The block-diagonal partition: 'layer', 'unit' (per output unit) or a group size.",
    "memory_budget": "Bytes for the system and one chunk of rows; the forms and chunk sizes are chosen to fit.",
    "accumulate_dtype": "The dtype A is accumulated in (None: the parameters').",
    "solve_dtype": "The dtype the system is factored in (None: float64 up to solve_float64_max, else the "
                   "parameters').",
    "solve_float64_max": "The largest system solved in float64 when solve_dtype is None.",
}


def render() -> str:
    presets = {name: resolve(name, {}).flat() for name in ("default", "paper", "vanilla")}
    lines = [
        "# Options",
        "",
        "Every option of `LevenbergMarquardt(model, loss, **options)`, by group, with what it takes and its default",
        "in each preset (`preset=\"default\"`, `\"paper\"`: the authors' choices, `\"vanilla\"`: plain LM). A wrong",
        "type or value is refused when the optimizer is built, naming the option. This page is written by",
        "`python scripts/options_doc.py` from the option table itself; a test checks that it is current.",
        "",
        "Besides these, the constructor takes `residuals=fn(model, *batch)` (a residual function instead of a loss)",
        "and `bounds={name: (lower, upper)}`; `step` and `fit` take `weight=` (per-sample weights).",
    ]
    group = None
    for name, option in OPTIONS.items():
        if option.group != group:
            group = option.group
            lines += ["", f"## {group}", "", "| option | meaning | takes | default | paper | vanilla |",
                      "|---|---|---|---|---|---|"]
        values = [f"`{presets[p][name]!r}`" for p in ("default", "paper", "vanilla")]
        lines.append(f"| `{name}` | {MEANING[name]} | {option.expected} | {' | '.join(values)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print("docs/options.md is out of date: run python scripts/options_doc.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
