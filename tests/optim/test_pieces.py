"""The optimizer as a loop over swappable pieces: user-written policies and solvers plug in with no edit to it."""

from __future__ import annotations

import pytest
import torch

from marquardt import LevenbergMarquardt
from marquardt.policy.acceptance import Acceptance
from marquardt.policy.damping import Damping, MaxDiagonal
from marquardt.policy.lam import LAMBDA_RULES, FactorRule, LambdaBounds, LambdaRule
from marquardt.policy.line_search import Backtracking
from marquardt.policy.momentum import LMAM
from marquardt.solve.choose import SOLVERS, Candidate, register_solver
from marquardt.solve.primal import PrimalSystem
from tests.models import sine_data, sine_mlp


def _run(steps: int = 8, **options):
    x, y = sine_data(200, dtype=torch.float64)
    model = sine_mlp(8).double()
    opt = LevenbergMarquardt(model, "mse", **options)
    infos = [opt.step(x, y) for _ in range(steps)]
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), infos


class CountingRule(LambdaRule):
    """A user's λ rule: delayed gratification written out, counting its calls."""

    def __init__(self) -> None:
        self.calls = {"accepted": 0, "rejected": 0}

    def accepted(self, lam: float, nu: float, gain_ratio: float | None, bounds: LambdaBounds) -> tuple[float, float]:
        self.calls["accepted"] += 1
        return max(lam / 3.0, bounds.minimum), nu

    def rejected(self, lam: float, nu: float, bounds: LambdaBounds) -> tuple[float, float]:
        self.calls["rejected"] += 1
        return min(lam * 2.0, bounds.maximum), nu


def test_a_user_lambda_rule_object_replaces_the_registered_one():
    rule = CountingRule()
    mine, infos = _run(lambda_rule=rule)
    reference, _ = _run()
    assert torch.equal(mine, reference)  # the same arithmetic as 'delayed', so the same trajectory bit for bit
    assert rule.calls["accepted"] == sum(i.reason in ("downhill", "uphill") for i in infos)
    assert rule.calls["rejected"] > 0


def test_a_registered_user_rule_is_chosen_by_name():
    name = "halving_test_rule"
    if name not in LAMBDA_RULES.names():
        LAMBDA_RULES.register(name)(lambda settings: FactorRule(settings.up, 2.0))
    mine, _ = _run(lambda_rule=name, lambda_down=2.0)
    reference, _ = _run(lambda_rule=FactorRule(2.0, 2.0))
    assert torch.equal(mine, reference)


class AlwaysReject(Acceptance):
    def decide(self, c0, c1, delta_lm, previous_step):
        return None


class HalfDamping(Damping):
    """A user's damping that wraps the library's running maximum."""

    def __init__(self) -> None:
        self.inner = MaxDiagonal()

    def update(self, d, system):
        self.inner.update(d, system)
        return d


def test_user_acceptance_damping_momentum_and_line_search_objects():
    _, infos = _run(steps=3, acceptance=AlwaysReject(), line_search=None)
    assert all(i.reason == "rejected" and not i.accepted for i in infos)
    damping = HalfDamping()
    mine, _ = _run(damping=damping, momentum=LMAM(kappa=0.5), line_search=Backtracking())
    reference, _ = _run()
    assert torch.equal(mine, reference)
    with pytest.raises(ValueError, match="Invalid damping value"):
        LevenbergMarquardt(sine_mlp(2), "mse", damping=MaxDiagonal)  # the class, not an instance


class SolveBySvd(PrimalSystem):
    """A user's solver form: the primal system solved by an SVD-based least-squares solve (rank-revealing)."""

    form = "primal"

    def solve(self, lam, rhs):
        assert self.d is not None
        damped = self.A + lam * torch.diag(self.d)
        x = torch.linalg.lstsq(damped, rhs.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        return x, bool(torch.isfinite(x).all())

    def lm_step(self, lam, keep_factor=False):
        return self.solve(lam, -self.g)


def test_a_registered_solver_is_one_class_and_one_entry():
    if "svd_test" not in SOLVERS:
        register_solver("svd_test", lambda chooser, problem, precision: Candidate(
            SolveBySvd, SolveBySvd.footprint(problem, precision), dtype_size=problem.parameters))
    mine, infos = _run(solver="svd_test")
    reference, _ = _run(solver="primal")
    assert all(i.form == "primal" for i in infos)
    torch.testing.assert_close(mine, reference, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="already a solver name"):
        register_solver("primal", SOLVERS["primal"])


def test_the_counters_add_up_over_attempts_and_steps():
    """A tiny λ, no line search and 3 attempts: some steps are rejected after several solves. Each result counts
    its own solves (one per attempt, without geodesic), and the state sums them over the steps."""
    _, infos = _run(steps=5, lam_init=1e-9, line_search=None, max_attempts=3, momentum=None)
    assert any(i.attempts > 1 for i in infos)
    assert all(i.solves == i.attempts for i in infos)
    x, y = sine_data(200, dtype=torch.float64)
    opt = LevenbergMarquardt(sine_mlp(8).double(), "mse", lam_init=1e-9, line_search=None, max_attempts=3)
    total = sum(opt.step(x, y).solves for _ in range(4))
    assert opt._state["solves"] == total and opt._state["step"] == 4


def test_a_rejected_step_reports_no_multiplier_and_no_change():
    _, infos = _run(steps=4, lam_init=1e-9, line_search=None, max_attempts=1, momentum=None)
    rejected = [i for i in infos if not i.accepted]
    assert rejected and all(i.multiplier == 0.0 and i.reason == "rejected" for i in rejected)
    assert all(i.loss_after == i.loss_before for i in rejected)


def test_a_failed_factorisation_moves_lambda_by_the_rule_and_says_so(monkeypatch):
    """The first solve fails: Nielsen's rule multiplies λ by ν (2) and doubles ν, the note names λ, and the next
    attempt solves at the larger λ."""
    calls = []
    original = PrimalSystem.lm_step

    def failing_once(self, lam, keep_factor=False):
        calls.append(lam)
        if len(calls) == 1:
            return torch.zeros_like(self.g), False
        return original(self, lam, keep_factor=keep_factor)

    monkeypatch.setattr(PrimalSystem, "lm_step", failing_once)
    x, y = sine_data(200, dtype=torch.float64)
    opt = LevenbergMarquardt(sine_mlp(8).double(), "mse", lambda_rule="nielsen", lambda_init=0.5, solver="primal",
                             momentum=None)
    info = opt.step(x, y)
    assert calls[:2] == [0.5, 1.0] and info.solves >= 2
    assert "factorisation failed at lambda=0.5" in info.notes
