"""Line searches: the paper's grids and our backtracking against their definitions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marquardt.policy.line_search import LINE_SEARCHES, PLATEAU_PROBE, Backtracking, GridSearch, grid, on_plateau


def test_grids():
    log = grid("log")
    assert len(log) == 25 and log[0] == pytest.approx(1e-6) and log[-1] == pytest.approx(9.0)
    code = grid("paper_code")
    assert len(code) == 40 and code[0] == pytest.approx(1e-6) and code[-1] == pytest.approx(1.96**3)
    text = grid("paper_text")
    assert len(text) == 72 and text[1] == pytest.approx(0.125001)
    with pytest.raises(ValueError, match="line_search"):
        grid("cubic")


@pytest.mark.parametrize("kind", ["log", "paper_code", "paper_text"])
def test_line_search_picks_the_best_grid_point(kind):
    f = lambda s: (math.log(s) - math.log(0.3)) ** 2  # noqa: E731
    s_star, value, evals = GridSearch(kind).search(f, c0=100.0)
    candidates = grid(kind)
    assert evals == len(candidates)
    assert value == min(f(s) for s in candidates) and f(s_star) == value


def test_backtracking_finds_decrease_then_expands():
    f = lambda s: (s - 0.05) ** 2  # noqa: E731  f(0) = 0.0025 is C0
    s_star, value, evals = Backtracking().search(f, c0=0.0025)
    assert value < 0.0025 and 0.01 < s_star < 0.2 and evals <= 30
    # halvings from 1: 1, 0.5, 0.25, 0.125, 0.0625 (first decrease), then doubling back to 0.125 is worse
    assert s_star == 0.0625 and evals == 6


def test_line_search_treats_nan_as_worst():
    s_star, value, _ = GridSearch("log").search(lambda s: math.nan if s > 1e-3 else 1.0 - s, c0=1.0)
    assert math.isfinite(value) and s_star <= 1e-3
    s_star, value, _ = Backtracking().search(lambda s: math.nan if s > 0.3 else 1.0 - s, c0=1.0)
    assert value == pytest.approx(0.75) and s_star == 0.25


class _Settings:
    line_search_apply_always = True


def test_registry():
    assert {"backtrack", "log", "paper_code", "paper_text"} <= set(LINE_SEARCHES.names())
    built = LINE_SEARCHES.build("paper_code", _Settings())
    assert isinstance(built, GridSearch) and built.apply_always and built.candidates == grid("paper_code")
    assert isinstance(LINE_SEARCHES.build("backtrack", _Settings()), Backtracking)


def test_take_reuses_known_losses_and_applies_its_rule():
    calls = []

    def f(s: float) -> float:
        calls.append(s)
        return (s - 0.3) ** 2

    known = {1.0: f(1.0)}
    calls.clear()
    found = Backtracking().take(f, c0=0.09, known=known)
    assert found is not None and found[1] < 0.09
    assert 1.0 not in calls and len(calls) == len(set(calls))  # the known point and repeats are not evaluated
    assert Backtracking().take(lambda s: 1.0 + s, c0=1.0, known={}) is None  # no decrease: nothing taken
    taken = GridSearch("log", apply_always=True).take(lambda s: 1.0 + s, c0=1.0, known={})
    assert taken is not None and taken[0] == grid("log")[0]  # the authors' rule takes the best point anyway
    assert GridSearch("log", apply_always=True).take(lambda s: math.nan, c0=1.0, known={}) is None


@pytest.mark.parametrize("kind", ["log", "paper_code", "paper_text"])
def test_grids_can_choose_either_end(kind):
    candidates = grid(kind)
    assert GridSearch(kind).search(lambda s: -s, c0=0.0)[0] == candidates[-1]
    assert GridSearch(kind).search(lambda s: s, c0=10.0)[0] == candidates[0]


def test_backtracking_doubles_while_it_improves():
    s_star, value, evals = Backtracking().search(lambda s: (s - 5.0) ** 2, c0=25.0)
    assert s_star == 4.0 and evals == 4  # 1 decreases at once; then 2 and 4 improve, 8 does not


def evaluated(search, losses, c0):
    """Runs a search on a loss given as a function of s, and records the multipliers it tries, in order."""
    tried = []

    def loss_at(s):
        tried.append(s)
        return losses(s)

    return search.search(loss_at, c0), tried


def backtracking_reference(losses, c0):
    """The documented rule, written out: s = 1, 1/2, ... (at most 20) until f < C₀, the first strict best
    kept; then s doubled while f keeps strictly improving, at most 30 evaluations in all. Non-finite f is +inf."""
    def f(s):
        value = losses(s)
        return value if math.isfinite(value) else math.inf

    tried, best_s, best = [], 0.0, math.inf
    for k in range(20):
        s = 0.5**k
        tried.append(s)
        if f(s) < best:
            best_s, best = s, f(s)
        if f(s) < c0:
            break
    while best < c0 and len(tried) < 30:
        tried.append(2.0 * best_s)
        if f(2.0 * best_s) >= best:
            break
        best_s, best = 2.0 * best_s, f(2.0 * best_s)
    return (best_s, best, len(tried)), tried


BACKTRACKING_CASES = {
    "never decreases": (lambda s: 2.0 + s, 1.0),
    "flat above C0": (lambda s: 2.0, 1.0),  # ties keep the first point
    "equal to C0 first": (lambda s: 1.0 if s == 1.0 else 0.5, 1.0),  # f = C₀ is no decrease
    "never below C0": (lambda s: 1.0, 1.0),  # best = C₀: no doubling
    "every value non-finite": (lambda s: math.nan, 1.0),
    "minus infinity is the worst": (lambda s: -math.inf if s == 1.0 else 0.9, 1.0),
    "improves forever": (lambda s: -s, 0.0),  # doubling stops at 30 evaluations
    "tie while doubling": (lambda s: 0.5 if s in (1.0, 2.0) else 0.8, 1.0),
    "a minimum at 5": (lambda s: (s - 5.0) ** 2, 25.0),
}


@pytest.mark.parametrize("name", BACKTRACKING_CASES)
def test_backtracking_tries_exactly_the_documented_multipliers(name):
    losses, c0 = BACKTRACKING_CASES[name]
    assert evaluated(Backtracking(), losses, c0) == backtracking_reference(losses, c0)


def test_a_tie_with_c0_is_not_taken_unless_always_applied():
    assert GridSearch("log").take(lambda s: 1.0, c0=1.0, known={}) is None
    assert GridSearch("log", apply_always=True).take(lambda s: 1.0, c0=1.0, known={}) == (grid("log")[0], 1.0)


@pytest.mark.parametrize("kind", ["log", "paper_code", "paper_text"])
@pytest.mark.parametrize("always", [False, True])
def test_registered_grids_build_their_own_grid(kind, always):
    class Settings:
        line_search_apply_always = always

    built = LINE_SEARCHES.build(kind, Settings())
    assert type(built) is GridSearch and built.candidates == grid(kind) and built.apply_always is always


def _flat_below(c0: float, start: float, end: float, level: float):
    """A loss along the line that falls from c0 as s grows, is exactly ``level`` on [start, end] (a stretch where
    the model has underflowed) and rises above c0 beyond it."""
    def loss(s: float) -> float:
        if s < start:
            return c0 - (c0 - level) * s / start * 0.5
        return level if s <= end else c0 + s
    return loss


def test_a_decrease_found_on_a_flat_stretch_is_not_taken():
    """Backtracking from 1 first finds a decrease at 1/16, inside a stretch where the loss is exactly constant:
    the search would take it (its definition), ``take`` refuses it."""
    loss = _flat_below(10.0, 0.03, 0.1, 3.0)
    s_star, value, _ = Backtracking().search(loss, c0=10.0)
    assert (s_star, value) == (0.0625, 3.0)
    assert on_plateau(loss, s_star, value, 10.0)
    assert Backtracking().take(loss, c0=10.0, known={}) is None
    # the same decrease where the loss still changes around it is taken, at the cost of one probe
    sloped = lambda s: 3.0 + (s - 0.0625) if s <= 0.1 else 10.0 + s  # noqa: E731
    calls: dict[float, float] = {}
    assert Backtracking().take(sloped, c0=10.0, known=calls) == (0.0625, 3.0)
    assert 0.0625 * (1 + PLATEAU_PROBE) in calls and 0.0625 * (1 - PLATEAU_PROBE) not in calls


@given(curvature=st.floats(1e-6, 1e6), s_min=st.floats(1e-6, 10.0), floor=st.floats(0.0, 1e6))
def test_a_smooth_line_minimum_is_never_a_plateau(curvature, s_min, floor):
    """At the exact minimiser s₀ of a quadratic a(s − s₀)² + b, where the first-order change vanishes: either the
    decrease from s = 0 is too small for the probes to tell (nothing is probed), or they see the second-order
    change."""
    loss = lambda s: curvature * (s - s_min) ** 2 + floor  # noqa: E731
    assert not on_plateau(loss, s_min, loss(s_min), loss(0.0))


def test_a_decrease_of_a_few_ulps_is_taken_without_probes():
    """At a fit's noise floor the loss falls by ulps: a flat loss around such a point proves nothing, so it is
    taken as before, and no probe is evaluated."""
    c0 = 6.10739654068331e-05
    lower = c0 - 2 * math.ulp(c0)
    calls: dict[float, float] = {}
    assert Backtracking().take(lambda s: lower if s <= 0.5 else c0, c0=c0, known=calls) == (0.5, lower)
    assert sorted(calls) == [0.5, 1.0]  # (the search: 1, 0.5, then doubling back to 1)
