"""The data-parallel wiring without processes: a stand-in communicator plays two ranks that hold the same shard.

Every all-reduce then doubles what this process computed, so a step on batch X with two such ranks must equal a
step on the batch [X; X] in one process: the sample count, the mean's α = 1/N, A, g, every loss and the
subsampled count all have to go through the communicator for that to hold. (tests/parallel runs real ranks.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from marquardt import LevenbergMarquardt
from marquardt.parallel import Communicator
from tests.models import Exponential, exponential_data, residuals, sine_data, sine_mlp


class TwinRanks(Communicator):
    """Two ranks with identical shards: sums double; records what the setup check received."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(enabled=False)
        self.active, self.world_size, self.device = True, 2, device
        self.setups: list[dict[str, Any]] = []

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.mul_(2)

    def sum_float(self, value: float, device: torch.device) -> float:
        assert device == self.device, "scalars are summed on the parameters' device"
        return 2.0 * value

    def check_same_setup(self, setup: dict[str, Any]) -> None:
        self.setups.append(setup)


def _twin_and_single(model_factory, **options):
    twin = LevenbergMarquardt(model_factory(), "mse", **options)
    comm = twin.objective.comm = TwinRanks(twin.layout.device)
    if "curvature_samples" in options:  # a count per rank: the doubled batch takes twice as many, same stride
        options = dict(options, curvature_samples=2 * options["curvature_samples"])
    single = LevenbergMarquardt(model_factory(), "mse", **options)
    return twin, comm, single


@pytest.mark.parametrize("options", [
    dict(solver="primal"),
    dict(solver="primal", curvature_samples=30),  # subsampled: the count of rows goes through the ranks too
    dict(solver="block_diagonal"),
    dict(solver="primal", loss_scale="sum", momentum=None),
])
def test_two_identical_ranks_step_like_the_doubled_batch(options):
    x, y = sine_data(60, dtype=torch.float64)
    factory = lambda: sine_mlp(5).double()  # noqa: E731
    twin, comm, single = _twin_and_single(factory, **options)
    for _ in range(4):
        a, b = twin.step(x, y), single.step(torch.cat([x, x]), torch.cat([y, y]))
        assert (a.reason, a.attempts) == (b.reason, b.attempts)
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-12)
        assert a.loss_after == pytest.approx(b.loss_after, rel=1e-12)
        assert a.lam == pytest.approx(b.lam, rel=1e-12)
        expected_samples = 60 if "curvature_samples" in options else 120
        assert a.curvature_samples == b.curvature_samples == expected_samples
    for p, q in zip(twin.layout.params, single.layout.params):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    # the setup check ran once, before the first collective, with the parameters' shapes, dtype and settings
    assert len(comm.setups) == 1
    setup = comm.setups[0]
    assert setup["parameters"] == [tuple(p.shape) for p in twin.layout.params]
    assert setup["dtype"] == "torch.float64"
    assert set(twin.objective.setup) <= set(setup)


def test_a_residual_callable_on_two_identical_ranks_steps_like_the_doubled_data():
    t, y = exponential_data(40)
    twin = LevenbergMarquardt(Exponential(), residuals)
    twin.objective.comm = TwinRanks(twin.layout.device)
    single = LevenbergMarquardt(Exponential(), residuals)
    for _ in range(3):
        a, b = twin.step(t, y), single.step(torch.cat([t, t]), torch.cat([y, y]))
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-12) and a.reason == b.reason
    for p, q in zip(twin.layout.params, single.layout.params):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_the_dual_solver_is_refused_under_ranks():
    twin = LevenbergMarquardt(sine_mlp(5).double(), "mse", solver="dual")
    twin.objective.comm = TwinRanks(twin.layout.device)
    x, y = sine_data(20, dtype=torch.float64)
    with pytest.raises(ValueError, match="solver='dual' keeps every rank's rows"):
        twin.step(x, y)


def test_a_residual_function_on_two_identical_ranks_steps_like_the_doubled_residuals():
    """Each rank evaluates fn on its share of the points; M, A, g and the losses are summed over the ranks."""
    t, y = exponential_data(30)
    twin = LevenbergMarquardt(Exponential(), residuals=lambda m, t, y: (m(t) - y, 0.1 * (m(t[:3]) - y[:3])))
    twin.objective.comm = TwinRanks(twin.layout.device)
    single = LevenbergMarquardt(Exponential(), residuals=lambda m, t, y: (m(t) - y, 0.1 * (m(t[:3]) - y[:3]),
                                                                         m(t) - y, 0.1 * (m(t[:3]) - y[:3])))
    for _ in range(3):
        a, b = twin.step(t, y), single.step(t, y)
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-12) and a.reason == b.reason
    for p, q in zip(twin.layout.params, single.layout.params):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_covariance_on_two_identical_ranks_is_that_of_the_doubled_data():
    import marquardt

    t, y = exponential_data(25)
    twin = LevenbergMarquardt(Exponential(), residuals)
    twin.objective.comm = TwinRanks(twin.layout.device)
    single = LevenbergMarquardt(Exponential(), residuals)
    # (the same iterations on both sides: the polish after convergence runs in one process only)
    a = marquardt.fit(twin, t, y, max_iterations=30)
    b = marquardt.fit(single, torch.cat([t, t]), torch.cat([y, y]), max_iterations=30, polish=False)
    assert a.polish_steps == 0
    assert a.cost == pytest.approx(b.cost, rel=1e-9)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(a.covariance().matrix, b.covariance().matrix, rtol=1e-7, atol=0.0)


def test_covariance_on_two_ranks_with_a_small_curvature():
    """JᵀJ with eigenvalues below 1 (residuals scaled by 0.01): the ranks' path takes them from JᵀJ itself."""
    import marquardt

    t, y = exponential_data(25)
    scaled = lambda z, target: 0.01 * (z - target)  # noqa: E731
    twin = LevenbergMarquardt(Exponential(), scaled)
    twin.objective.comm = TwinRanks(twin.layout.device)
    a = marquardt.fit(twin, t, y, max_iterations=60)
    b = marquardt.fit(LevenbergMarquardt(Exponential(), scaled), torch.cat([t, t]), torch.cat([y, y]),
                      max_iterations=60, polish=False)
    assert float(torch.linalg.eigvalsh(b._least_squares()[1].T @ b._least_squares()[1]).min()) < 1.0
    torch.testing.assert_close(a.covariance(absolute_sigma=True).matrix, b.covariance(absolute_sigma=True).matrix,
                               rtol=1e-6, atol=0.0)
