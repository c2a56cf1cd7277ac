"""LevenbergMarquardt end to end: convergence, checkpoints, determinism, features, bad input, failures."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import marquardt
from marquardt import LevenbergMarquardt
from tests.models import paper_cnn, sine_data, sine_mlp


def test_linear_least_squares_in_one_step():
    torch.manual_seed(0)
    model = nn.Linear(5, 2).double()
    x = torch.randn(50, 5, dtype=torch.float64)
    y = x @ torch.randn(5, 2, dtype=torch.float64) + 0.3
    opt = LevenbergMarquardt(model, "mse", lam_init=1e-12, momentum=None)
    info = opt.step(x, y)
    assert info.accepted and info.reason == "downhill"
    assert info.loss_after < 1e-18
    assert opt.step(x, y).grad_norm_inf < 1e-9


def test_noisy_sine_reaches_the_noise_floor():
    x, y = sine_data()
    model = sine_mlp()
    opt = LevenbergMarquardt(model, "mse")
    losses = [opt.step(x, y).loss_after for _ in range(100)]
    mse = 2 * losses[-1]  # the LM objective is ½ mean squared error
    assert mse < 1.3 * 0.2**2 / 12  # within 30% of the noise variance 0.0033
    assert all(b <= a * 1.0000001 for a, b in zip(losses, losses[1:])), "uphill is off: losses never increase"


def test_state_dict_resume_is_bit_identical():
    x, y = sine_data(200)
    model_a = sine_mlp(8)
    model_b = copy.deepcopy(model_a)
    opt_a = LevenbergMarquardt(model_a, "mse")
    for _ in range(10):
        opt_a.step(x, y)
    opt_b = LevenbergMarquardt(model_b, "mse")
    for _ in range(5):
        opt_b.step(x, y)
    checkpoint = copy.deepcopy((model_b.state_dict(), opt_b.state_dict()))
    model_c = sine_mlp(8, seed=123)
    model_c.load_state_dict(checkpoint[0])
    opt_c = LevenbergMarquardt(model_c, "mse")
    opt_c.load_state_dict(checkpoint[1])
    for _ in range(5):
        opt_c.step(x, y)
    for pa, pc in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(pa, pc)
    assert opt_c.state_dict()["state"][0]["lam"] == opt_a.state_dict()["state"][0]["lam"]


def test_same_seed_same_result():
    x, y = sine_data(200)
    results = []
    for _ in range(2):
        model = sine_mlp(8, seed=7)
        opt = LevenbergMarquardt(model, "mse", uphill=True, geodesic=True)
        for _ in range(5):
            opt.step(x, y)
        results.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_dual_and_primal_take_the_same_steps():
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)  # 12 rows < 38 params
    base = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    thetas = []
    for solver in ("primal", "dual"):
        model = copy.deepcopy(base)
        opt = LevenbergMarquardt(model, "mse", solver=solver)
        infos = [opt.step(x, y) for _ in range(4)]
        assert {i.form for i in infos} == {solver}
        thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(thetas[0], thetas[1], rtol=1e-8, atol=1e-10)
    assert LevenbergMarquardt(copy.deepcopy(base), "mse").step(x, y).form == "dual"  # auto picks the smaller side


@pytest.mark.parametrize("curvature", ["ggn", "ef"])
def test_paper_cnn_with_rrelu(curvature):
    torch.manual_seed(0)
    model = paper_cnn()
    assert sum(p.numel() for p in model.parameters()) == 2202
    batch = 64 if curvature == "ef" else 300  # ef: 64 rows < 2202 params (dual); ggn: 3000 rows (primal)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    opt = LevenbergMarquardt(model, "cross_entropy", curvature=curvature)
    infos = [opt.step(x, y) for _ in range(3)]
    assert infos[0].engine == "fast"
    assert infos[0].form == ("dual" if curvature == "ef" else "primal")
    assert infos[-1].loss_after < infos[0].loss_before
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "options",
    [
        {"preset": "paper"},
        {"preset": "vanilla"},
        {"momentum": None, "line_search": None},
        {"momentum": "olmam"},
        {"uphill": True},
        {"geodesic": True},
        {"damping": "levenberg"},
        {"damping": "marquardt"},
        {"lambda_rule": "nielsen"},
        {"line_search": "backtrack"},
        {"engine": "functorch"},
        {"engine": "full"},
        {"loss_scale": "sum"},
        {"solve_dtype": torch.float32},
        {"accumulate_dtype": torch.float64},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_every_feature_runs_and_decreases_the_loss(options):
    x, y = sine_data(300)
    model = sine_mlp(10)
    opt = LevenbergMarquardt(model, "mse", **options)
    infos = [opt.step(x, y) for _ in range(15)]
    assert infos[-1].loss_after < infos[0].loss_before
    for info in infos:
        assert math.isfinite(info.loss_after) and info.forward_passes >= 1 and info.solves >= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_frozen_and_scalar_parameters():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(1, 8)
            self.head = nn.Linear(8, 1)
            self.gain = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            return self.gain * self.head(torch.tanh(self.body(x)))

    x, y = sine_data(100)
    model = Model()
    model.body.requires_grad_(False)
    frozen = model.body.weight.detach().clone()
    opt = LevenbergMarquardt(model, "mse")
    for _ in range(5):
        info = opt.step(x, y)
    assert torch.equal(model.body.weight, frozen)
    assert info.engine == "functorch"  # the 0-dim gain is outside Linear/Conv layers


def test_nonfinite_trial_is_rejected():
    class Sqrt(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = nn.Parameter(torch.tensor([1e-3], dtype=torch.float64))

        def forward(self, x):
            return torch.sqrt(self.t) * x  # NaN as soon as a step makes t negative

    model = Sqrt()
    x = torch.ones(4, 1, dtype=torch.float64)
    y = torch.full((4, 1), -1.0, dtype=torch.float64)  # pulls t below zero
    opt = LevenbergMarquardt(model, "mse", lam_init=1e-8, momentum=None, line_search=None, max_attempts=1)
    info = opt.step(x, y)
    assert torch.isfinite(model.t).all()
    assert info.reason in ("rejected", "downhill")
    if info.reason == "rejected":
        assert info.lam > 1e-8 and float(model.t) == 1e-3


@pytest.mark.parametrize("lambda_rule", ["delayed", "nielsen"])
def test_losses_near_the_float64_limit_do_not_crash(lambda_rule):
    """Targets of 1e150 make the loss ~1e300: LMAM's and Nielsen's squares overflow a Python float, which
    raised OverflowError from inside step(); now momentum falls back to the LM step and λ stays bounded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x = torch.randn(50, 3, dtype=torch.float64)
    y = torch.full((50, 2), 1e150, dtype=torch.float64)
    opt = LevenbergMarquardt(model, "mse", lambda_rule=lambda_rule)
    losses = [opt.step(x, y).loss_after for _ in range(5)]
    assert all(math.isfinite(c) for c in losses) and losses[-1] < losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_exception_inside_step_restores_parameters(monkeypatch):
    x, y = sine_data(100)
    model = sine_mlp(6)
    before = [p.detach().clone() for p in model.parameters()]
    opt = LevenbergMarquardt(model, "mse")
    calls = {"n": 0}
    original = opt.objective.loss_at

    def failing(theta, *args):
        calls["n"] += 1
        original(theta, *args)  # writes the trial parameters into the model, then fails
        raise RuntimeError("boom")

    monkeypatch.setattr(opt.objective, "loss_at", failing)
    with pytest.raises(RuntimeError, match="boom"):
        opt.step(x, y)
    assert calls["n"] == 1
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


