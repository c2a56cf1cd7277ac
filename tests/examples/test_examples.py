"""The examples in examples/ run, and what they print is right (each against an independent reference)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curve_fit_matches_scipy_curve_fit():
    """Fitted values and standard errors equal MINPACK's (scipy's curve_fit: same data, same first guess)."""
    optimize = pytest.importorskip("scipy.optimize")
    example = load("curve_fit")
    result = example.main(["--points", "150", "--noise", "0.05", "--seed", "3"])
    assert result["converged"] == 1.0 and result["iterations"] < 50

    t, y = example.noisy_samples(150, 0.05, 3)
    t_np, y_np = t.numpy(), y.numpy()

    def curve(t, a, b, c, d):
        return example.DampedOscillation(a, b, c, d)(torch.from_numpy(t)).detach().numpy()

    p0 = [example.FIRST_GUESS[k] for k in "abcd"]
    popt, pcov = optimize.curve_fit(curve, t_np, y_np, p0=p0, method="lm", xtol=1e-14, ftol=1e-14)
    for i, name in enumerate("abcd"):
        assert result[f"{name}_fitted"] == pytest.approx(popt[i], rel=1e-6, abs=1e-8)
        assert result[f"{name}_stderr"] == pytest.approx(pcov[i, i] ** 0.5, rel=1e-4)
        # and the truth lies within 4 standard errors
        assert abs(result[f"{name}_fitted"] - example.TRUE[name]) < 4 * result[f"{name}_stderr"]


def test_spirals_classifier_learns_through_a_checkpoint_resume():
    result = load("spirals_classifier").main(["--seed", "1"])  # the defaults: 8 epochs of 2,000 points
    # A linear classifier gets about half of the two spirals right; the MLP has to bend around both arms.
    assert result["test_accuracy"] > 0.9
    assert result["train_accuracy"] > 0.9


def last_loss(output: str) -> float:
    return float(re.findall(r"MSE/2 ([0-9.e+-]+)", output)[-1])


def test_data_parallel_under_torchrun_matches_one_process():
    steps = "6"
    single = subprocess.run([sys.executable, str(EXAMPLES / "data_parallel.py"), "--steps", steps, "--points", "400"],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(EXAMPLES / "data_parallel.py"), "--steps", steps, "--points", "400"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "2 rank(s); largest parameter difference between ranks: 0.0e+00" in launched.stdout
    assert last_loss(launched.stdout) == pytest.approx(last_loss(single.stdout), rel=1e-3)
    assert last_loss(single.stdout) < 0.05  # from ~0.3 at the start: the fit got somewhere



def test_custom_policy_rule_follows_its_bands_and_trains():
    """The example's λ rule against its definition, then both trainings reach the noise floor's neighbourhood (in 80
    steps: the default took 40 on one host, 60 on another)."""
    from marquardt.policy.lam import LambdaBounds

    example = load("custom_policy")
    rule, bounds = example.GainBands(), LambdaBounds(1e-10, 1e10)
    assert rule.accepted(1.0, 2.0, 0.9, bounds) == (1 / 3, 2.0)
    assert rule.accepted(1.0, 2.0, 0.5, bounds) == (1.0, 2.0)
    assert rule.accepted(1.0, 2.0, 0.1, bounds) == (2.0, 2.0)
    assert rule.rejected(1.0, 2.0, bounds) == (4.0, 2.0)
    out = subprocess.run([sys.executable, str(EXAMPLES / "custom_policy.py"), "--steps", "80"], capture_output=True,
                         text=True, check=True).stdout
    losses = [float(v) for v in re.findall(r"loss after 80 steps: ([0-9.]+)", out)]
    assert len(losses) == 2 and all(loss < 0.01 for loss in losses)  # ½ MSE; the noise floor is 0.0017


def test_pinn_poisson_learns_the_solution_in_all_three_styles_alike():
    """The three ways of writing Δu give the same fit; the error is measured against the exact solution."""
    example = load("pinn_poisson")
    argv = ["--width", "10", "--points", "40", "--boundary-points", "16", "--iterations", "40"]
    results = {style: example.main([*argv, "--style", style]) for style in ("taylor", "autograd", "torch_func")}
    for style in ("autograd", "torch_func"):
        assert results[style]["loss"] == pytest.approx(results["taylor"]["loss"], rel=1e-6)
        assert results[style]["error"] == pytest.approx(results["taylor"]["error"], rel=1e-6, abs=1e-7)
    untrained = example.relative_l2_error(example.network(10, 0))
    assert untrained > 0.5 and results["taylor"]["error"] < 0.01 * untrained


def test_robust_bounded_fit_recovers_the_curve_that_least_squares_misses():
    """Against scipy: the robust bounded solution is least_squares(loss='soft_l1', bounds=...)'s, and the
    standard errors curve_fit's for it."""
    optimize = pytest.importorskip("scipy.optimize")
    np = pytest.importorskip("numpy")
    example = load("robust_bounded_fit")
    result = example.main(["--seed", "1"])
    assert result["converged"] == 1.0
    for name, true in example.TRUE.items():
        assert abs(result[f"{name}_robust"] - true) < 3 * result[f"{name}_stderr"]
    assert abs(result["k_plain"] - example.TRUE["k"]) > 5 * abs(result["k_robust"] - example.TRUE["k"])
    t, y = example.measurements(80, 8, 1)

    def curve(tt, a, k, c):
        return a * np.exp(-k * tt) + c

    popt, pcov = optimize.curve_fit(curve, t.numpy(), y.numpy(), p0=[1.0, 0.1, 0.0], method="trf", loss="soft_l1",
                                    f_scale=0.05, bounds=([-np.inf, 0.0, 0.0], [np.inf, np.inf, 0.5]),
                                    xtol=1e-15, ftol=1e-15, gtol=1e-15)
    for i, name in enumerate("akc"):
        assert result[f"{name}_robust"] == pytest.approx(popt[i], rel=1e-5, abs=1e-8)
        assert result[f"{name}_stderr"] == pytest.approx(pcov[i, i] ** 0.5, rel=1e-3)


def test_binary_classifier_learns_the_ring():
    result = load("binary_classifier").main(["--iterations", "30"])
    # a linear classifier can only say "outside" everywhere, right for about two thirds of the points
    assert 0.25 < result["positive_share"] < 0.45 and result["test_accuracy"] > 0.95
