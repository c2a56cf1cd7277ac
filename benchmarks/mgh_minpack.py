"""The Moré-Garbow-Hillstrom problems from x₀, 10·x₀ and 100·x₀: marquardt against MINPACK, side by side.

    python benchmarks/mgh_minpack.py            # a table of problems solved per start scale, CPU time, accuracy
    python benchmarks/mgh_minpack.py --check    # exit 1 unless the default solves at least as many as MINPACK
                                                # from every scale, more in total, in at most 2x its time

The problems are the 35 of the 1981 paper in ``tests/optim/mgh.py`` (Watson at 6 and 9 parameters: 36 instances;
float64), each started from x₀ scaled by 1, 10 and 100 as the paper defines. MINPACK is
``scipy.optimize.least_squares(method="lm")`` (``lmder``) with the same analytic Jacobian (``torch.func.jacrev`` of
the same residuals); marquardt fits through a residual callable with ``marquardt.fit``, at its defaults (the trust
region, no momentum, Cholesky turning to QR when it loses accuracy) and with one setting changed per row. Both run
to ftol = xtol = gtol = 1e-15, gtol on the same scaled gradient (the largest cosine between r and a column of J),
MINPACK up to 10,000 evaluations, marquardt up to 3,000 iterations. A problem counts as
solved when Σr² is within the problem's tolerance of a known minimum (1e-6 relative; Osborne 2's data is
transcribed, 1e-3). CPU time is ``time.process_time`` of the fits on one thread.

Accuracy: on the starts both solve, whether the default's parameters equal MINPACK's to 1e-8
(‖x − x_M‖ ≤ 1e-8·max(‖x_M‖, 1)), and where they do not, which point is nearer a minimiser by the Gauss-Newton
model (the length of J's least-squares step there, computed by SVD for both); and the final ‖Jᵀr‖∞ against
MINPACK's (by autograd for both), listing the starts where the default's is larger with the gradient's rounding
level there (:func:`gradient_rounding`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import marquardt  # noqa: E402
from marquardt.optim.polish import gradient_rounding_level, residual_rounding  # noqa: E402
from tests.optim.mgh import Meyer, all_problems, minpack, more_problems  # noqa: E402

PROBLEMS = all_problems() + [("Meyer", lambda: Meyer(Meyer.x0))] + more_problems()
SCALES = (1, 10, 100)
SETTINGS = {
    "marquardt default": {},  # for a residual callable: the trust region, no momentum, QR when Cholesky loses accuracy
    "default, no polish": {"polish": False},  # (fit's Gauss-Newton polish after convergence off)
    "trust region, Cholesky only": {"solver": "primal"},
    "trust region, QR always": {"solver": "qr"},
    "trust region, no line search": {"line_search": None},
    "trust region + LMAM": {"momentum": "lmam"},
    "trust region + geodesic": {"geodesic": True},
    "delayed + LMAM (network default)": {"lambda_rule": "delayed", "momentum": "lmam"},
}


def gradient_inf(problem, x: np.ndarray) -> float:
    """‖Jᵀr‖∞ of Σr²/2 at x, the same formula for every solver."""
    theta = torch.tensor(x, dtype=torch.float64)
    J = torch.func.jacrev(problem.residuals)(theta)
    return float((J.T @ problem.residuals(theta)).abs().max())


def by_minpack(problem) -> None:
    """Leaves MINPACK's solution in the problem's parameters."""
    with torch.no_grad():
        problem.x.copy_(torch.tensor(minpack(problem).x))


def by_marquardt(problem, options: dict) -> None:
    options = dict(options)
    polish = options.pop("polish", "auto")
    opt = marquardt.LevenbergMarquardt(problem, lambda r, _t: r, **options)
    marquardt.fit(opt, torch.zeros(1, dtype=torch.float64), max_iterations=3000, ftol=1e-15, xtol=1e-15, gtol=1e-15,
                  polish=polish)


def run(name: str, options: dict | None) -> dict:
    counts, failures, seconds, points = {s: 0 for s in SCALES}, [], 0.0, {}
    for scale in SCALES:
        for label, make in PROBLEMS:
            problem = make()
            with torch.no_grad():
                problem.x.mul_(scale)
            start = time.process_time()
            with np.errstate(all="ignore"):
                try:
                    by_minpack(problem) if options is None else by_marquardt(problem, options)
                    ok = problem.at_known_minimum()
                except (ValueError, RuntimeError, np.linalg.LinAlgError):
                    ok = False
            seconds += time.process_time() - start
            if ok:
                counts[scale] += 1
                x = problem.x.detach().numpy().copy()
                with torch.no_grad():
                    sum_of_squares = float((problem.residuals(problem.x) ** 2).sum())
                points[(label, scale)] = (x, gradient_inf(problem, x), sum_of_squares)
            else:
                failures.append(f"{label}@{scale}x0")
    return {"name": name, "counts": counts, "total": sum(counts.values()), "seconds": seconds, "failures": failures,
            "points": points}


def gauss_newton_distance(label: str, x: np.ndarray) -> float:
    """‖δ_GN‖/max(‖x‖, 1), δ_GN J's least-squares solution of Jδ = −r at x (SVD): how far x is from a minimiser by
    the Gauss-Newton model, the same formula for every solver."""
    problem = dict(PROBLEMS)[label]()
    theta = torch.tensor(x, dtype=torch.float64)
    J = torch.func.jacrev(problem.residuals)(theta).numpy()
    r = problem.residuals(theta).detach().numpy()
    return float(np.linalg.norm(np.linalg.lstsq(J, -r, rcond=None)[0]) / max(np.linalg.norm(x), 1.0))


def gradient_rounding(label: str, x: np.ndarray) -> float:
    """The rounding level of ‖Jᵀr‖∞ at x: maxⱼ Σᵢ |Jᵢⱼ| (ε|rᵢ| + νᵢ), where ν is the residuals' measured rounding,
    the larger entry by entry of |r(x + p) − r(x) − J p| for two probes p of 16 ulps of each xⱼ (all signs
    positive, and alternating): what is left of so small a change is rounding. A gradient below this level
    cannot be told from zero. The same measure as the one ``fit``'s polish stops on (marquardt/optim/polish.py),
    here with autograd's J."""
    problem = dict(PROBLEMS)[label]()
    theta = torch.tensor(x, dtype=torch.float64)
    J = torch.func.jacrev(problem.residuals)(theta)
    r = problem.residuals(theta).detach()
    nu = residual_rounding(lambda t: problem.residuals(t).detach(), theta, r, J)
    return gradient_rounding_level(r, J, nu)


