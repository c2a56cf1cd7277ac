"""Factored rows of Linear layers and the PCG dual solve, against the explicit rows and the dense solves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import marquardt
from marquardt.curvature.jacobian import FastPathJacobian, NotApplicable
from marquardt.curvature.modes import make_curvature
from marquardt.solve.dual import DualSystem, FactoredDualSystem
from marquardt.solve.kronecker import kronecker_pays
from marquardt.solve.pcg import factored_dual_pays, preconditioned_cg
from marquardt.solve.primal import KroneckerPrimalSystem, PrimalSystem
from marquardt.types.layout import ParameterLayout
from marquardt.types.rows import FactoredRows, LinearFactors
from tests.conftest import requires_cuda


def deep_mlp():
    """Awkward widths: a 1-input first layer, a 1-output last layer, a bias-free middle layer."""
    return nn.Sequential(nn.Linear(1, 7), nn.ELU(), nn.Linear(7, 5, bias=False), nn.Tanh(), nn.Linear(5, 1)).double()


def wide_out_mlp():
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4)).double()


def frozen_weight_mlp():
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    model[0].weight.requires_grad_(False)  # the layer's bias still trains
    return model


MODELS = {"deep": (deep_mlp, 1, 1), "wide_out": (wide_out_mlp, 3, 4), "frozen_weight": (frozen_weight_mlp, 2, 3)}


def batch(model_name: str, mode: str, samples: int):
    build, n_in, n_out = MODELS[model_name]
    torch.manual_seed(3)
    model = build()
    x = torch.randn(samples, n_in, dtype=torch.float64)
    if mode == "gn":
        return model, x, torch.randn(samples, n_out, dtype=torch.float64), make_curvature("mse", "gn")
    return model, x, torch.randint(0, n_out, (samples,)), make_curvature("cross_entropy", mode)


CASES = [("deep", "gn"), ("wide_out", "gn"), ("wide_out", "ggn"), ("wide_out", "ef"), ("frozen_weight", "ggn")]


@pytest.mark.parametrize("model_name,mode", CASES)
@pytest.mark.parametrize("samples", [1, 9])
def test_factored_products_equal_the_explicit_rows(model_name, mode, samples):
    model, x, y, curvature = batch(model_name, mode, samples)
    layout = ParameterLayout.of(model)
    engine = FastPathJacobian(model, layout)
    J, rho, losses = engine.rows(x, y, curvature)
    rows, rho_f, losses_f = engine.factors(x, y, curvature)
    assert rows.m == J.shape[0] and rows.n == J.shape[1]
    torch.testing.assert_close(rho_f, rho)
    torch.testing.assert_close(losses_f, losses)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(J.shape[1], dtype=torch.float64, generator=g)
    w = torch.randn(J.shape[0], dtype=torch.float64, generator=g)
    torch.testing.assert_close(rows.matvec(v), J @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows.rmatvec(w), J.T @ w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows.column_sq_norms(), (J * J).sum(0), rtol=1e-12, atol=1e-12)


def test_factors_refuse_positional_inputs():
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 1)).double()
    engine = FastPathJacobian(model, ParameterLayout.of(model))
    with pytest.raises(NotApplicable, match="batch, features"):
        engine.factors(torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 1, dtype=torch.float64),
                       make_curvature("mse", "gn"))


@pytest.mark.parametrize("chunks", [1, 3])
def test_approximate_gram_is_exact_for_rank_one_damping(chunks):
    """With d_inv = u vᵀ on every layer (e.g. a constant), the Hadamard-product Gram is 𝒥 D⁻¹ 𝒥ᵀ itself
    (4 rows per sample here: the inputs' Gram is formed per sample and spread to the rows, across chunks)."""
    model, x, y, curvature = batch("wide_out", "ggn", 7)
    layout = ParameterLayout.of(model)
    engine = FastPathJacobian(model, layout)
    parts = torch.arange(7).chunk(chunks)
    J = torch.cat([engine.rows(x[p], y[p], curvature)[0] for p in parts])
    rows = FactoredRows.cat([engine.factors(x[p], y[p], curvature)[0] for p in parts])
    assert rows.sample_of_row is not None and rows.m == J.shape[0]
    d_inv = torch.empty(layout.numel, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    for f in rows.layers:  # weight and bias of each layer: one rank-one [out, in + 1] pattern
        out_f, in_f = f.signals.shape[1], f.inputs.shape[1]
        u = torch.rand(out_f, 1, dtype=torch.float64, generator=g) + 0.5
        v = torch.rand(1, in_f + 1, dtype=torch.float64, generator=g) + 0.5
        E = u * v
        d_inv[f.weight] = E[:, :in_f].reshape(-1)
        d_inv[f.bias] = E[:, in_f]
    K = rows.approximate_gram(d_inv, torch.float64)
    torch.testing.assert_close(K, (J * d_inv) @ J.T, rtol=1e-10, atol=1e-12)


def test_approximate_gram_is_within_the_damping_spread():
    """For any positive d_inv, K̃ and K are sums of the same PSD terms with weights within the spread c of the
    rank-one fit, so the generalized eigenvalues of (K, K̃) lie within [min ratio, max ratio]."""
    model, x, y, curvature = batch("deep", "gn", 30)
    layout = ParameterLayout.of(model)
    engine = FastPathJacobian(model, layout)
    J, _, _ = engine.rows(x, y, curvature)
    rows, _, _ = engine.factors(x, y, curvature)
    d_inv = torch.rand(layout.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 10 + 0.1
    mu = 1e-3
    K = (J * d_inv) @ J.T + mu * torch.eye(rows.m, dtype=torch.float64)
    K_approx = rows.approximate_gram(d_inv, torch.float64) + mu * torch.eye(rows.m, dtype=torch.float64)
    L = torch.linalg.cholesky(K_approx)
    M = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, K, upper=False).T, upper=False)
    eig = torch.linalg.eigvalsh((M + M.T) / 2)
    ratio = d_inv.max() / d_inv.min()  # a crude bound on the spread of d_inv over its rank-one fit
    assert float(eig.min()) >= 1 / float(ratio) - 1e-9 and float(eig.max()) <= float(ratio) + 1e-9
    assert float(eig.max() / eig.min()) < float(ratio)  # and the preconditioner helps


def test_preconditioned_cg_solves_and_reports():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(40, 60, dtype=torch.float64, generator=g)
    A = X @ X.T + 0.1 * torch.eye(40, dtype=torch.float64)
    b = torch.randn(40, dtype=torch.float64, generator=g)
    exact = torch.linalg.solve(A, b)
    plain = preconditioned_cg(lambda p: A @ p, lambda r: r, b, 1e-12, 500)
    assert plain.converged
    torch.testing.assert_close(plain.x, exact, rtol=1e-9, atol=1e-10)
    perfect = preconditioned_cg(lambda p: A @ p, lambda r: torch.linalg.solve(A, r), b, 1e-12, 500)
    assert perfect.converged and perfect.iterations <= 2
    short = preconditioned_cg(lambda p: A @ p, lambda r: r, b, 1e-12, 3)
    assert not short.converged and short.iterations == 3 and short.relative_residual > 1e-12
    indefinite = preconditioned_cg(lambda p: -(A @ p), lambda r: r, b, 1e-12, 50)
    assert not indefinite.converged
    zero = preconditioned_cg(lambda p: A @ p, lambda r: r, torch.zeros(40, dtype=torch.float64), 1e-12, 5)
    assert zero.converged and not zero.x.any()


def _systems(model_name: str, mode: str, samples: int, chunks: int):
    """The primal, dense dual and factored dual systems of one batch (rows streamed in `chunks` pieces)."""
    model, x, y, curvature = batch(model_name, mode, samples)
    layout = ParameterLayout.of(model)
    engine = FastPathJacobian(model, layout)
    alpha = 1.0 / samples
    cpu = torch.device("cpu")
    primal = PrimalSystem(layout.numel, alpha, torch.float64, cpu)
    dense = DualSystem(layout.numel, alpha, torch.float64, cpu)
    factored = FactoredDualSystem(layout.numel, alpha, torch.float64, cpu, tol=1e-13)
    for part in torch.arange(samples).chunk(chunks):
        J, rho, _ = engine.rows(x[part], y[part], curvature)
        primal.add(J, rho)
        dense.add(J, rho)
        factored.add(*engine.factors(x[part], y[part], curvature)[:2])
    for system in (primal, dense, factored):
        system.finalize()
    return primal, dense, factored, layout


@pytest.mark.parametrize("model_name,mode", CASES)
@pytest.mark.parametrize("chunks", [1, 3])
def test_factored_dual_step_equals_the_dense_solves(model_name, mode, chunks):
    primal, dense, factored, layout = _systems(model_name, mode, 6, chunks)
    torch.testing.assert_close(factored.g, primal.g, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(factored.diagonal(), primal.diagonal(), rtol=1e-12, atol=1e-14)
    d = primal.diagonal().clamp_min(0.01) * (1 + torch.rand(layout.numel, dtype=torch.float64,
                                                             generator=torch.Generator().manual_seed(5)))
    for system in (primal, dense, factored):
        system.set_damping(d)
    s = torch.randn(layout.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert factored.quadratic(s) == pytest.approx(primal.quadratic(s), rel=1e-12)
    for lam in (1e-3, 0.5, 50.0):
        expected, ok = primal.lm_step(lam)
        assert ok
        for keep in (False, True):
            x_f, ok_f = factored.lm_step(lam, keep_factor=keep)
            assert ok_f
            torch.testing.assert_close(x_f, expected, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(x_f, dense.lm_step(lam)[0], rtol=1e-8, atol=1e-10)
        # a general right-hand side (the subsampled-curvature and momentum solves)
        x_g, ok_g = factored.solve(lam, s)
        assert ok_g
        torch.testing.assert_close(x_g, primal.solve(lam, s)[0], rtol=1e-8, atol=1e-10)
    assert len(factored.cg_iterations) > 0 and max(factored.cg_iterations) <= factored.max_iter


def test_factored_dual_reports_a_failed_solve():
    """CG that cannot reach the tolerance within max_iter is a failed solve (the optimizer raises λ)."""
    _, _, factored, layout = _systems("wide_out", "gn", 8, 1)
    factored.max_iter = 1
    factored.set_damping(torch.rand(layout.numel, dtype=torch.float64) * 100 + 1e-3)
    _, ok = factored.lm_step(1e-6)
    assert not ok


def _sine(samples=40):
    x = torch.linspace(-3, 3, samples, dtype=torch.float64).unsqueeze(1)
    return x, torch.sin(x)


def _mlp(width=12, dtype=torch.float64):
    """The 1-w-w-1 ELU MLP of the sine task, seeded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, width), nn.ELU(), nn.Linear(width, width), nn.ELU(), nn.Linear(width, 1))
    return model.to(dtype)


@pytest.mark.parametrize("options", [{}, {"geodesic": True}, {"curvature_samples": 0.5}, {"uphill": True},
                                     {"damping": "marquardt"}, {"damping": "levenberg"}, {"preset": "paper"}])
def test_optimizer_pcg_follows_the_cholesky_trajectory(options):
    """Twelve steps with the factored PCG dual solve and with the dense Cholesky one stay together."""
    x, y = _sine()
    runs = {}
    for method in ("pcg", "cholesky"):
        model = _mlp()
        opt = marquardt.LevenbergMarquardt(model, "mse", solver="dual", dual_method=method, **options)
        results = [opt.step(x, y) for _ in range(12)]
        runs[method] = (model, results)
    (m_pcg, r_pcg), (m_chol, r_chol) = runs["pcg"], runs["cholesky"]
    assert all(r.cg_iterations is not None and r.cg_iterations > 0 for r in r_pcg)
    assert all(r.cg_iterations is None for r in r_chol)
    assert [r.accepted for r in r_pcg] == [r.accepted for r in r_chol]
    for a, b in zip(r_pcg, r_chol):
        assert a.loss_after == pytest.approx(b.loss_after, rel=1e-5)
    for p, q in zip(m_pcg.parameters(), m_chol.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_dual_method_auto_and_its_errors():
    x, y = _sine()
    small = marquardt.LevenbergMarquardt(_mlp(), "mse").step(x, y)  # 40 rows x 193 parameters: K is cheap
    assert small.form == "dual" and small.cg_iterations is None
    wide = _mlp(64)
    xw, yw = _sine(100)
    result = marquardt.LevenbergMarquardt(wide, "mse").step(xw, yw)  # 100 x 4353: the factored solve pays
    assert result.form == "dual" and result.cg_iterations is not None
    cnn = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 38, 1)).double()
    xc = x.T.unsqueeze(0).expand(3, 1, 40).contiguous()
    dense = marquardt.LevenbergMarquardt(cnn, "mse", solver="dual").step(xc, torch.zeros(3, 1, dtype=torch.float64))
    assert dense.form == "dual" and dense.cg_iterations is None  # a convolution: the rows are formed
    with pytest.raises(ValueError, match="dual_method='pcg'"):
        marquardt.LevenbergMarquardt(cnn, "mse", solver="dual", dual_method="pcg").step(
            xc, torch.zeros(3, 1, dtype=torch.float64))
    positional = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 40, 1)).double()
    xp = x.unsqueeze(0).expand(2, 40, 1).contiguous()
    fallback = marquardt.LevenbergMarquardt(positional, "mse", solver="dual")
    assert fallback.step(xp, torch.zeros(2, 1, dtype=torch.float64)).cg_iterations is None
    with pytest.raises(ValueError, match="dual_method"):
        marquardt.LevenbergMarquardt(_mlp(), "mse", dual_method="lu")
    with pytest.raises(ValueError, match="dual_tol"):
        marquardt.LevenbergMarquardt(_mlp(), "mse", dual_tol=2.0)


def test_linear_factors_shapes_document_the_layout():
    f = LinearFactors(torch.ones(4, 3), torch.ones(4, 2), slice(0, 6), slice(6, 8))
    rows = FactoredRows(8, 4, [f], torch.float32)
    assert rows.matvec(torch.ones(8)).shape == (4,) and rows.rmatvec(torch.ones(4)).shape == (8,)
    torch.testing.assert_close(rows.rmatvec(torch.ones(4)), torch.tensor([4.0] * 6 + [4.0] * 2))


def test_approximate_gram_reuses_its_workspace():
    model, x, y, curvature = batch("deep", "gn", 11)
    layout = ParameterLayout.of(model)
    rows, _, _ = FastPathJacobian(model, layout).factors(x, y, curvature)
    d_inv = torch.rand(layout.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(8)) + 0.2
    expected = rows.approximate_gram(d_inv, torch.float64)
    workspace: dict[str, torch.Tensor] = {}
    first = rows.approximate_gram(d_inv, torch.float64, workspace)
    first_ptr = first.data_ptr()
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    first.fill_(float("nan"))  # a stale buffer must be overwritten, not accumulated into
    again = rows.approximate_gram(d_inv, torch.float64, workspace)
    assert again.data_ptr() == first_ptr and set(workspace) == {"gram", "gram_signals", "gram_inputs"}
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_factored_dual_pays_where_it_was_measured_faster():
    sine = lambda w: [(w, 1), (w, w), (1, w)]  # noqa: E731 - the 1-w-w-1 MLP's (out, in) shapes
    assert not factored_dual_pays(100, 481, sine(20)) and not factored_dual_pays(400, 481, sine(20))
    assert not factored_dual_pays(250, 1153, sine(32)) and factored_dual_pays(800, 1153, sine(32))
    assert factored_dual_pays(250, 4353, sine(64)) and factored_dual_pays(250, 16897, sine(128))
    assert not factored_dual_pays(10_000, 40, [(4, 4), (4, 4)])  # narrow layers: the Grams cost as much as K


def test_pcg_training_resumes_bit_identically_from_a_checkpoint():
    x, y = _sine()
    straight = _mlp()
    opt = marquardt.LevenbergMarquardt(straight, "mse", solver="dual", dual_method="pcg")
    for _ in range(6):
        opt.step(x, y)
    first = _mlp()
    opt1 = marquardt.LevenbergMarquardt(first, "mse", solver="dual", dual_method="pcg")
    for _ in range(3):
        opt1.step(x, y)
    resumed = _mlp()
    resumed.load_state_dict(first.state_dict())
    opt2 = marquardt.LevenbergMarquardt(resumed, "mse", solver="dual", dual_method="pcg")
    opt2.load_state_dict(opt1.state_dict())
    for _ in range(3):
        opt2.step(x, y)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@requires_cuda
def test_pcg_dual_on_cuda_matches_the_cpu_steps():
    """The factored PCG dual on the GPU (cuSOLVER factor of the preconditioner) gives the CPU's steps."""
    x, y = _sine(100)
    models = {}
    for device in ("cpu", "cuda"):
        model = _mlp(64).to(device)
        opt = marquardt.LevenbergMarquardt(model, "mse", solver="dual", dual_method="pcg")
        results = [opt.step(x.to(device), y.to(device)) for _ in range(4)]
        assert all(r.cg_iterations is not None for r in results)
        models[device] = model
    for p, q in zip(models["cpu"].parameters(), models["cuda"].parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-6, atol=1e-8)


def test_factored_dual_fits_budgets_that_the_formed_rows_do_not():
    """1000 rows x 4353 parameters in 40 MiB: the rows and K (55 MB) and the primal matrix (152 MB) do not fit,
    the factored dual (K̃ and its buffers, 32 MB, and 2 MB of factors) does."""
    torch.manual_seed(0)
    x = torch.linspace(-3, 3, 1000).unsqueeze(1)
    y = torch.sin(x)
    forms = {}
    for method in ("auto", "cholesky"):
        model = _mlp(64, torch.float32)
        opt = marquardt.LevenbergMarquardt(model, "mse", memory_budget=40 * 2**20, dual_method=method)
        forms[method] = opt.step(x, y)
    assert forms["auto"].form == "dual" and forms["auto"].cg_iterations is not None
    assert forms["cholesky"].form == "block_diagonal"
    assert forms["auto"].loss_after < forms["auto"].loss_before


def test_float32_row_space_stops_at_its_rounding():
    """A tolerance below float32 rounding is clamped to it (4 eps), so CG converges instead of failing."""
    primal, _, _, layout = _systems("wide_out", "ggn", 9, 1)
    model, x, y, curvature = batch("wide_out", "ggn", 9)
    engine = FastPathJacobian(model, ParameterLayout.of(model))
    single = FactoredDualSystem(layout.numel, 1.0 / 9, torch.float32, torch.device("cpu"), tol=1e-14)
    single.add(*engine.factors(x, y, curvature)[:2])
    single.finalize()
    d = primal.diagonal().clamp_min(0.01)
    primal.set_damping(d)
    single.set_damping(d.float())
    step, ok = single.lm_step(0.3)
    assert ok and single.cg_iterations[-1] < single.max_iter
    torch.testing.assert_close(step.double(), primal.lm_step(0.3)[0], rtol=1e-4, atol=1e-6)


def kron_mlp():
    """Two weights where the Kronecker products pay (one bias-free) between small layers: every kind of block."""
    return nn.Sequential(nn.Linear(3, 33), nn.Tanh(), nn.Linear(33, 32, bias=False), nn.Tanh(), nn.Linear(32, 34),
                         nn.Tanh(), nn.Linear(34, 4)).double()


@pytest.mark.parametrize("mode", ["gn", "ggn"])
@pytest.mark.parametrize("chunks", [1, 3])
def test_kronecker_accumulation_equals_the_rows(mode, chunks):
    torch.manual_seed(7)
    model = kron_mlp()
    frozen = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 33), nn.Tanh(), nn.Linear(33, 4)).double()
    frozen[2].weight.requires_grad_(False)  # a large layer whose weight is frozen: its bias only
    for net, n_in in ((model, 3), (frozen, 2)):
        x = torch.randn(10, n_in, dtype=torch.float64)
        y = torch.randn(10, 4, dtype=torch.float64) if mode == "gn" else torch.randint(0, 4, (10,))
        curvature = make_curvature("mse", "gn") if mode == "gn" else make_curvature("cross_entropy", "ggn")
        layout = ParameterLayout.of(net)
        engine = FastPathJacobian(net, layout)
        cpu = torch.device("cpu")
        dense = PrimalSystem(layout.numel, 0.1, torch.float64, cpu)
        kron = KroneckerPrimalSystem(layout.numel, 0.1, torch.float64, cpu)
        for part in torch.arange(10).chunk(chunks):
            J, rho, _ = engine.rows(x[part], y[part], curvature)
            dense.add(J, rho)
            kron.add(*engine.factors(x[part], y[part], curvature)[:2])
        torch.testing.assert_close(kron.A, dense.A, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(kron.g, dense.g, rtol=1e-12, atol=1e-13)
        assert torch.equal(kron.A, kron.A.T)


def test_kronecker_pays_where_it_was_measured_faster():
    assert not kronecker_pays(24, 24) and kronecker_pays(32, 32) and kronecker_pays(64, 64)
    assert not kronecker_pays(4, 1024)  # a thin weight: its pair products would not save anything


def test_optimizer_kronecker_accumulation_follows_the_rows():
    x, y = _sine(60)
    runs = {}
    for method in ("factored", "rows"):
        model = _mlp(32)
        opt = marquardt.LevenbergMarquardt(model, "mse", solver="primal", primal_accumulation=method)
        results = [opt.step(x, y) for _ in range(10)]
        runs[method] = (model, results)
    for a, b in zip(runs["factored"][1], runs["rows"][1]):
        assert a.accepted == b.accepted and a.loss_after == pytest.approx(b.loss_after, rel=1e-8)
    for p, q in zip(runs["factored"][0].parameters(), runs["rows"][0].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="primal_accumulation"):
        marquardt.LevenbergMarquardt(_mlp(), "mse", primal_accumulation="kron")
    cnn = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 58, 1)).double()
    xc = x.T.unsqueeze(0).expand(3, 1, 60).contiguous()
    with pytest.raises(ValueError, match="primal_accumulation='factored'"):
        marquardt.LevenbergMarquardt(cnn, "mse", solver="primal", primal_accumulation="factored").step(
            xc, torch.zeros(3, 1, dtype=torch.float64))


def test_primal_accumulation_auto_follows_the_cpu_kernel(monkeypatch, cpu_kernel):
    # 'auto' forms the primal A from the explicit rows where the AVX-512 SYRK runs (faster than the Kronecker
    # GEMMs there), and from Kronecker products for large Linear weights otherwise.
    x, y = _sine(60)
    opt = marquardt.LevenbergMarquardt(_mlp(32), "mse", solver="primal")
    opt.step(x, y)  # the Jacobian engine is picked on the first step
    assert (opt.chooser.last_plan.candidate.system is KroneckerPrimalSystem) == (cpu_kernel == "gemm")
    for method in ("factored", "rows"):  # explicit choices are kept whatever the kernel
        opt = marquardt.LevenbergMarquardt(_mlp(32), "mse", solver="primal", primal_accumulation=method)
        opt.step(x, y)
        assert (opt.chooser.last_plan.candidate.system is KroneckerPrimalSystem) == (method == "factored")


def factored_system(workspace=None, accumulate=None, **kwargs):
    model, x, y, curvature = batch("wide_out", "gn", 6)
    layout = ParameterLayout.of(model)
    rows, rho, _ = FastPathJacobian(model, layout).factors(x, y, curvature)
    system = FactoredDualSystem(layout.numel, 0.5, torch.float64, torch.device("cpu"), accumulate,
                                workspace=workspace, **kwargs)
    system.add(rows, rho)
    system.finalize()
    return system, layout.numel


def test_factored_dual_defaults():
    """CG runs to a relative residual below the rounding of K in the rows' dtype, at most 200 iterations."""
    assert factored_system()[0].tol == 1e-12
    assert factored_system(accumulate=torch.float32)[0].tol == 1e-10
    assert factored_system(tol=1e-6)[0].tol == 1e-6
    assert factored_system()[0].max_iter == 200


@pytest.mark.parametrize("limit_offset, kept", [(0, True), (-1, False)])
def test_the_workspace_keeps_the_gram_buffers_up_to_its_limit(monkeypatch, limit_offset, kept):
    workspace: dict[str, torch.Tensor] = {}
    system, n = factored_system(workspace)
    m = system.factored_rows.m
    monkeypatch.setattr(FactoredDualSystem, "WORKSPACE_MAX_BYTES", 3 * m * m * 8 + limit_offset)
    system.set_damping(torch.ones(n, dtype=torch.float64))
    assert (sorted(workspace) == ["gram", "gram_inputs", "gram_signals"]) is kept
    system.lm_step(0.3)
    assert len(system.cg_iterations) == 1
    system.set_damping(torch.ones(n, dtype=torch.float64))
    assert system.cg_iterations == []  # counted per damping


def test_without_a_workspace_nothing_is_kept():
    system, n = factored_system(None)
    system.set_damping(torch.ones(n, dtype=torch.float64))
    assert system.workspace is None and system.lm_step(0.3)[1]
