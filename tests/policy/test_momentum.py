"""LMAM against its constrained problem (docs/algorithm.md, "Momentum (LMAM)")."""

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


def plane(a=1.0):
    """g = (a, 0), δ_LM = (−a, 0): I_GG = a² exactly; the previous step and I_FF are then chosen freely."""
    g = torch.tensor([a, 0.0], dtype=torch.float64)
    return g, -g.clone()


def lmam_case(name):
    """Inputs for which LMAM must fall back to δ_LM, with the reason it must give."""
    g, d_lm = plane()
    s = torch.tensor([0.3, 1.0], dtype=torch.float64)
    cases = {
        "no previous step": (LMAM(), g, d_lm, None, None),
        "zero previous step": (LMAM(), g, d_lm, torch.zeros(2, dtype=torch.float64), 1.0),
        "previous step without I_FF": (LMAM(), g, d_lm, s, None),
        "I_FF = 0": (LMAM(), g, d_lm, s, 0.0),
        "I_FF = inf": (LMAM(), g, d_lm, s, math.inf),
        "I_FF = nan": (LMAM(), g, d_lm, s, math.nan),
        "I_GG = 0": (LMAM(), torch.zeros(2, dtype=torch.float64), d_lm, s, 1.0),
        "I_GG < 0": (LMAM(), g, -d_lm, s, 1.0),
        "I_GG = inf": (LMAM(), g, torch.tensor([-math.inf, 0.0], dtype=torch.float64), s, 1.0),
        "I_GF = inf": (LMAM(), g, d_lm, torch.tensor([math.inf, 1.0], dtype=torch.float64), 1.0),
        # s = δ_LM and I_FF = I_GG: ξ = √(1 − I_GF²/(I_GG I_FF)) = 0 exactly
        "OLMAM ξ = 0": (OLMAM(), g, d_lm, d_lm.clone(), 1.0),
        # s ⊥ g: I_GF = 0 and ξ = 1 exactly
        "OLMAM ξ = 1": (OLMAM(), g, d_lm, torch.tensor([0.0, 1.0], dtype=torch.float64), 1.0),
        "parallel": (LMAM(), g, d_lm, 2.0 * d_lm, 4.0),
        # I_GG = 1e-200: δP² I_GG underflows, so the numerator of c_m² is exactly 0
        "zero numerator": (LMAM(), *plane(1e-100), s, 1.0),
        # I_GG = 1e4, I_FF I_GG − I_GF² = 1e-8: below 1e-10·I_FF·I_GG = 1e-6 (but above 1e-10·I_FF/I_GG)
        "nearly parallel": (LMAM(), *plane(100.0), torch.tensor([1.0, 0.0], dtype=torch.float64), 1.0 + 1e-12),
        # s ⊥ g and a tiny I_FF: c_m ≈ 2e149 times s's 1e200 overflows
        "overflow": (LMAM(), g, d_lm, torch.tensor([0.0, 1e200], dtype=torch.float64), 1e-300),
    }
    return cases[name]


REASONS = {
    "no previous step": "no previous step",
    "zero previous step": "no previous step",
    "previous step without I_FF": "no previous step",
    "I_FF = 0": "non-positive or non-finite I_GG / I_FF",
    "I_FF = inf": "non-positive or non-finite I_GG / I_FF",
    "I_FF = nan": "non-positive or non-finite I_GG / I_FF",
    "I_GG = 0": "non-positive or non-finite I_GG / I_FF",
    "I_GG < 0": "non-positive or non-finite I_GG / I_FF",
    "I_GG = inf": "non-positive or non-finite I_GG / I_FF",
    "I_GF = inf": "non-positive or non-finite I_GG / I_FF",
    "OLMAM ξ = 0": "OLMAM xi outside (0, 1)",
    "OLMAM ξ = 1": "OLMAM xi outside (0, 1)",
    "parallel": "previous step parallel to the LM step (degenerate)",
    "zero numerator": "previous step parallel to the LM step (degenerate)",
    "nearly parallel": "previous step parallel to the LM step (degenerate)",
    "overflow": "non-finite momentum step",
}


@pytest.mark.parametrize("name", REASONS)
def test_each_degenerate_case_returns_the_lm_step_with_its_reason(name):
    momentum, g, d_lm, s, i_ff = lmam_case(name)
    out = momentum.apply(d_lm, g, s, i_ff)
    assert (out.step is d_lm, out.used, out.reason) == (True, False, REASONS[name])


def test_a_used_step_says_so():
    H, g, s, d_lm = problem()
    out = LMAM().apply(d_lm, g, s, float(s @ H @ s))
    assert (out.used, out.reason) == (True, "lmam")


def test_the_degeneracy_threshold_is_inclusive():
    """I_FF·I_GG − I_GF² equal to 1e-10·I_FF·I_GG, bit for bit (X and q found by a search over floats): still
    degenerate."""
    i_ff, q = 1.000000082740371, 1.0000000413201846
    assert i_ff * 1.0 - q * q == 1e-10 * i_ff * 1.0
    g, d_lm = plane()
    out = LMAM().apply(d_lm, g, torch.tensor([q, 0.0], dtype=torch.float64), i_ff)
    assert out.reason == "previous step parallel to the LM step (degenerate)"


def test_olmam_keeps_the_authors_factor_two():
    """dθ = c_g δ_LM + c_m s: the authors' code doubles c_g, so the two steps differ by c_g δ_LM exactly."""
    H, g, s, d_lm = problem(2)
    i_ff = float(s @ H @ s)
    plain, doubled = OLMAM().apply(d_lm, g, s, i_ff), OLMAM(paper_code_factor2=True).apply(d_lm, g, s, i_ff)
    c_g = float((doubled.step - plain.step) @ d_lm / (d_lm @ d_lm))
    assert doubled.used and c_g > 0
    torch.testing.assert_close(doubled.step - plain.step, c_g * d_lm, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("settings", [
    {"xi": 0.0}, {"xi": 1.0}, {"delta_p": 0.0}, {"kappa": 0.0}, {"delta_p": -1.0}, {"kappa": -1.0},
])
def test_settings_at_the_edge_are_refused(settings):
    words = "xi" if "xi" in settings else "delta_p and kappa must be > 0"
    with pytest.raises(ValueError, match=words):
        LMAM(**settings)