class TestBadInput:
    def test_nonfinite_inputs_change_nothing(self):
        x, y = sine_data(50)
        model = sine_mlp(4)
        before = [p.detach().clone() for p in model.parameters()]
        opt = LevenbergMarquardt(model, "mse")
        x[3] = float("nan")
        with pytest.raises(ValueError, match="inputs: contains NaN or Inf"):
            opt.step(x, y)
        y2 = y.clone()
        y2[0] = float("inf")
        with pytest.raises(ValueError, match="targets: contains NaN or Inf"):
            opt.step(sine_data(50)[0], y2)
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))

    def test_dtype_and_shape_mismatches(self):
        x, y = sine_data(50)
        opt = LevenbergMarquardt(sine_mlp(4), "mse")
        with pytest.raises(ValueError, match=r"inputs: dtype torch.float64 does not match"):
            opt.step(x.double(), y)
        with pytest.raises(ValueError, match=r"targets: expected the shape of the model output"):
            opt.step(x, y[:, 0])
        with pytest.raises(ValueError, match=r"batch size 49 does not match"):
            opt.step(x, y[:49])

    def test_labels_out_of_range(self):
        opt = LevenbergMarquardt(nn.Linear(4, 3), "cross_entropy")
        with pytest.raises(ValueError, match=r"class indices must lie in \[0, 2\]"):
            opt.step(torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0]))

    def test_no_trainable_parameters(self):
        with pytest.raises(ValueError, match="no trainable parameters"):
            LevenbergMarquardt(nn.Linear(2, 2).requires_grad_(False), "mse")

    def test_invalid_options(self):
        with pytest.raises(ValueError, match="Invalid damping value"):
            LevenbergMarquardt(nn.Linear(2, 2), "mse", damping="none")
        with pytest.raises(ValueError, match="Invalid lam_init value"):
            LevenbergMarquardt(nn.Linear(2, 2), "mse", lam_init=-1.0)
        with pytest.raises(TypeError, match="unknown option .lamda.; did you mean .lambda_"):
            LevenbergMarquardt(nn.Linear(2, 2), "mse", lamda=1.0)
        with pytest.raises(ValueError, match="preset"):
            LevenbergMarquardt(nn.Linear(2, 2), "mse", preset="fastest")
        with pytest.raises(ValueError, match="geodesic"):
            LevenbergMarquardt(nn.Linear(2, 2), "cross_entropy", curvature="ef", geodesic=True)

    def test_problem_too_large_names_sizes_and_options(self):
        model = nn.Linear(200, 10)  # 2010 parameters
        opt = LevenbergMarquardt(model, "mse", memory_budget=2**20, solver="primal")
        before = model.weight.detach().clone()
        with pytest.raises(ValueError, match=r"2010 x 2010 curvature needs [0-9.]+ MiB .* memory_budget is 1\.0 MiB.*dual"):
            opt.step(torch.randn(400, 200), torch.randn(400, 10))
        assert torch.equal(model.weight, before)

    def test_budget_too_small_for_one_row(self):
        n = 1010  # float32 accumulation, float64 copy and workspace: 20 bytes per entry; one sample's rows: 121 kB
        opt = LevenbergMarquardt(nn.Linear(100, 10), "mse", memory_budget=n * n * 20 + 50_000)
        with pytest.raises(ValueError, match=r"less than the [0-9.]+ MiB that the Jacobian rows of one sample need"):
            opt.step(torch.randn(300, 100), torch.randn(300, 10))

    def test_rows_are_streamed_in_chunks(self, monkeypatch):
        from marquardt.solve.primal import KroneckerPrimalSystem, PrimalSystem

        sizes = []
        original = PrimalSystem.add
        monkeypatch.setattr(PrimalSystem, "add", lambda self, rows, rho: (sizes.append(rows.shape[0]), original(self, rows, rho)))
        original_factors = KroneckerPrimalSystem.add  # the factored accumulation streams the same chunks
        monkeypatch.setattr(KroneckerPrimalSystem, "add",
                            lambda self, rows, rho: (sizes.append(rows.m), original_factors(self, rows, rho)))
        x, y = sine_data(3000)
        model = sine_mlp(20)
        n = sum(p.numel() for p in model.parameters())
        budget = n * n * 20 + 300 * 3 * n * 4  # float32 A, float64 copy and workspace, plus 300 samples of rows
        LevenbergMarquardt(model, "mse", memory_budget=budget, solve_dtype=torch.float64).step(x, y)
        assert sizes == [300] * 10

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_device_mismatch(self):
        opt = LevenbergMarquardt(nn.Linear(2, 1).cuda(), "mse")
        with pytest.raises(ValueError, match=r"inputs: on cpu but the model's parameters are on cuda"):
            opt.step(torch.randn(3, 2), torch.randn(3, 1))


