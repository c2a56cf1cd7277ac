"""LMAM against its constrained problem (ALGORITHM.md §1)."""

from __future__ import annotations

import math

import pytest
import torch

from marquardt.policy.momentum import LMAM, OLMAM


def problem(seed=0, n=40):
    g_ = torch.Generator().manual_seed(seed)
    A = torch.randn(60, n, generator=g_, dtype=torch.float64)
    H = A.T @ A + 0.5 * torch.eye(n, dtype=torch.float64)
    g = torch.randn(n, generator=g_, dtype=torch.float64)
    s = 0.1 * torch.randn(n, generator=g_, dtype=torch.float64)
    return H, g, s, -torch.linalg.solve(H, g)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_constraints_hold_exactly(mode):
    H, g, s, d_lm = problem()
    lmam = LMAM(delta_p_mode=mode, delta_p=0.3, kappa=0.5, xi=0.9)
    out = lmam.apply(d_lm, g, s, float(s @ H @ s))
    assert out.used
    i_gg = float(-(g @ d_lm))
    delta_p = 0.3 if mode == "absolute" else 0.5 * math.sqrt(i_gg)
    assert float(g @ out.step) == pytest.approx(-0.9 * delta_p * math.sqrt(i_gg), rel=1e-10)  # gᵀdθ = δQ
    assert float(out.step @ H @ out.step) == pytest.approx(delta_p**2, rel=1e-10)  # dθᵀH dθ = δP²


def test_maximises_alignment_among_feasible_points():
    H, g, s, d_lm = problem(1, n=6)
    lmam = LMAM(delta_p_mode="absolute", delta_p=0.3, xi=0.9)
    best = lmam.apply(d_lm, g, s, float(s @ H @ s)).step
    phi_best = float(best @ H @ s)
    # Random feasible points: project onto gᵀx = δQ, then rescale in the H-metric within that plane.
    L = torch.linalg.cholesky(H)
    i_gg = float(-(g @ d_lm))
    dq = -0.9 * 0.3 * math.sqrt(i_gg)
    x0 = dq / i_gg * (-d_lm)  # the point on the plane closest in H-metric: gᵀx0 = δQ
    gen = torch.Generator().manual_seed(3)
    worse = 0
    for _ in range(500):
        u = torch.randn(6, generator=gen, dtype=torch.float64)
        u = u - (g @ u) / (g @ (-d_lm)) * (-d_lm)  # gᵀu = 0
        r2 = 0.09 - float(x0 @ H @ x0)
        u = u * math.sqrt(r2 / float(u @ H @ u))
        x = x0 + u
        assert float(x @ H @ x) == pytest.approx(0.09, rel=1e-8)
        worse += float(x @ H @ s) <= phi_best + 1e-12
    assert worse == 500
    del L


def test_fallbacks():
    H, g, s, d_lm = problem()
    lmam = LMAM()
    assert not lmam.apply(d_lm, g, None, None).used
    assert not lmam.apply(d_lm, g, torch.zeros_like(s), 0.0).used
    parallel = 2.0 * d_lm  # s ∥ H⁻¹g: degenerate, plain LM step
    out = lmam.apply(d_lm, g, parallel, float(parallel @ H @ parallel))
    assert not out.used and torch.equal(out.step, d_lm)
    out = lmam.apply(d_lm, g, s, float("nan"))
    assert not out.used and torch.equal(out.step, d_lm)


@pytest.mark.parametrize("mode", ["lmam", "olmam"])
def test_extreme_scales_fall_back_instead_of_raising(mode):
    """At losses near 1e300, I_GG and I_GF are finite (~1e300) but their squares overflow: the plain LM step
    comes back (a Python float power raised OverflowError here before)."""
    H, g, s, d_lm = problem()
    big = 1e150
    d_big = d_lm * big
    out = (OLMAM() if mode == "olmam" else LMAM()).apply(d_big, g * big, s * big, float(s @ H @ s) * big * big)
    assert not out.used and torch.equal(out.step, d_big)


def test_factor2_of_the_authors_code_violates_the_constraint():
    H, g, s, d_lm = problem()
    step = LMAM(delta_p_mode="absolute", delta_p=0.3, paper_code_factor2=True).apply(d_lm, g, s, float(s @ H @ s)).step
    assert float(g @ step) != pytest.approx(-0.9 * 0.3 * math.sqrt(float(-(g @ d_lm))), rel=1e-3)


def test_olmam_runs_and_satisfies_its_own_constraints():
    H, g, s, d_lm = problem(2)
    i_ff = float(s @ H @ s)
    out = OLMAM().apply(d_lm, g, s, i_ff)
    i_gg, i_gf = float(-(g @ d_lm)), float(g @ s)
    assert out.used
    delta_p = math.sqrt(i_gg) / 16
    xi = math.sqrt(1 - i_gf**2 / (i_gg * i_ff))  # OLMAM's ξ (Ampazis & Perantonis 2002, §3)
    assert float(out.step @ H @ out.step) == pytest.approx(delta_p**2, rel=1e-9)
    assert float(g @ out.step) == pytest.approx(-xi * delta_p * math.sqrt(i_gg), rel=1e-9)


def test_invalid_settings():
    with pytest.raises(ValueError, match="xi"):
        LMAM(xi=1.0)
    with pytest.raises(ValueError, match="delta_p_mode"):
        LMAM(delta_p_mode="weird")
