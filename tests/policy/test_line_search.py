"""Line searches: the paper's grids and our backtracking against their definitions."""

from __future__ import annotations

import math

import pytest

from marquardt.policy.line_search import LINE_SEARCHES, Backtracking, GridSearch, grid


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