def test_fit_reports_convergence_and_progress():
    x, y = sine_data(200)
    opt = LevenbergMarquardt(sine_mlp(6), "mse")
    result = marquardt.fit(opt, x, y, max_iterations=300, ftol=1e-3, progress=True)
    assert result.converged and result.reason in ("ftol", "xtol", "gtol", "lam_max")
    assert result.history[-1].converged == result.reason
    with pytest.raises(ValueError, match="ftol"):
        marquardt.fit(opt, x, y, ftol=-1)


def test_is_a_torch_optimizer():
    opt = LevenbergMarquardt(nn.Linear(2, 1), "mse", lam_init=0.5)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lambda_init"] == 0.5 and opt.config.lam.initial == 0.5
    with pytest.raises(ValueError, match="one param group"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})


def test_lambda_floor_applies_to_changing_batches_only():
    x, y = sine_data(400)
    full = LevenbergMarquardt(sine_mlp(8), "mse")
    lams_full = [full.step(x, y).lam for _ in range(12)]
    assert min(lams_full) < 0.1 and not full.state_dict()["state"][0]["minibatch"]
    mini = LevenbergMarquardt(sine_mlp(8), "mse")
    g = torch.Generator().manual_seed(0)
    lams = []
    for _ in range(12):
        idx = torch.randperm(400, generator=g)[:100]
        lams.append(mini.step(x[idx], y[idx]).lam)
    assert mini.state_dict()["state"][0]["minibatch"]
    assert min(lams[1:]) >= 1.0  # from the second batch on, the floor lam_min_minibatch = 1 holds
    off = LevenbergMarquardt(sine_mlp(8), "mse", lam_min_minibatch=None)
    for _ in range(12):
        idx = torch.randperm(400, generator=g)[:100]
        info = off.step(x[idx], y[idx])
    assert info.lam < 1.0