def agreement(row: dict, reference: dict) -> dict:
    """Of the starts both solved: those whose parameters equal MINPACK's to 1e-8 (‖x − x_M‖ ≤ 1e-8·max(‖x_M‖, 1)),
    those ending with a gradient at or below MINPACK's, and for the others the Gauss-Newton distance of both."""
    same, smaller, both, differ, larger = 0, 0, 0, [], []
    for key, (x, grad, f) in row["points"].items():
        if key not in reference["points"]:
            continue
        both += 1
        x_ref, grad_ref, f_ref = reference["points"][key]
        smaller += grad <= grad_ref
        if grad > grad_ref:
            larger.append((f"{key[0]}@{key[1]}x0", grad, grad_ref, f, f_ref, gradient_rounding(key[0], x)))
        if np.linalg.norm(x - x_ref) <= 1e-8 * max(np.linalg.norm(x_ref), 1.0):
            same += 1
        else:
            differ.append((f"{key[0]}@{key[1]}x0", gauss_newton_distance(key[0], x),
                           gauss_newton_distance(key[0], x_ref)))
    return {"same": same, "smaller": smaller, "both": both, "differ": differ, "larger": larger}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"host: {platform.processor() or platform.machine()}, torch {torch.__version__}, scipy {scipy.__version__}, "
          f"one thread; {len(PROBLEMS)} problems")
    print(f"{'solver':<30} {'x0':>6} {'10x0':>6} {'100x0':>6} {'total':>6} {'CPU s':>7}  unsolved")
    rows = [run("MINPACK (scipy lm)", None)] + [run(name, options) for name, options in SETTINGS.items()]
    for row in rows:
        c = row["counts"]
        print(f"{row['name']:<30} {c[1]:>6} {c[10]:>6} {c[100]:>6} {row['total']:>6} {row['seconds']:>7.1f}  "
              f"{' '.join(row['failures'])}", flush=True)
    reference, trust = rows[0], rows[1]
    agree = agreement(trust, reference)
    closer = sum(ours <= theirs for _, ours, theirs in agree["differ"])
    print(f"the default against MINPACK on the {agree['both']} starts both solve: parameters equal to 1e-8 on "
          f"{agree['same']}, final ‖Jᵀr‖∞ at or below MINPACK's on {agree['smaller']}; where the parameters differ, "
          f"the Gauss-Newton distance ‖δ_GN‖/max(‖x‖, 1) of the default's point and of MINPACK's "
          f"(the default's as close or closer on {closer} of {len(agree['differ'])}):")
    for label, ours, theirs in agree["differ"]:
        print(f"  {label:<36} {ours:9.2e} {theirs:9.2e}")
    at_rounding = sum(grad <= level for _, grad, _, _, _, level in agree["larger"])
    print(f"where the default's ‖Jᵀr‖∞ is above MINPACK's ({len(agree['larger'])}; within its rounding level on "
          f"{at_rounding}): ‖Jᵀr‖∞ of both, the default's rounding level, and Σr² of both")
    for label, grad, grad_ref, f, f_ref, level in agree["larger"]:
        print(f"  {label:<36} {grad:9.2e} {grad_ref:9.2e} {level:9.2e}   {f:.17g} {f_ref:.17g}")
    unpolished = next((r for r in rows if r["name"] == "default, no polish"), None)
    if unpolished is not None:
        print(f"without the polish: ‖Jᵀr‖∞ at or below MINPACK's on {agreement(unpolished, reference)['smaller']} "
              f"of the starts both solve")
    failures = []
    if any(trust["counts"][s] < reference["counts"][s] for s in SCALES):
        failures.append("the default solves fewer than MINPACK from some start scale")
    if trust["total"] <= reference["total"]:
        failures.append("the default does not solve more than MINPACK in total")
    if trust["seconds"] > 2 * reference["seconds"]:
        failures.append(f"the default takes {trust['seconds'] / reference['seconds']:.2f}x MINPACK's CPU time")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