EVEN, ODD, ALL = slice(0, 8, 2), slice(1, 9, 2), slice(0, 10)  # stride 10 // 4 = 2, offset = step % 2


@pytest.mark.parametrize("solver,setting,subsets", [
    ("primal", 4, (EVEN, ODD)), ("dual", 4, (EVEN, ODD)), ("dual", 0.4, (EVEN, ODD)),
    # a schedule: 4 samples at step 0, the whole batch at step 1, 0.4 of it from step 2 (offset 2 % 2 = 0)
    ("dual", {0: 4, 1: None, 2: 0.4}, (EVEN, ALL, EVEN)), ("primal", {0: 1.0, 1: 4}, (ALL, ODD)),
])
def test_subsampled_curvature_step_follows_its_formula(solver, setting, subsets):
    """curvature_samples=m: δ = −(A_m + λ diag d)⁻¹ g, A_m = (1/m) Σ_{i∈S} JᵢᵀJᵢ over every (N//m)-th sample S
    (offset by the step), and g the full-batch gradient; a schedule picks m per step."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randn(10, 2, dtype=torch.float64)
    opt = marquardt.LevenbergMarquardt(model, "mse", curvature_samples=setting, solver=solver, momentum=None,
                                       line_search=None, lam_init=5.0)
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def out(flat, xx):
        split = dict(zip(params, torch.split(flat, [v.numel() for v in params.values()])))
        return torch.func.functional_call(model, {k: split[k].view_as(params[k]) for k in params}, (xx,))

    d = torch.full_like(theta0, 0.01)
    lam = 5.0
    for step, subset in enumerate(subsets):
        theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        m = x[subset].shape[0]
        J = torch.func.jacrev(lambda t, s=subset: out(t, x[s]))(theta0).reshape(m * 2, -1)
        A = J.T @ J / m
        g = torch.func.grad(lambda t: 0.5 * (out(t, x) - y).pow(2).sum(dim=1).mean())(theta0)
        d = torch.maximum(d, A.diagonal())
        expected = -torch.linalg.solve(A + lam * torch.diag(d), g)
        info = opt.step(x, y)
        assert info.accepted and info.attempts == 1 and info.form == solver, (step, info)
        assert info.curvature_samples == m
        lam = info.lam
        theta1 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(theta1 - theta0, expected, rtol=1e-9, atol=1e-12)


def test_subsampled_curvature_with_all_samples_is_the_plain_step():
    torch.manual_seed(4)
    results = []
    for m in (None, 64, 1000):
        model = paper_cnn(0)
        opt = marquardt.LevenbergMarquardt(model, "cross_entropy", curvature_samples=m)
        torch.manual_seed(5)
        x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
        torch.manual_seed(6)  # the same RReLU draw for every run
        info = opt.step(x, y)
        results.append((info.loss_after, torch.cat([p.detach().reshape(-1) for p in model.parameters()])))
    for loss, theta in results[1:]:
        assert loss == results[0][0]
        torch.testing.assert_close(theta, results[0][1], rtol=0, atol=0)


def test_subsampled_curvature_with_rrelu_reduces_the_loss():
    torch.manual_seed(7)
    model = paper_cnn(1)
    opt = marquardt.LevenbergMarquardt(model, "cross_entropy", curvature_samples=16)
    x, y = torch.randn(96, 1, 28, 28), torch.randint(0, 10, (96,))
    losses = [opt.step(x, y).loss_after for _ in range(4)]
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("bad", [0, -3, 0.0, 1.5, True, "half", {1: 0.5}, {0: 0.5, -1: None}, {0: 0},
                                 {0: 0.25, 2.5: None}, {0: 0.25, True: None}])
def test_curvature_samples_is_validated(bad):
    with pytest.raises(ValueError, match="curvature_samples"):
        marquardt.LevenbergMarquardt(nn.Linear(2, 1), "mse", curvature_samples=bad)


def test_curvature_samples_needs_a_model_loss_and_no_geodesic():
    with pytest.raises(ValueError, match="curvature_samples"):
        marquardt.LevenbergMarquardt(nn.Linear(2, 1), lambda z, y: z - y, curvature_samples=4)
    with pytest.raises(ValueError, match="curvature_samples"):
        marquardt.LevenbergMarquardt(nn.Linear(2, 1), "mse", curvature_samples=4, geodesic=True)
    with pytest.raises(ValueError, match="curvature_samples"):
        marquardt.LevenbergMarquardt(nn.Linear(2, 1), "mse", curvature_samples={0: None, 5: 4}, geodesic=True)
    marquardt.LevenbergMarquardt(nn.Linear(2, 1), "mse", curvature_samples={0: None}, geodesic=True)  # never subsampled


def test_line_search_never_reevaluates_the_trial_point():
    """Backtracking starts at the failed trial point (s = 1) and may double back to it: its loss is reused."""
    x, y = sine_data(200)
    model = sine_mlp(8)
    opt = LevenbergMarquardt(model, "mse", lam_init=1e-7, max_attempts=1, line_search="backtrack", momentum=None)
    evaluated = []
    loss_at = opt.objective.loss_at

    def recording(theta, *args):
        evaluated.append(theta.clone())
        return loss_at(theta, *args)

    opt.objective.loss_at = recording
    reasons = []
    for _ in range(6):
        evaluated.clear()
        info = opt.step(x, y)
        reasons.append(info.reason)
        assert len(evaluated) == len({tuple(t.tolist()) for t in evaluated}), "a point was evaluated twice"
        assert info.forward_passes == 1 + len(evaluated)  # the curvature pass, then each distinct trial point
    assert "line_search" in reasons
