"""pytest-benchmark: one LM step in the dual form, the factored PCG solve beside the formed K (grouped).

    pytest benchmarks/micro/test_dual_micro.py --benchmark-only

The 1-64-64-1 sine MLP (4,353 parameters) on 1,000 points, as in `optimizer_bench.py per-iteration`; one
thread on the CPU, as there. Each round is a step from the same starting point (the optimizer is rebuilt).
"""

from __future__ import annotations

import pytest
import torch

import marquardt
from benchmarks.paper.sine import mlp, sine_data
from benchmarks.timing import machine_description, sync


@pytest.mark.parametrize("dual_method", ["pcg", "cholesky"])
def test_dual_step(benchmark, request, dual_method):
    device = request.config.getoption("--device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        x, y = (t.to(device) for t in sine_data(1000))
        model = mlp(64).to(device)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        benchmark.group = "dual step 1000 x 4353"
        benchmark.extra_info["machine"] = machine_description(device)

        def setup():
            model.load_state_dict(start)
            opt = marquardt.LevenbergMarquardt(model, "mse", solver="dual", dual_method=dual_method)
            return (opt,), {}

        def step(opt):
            opt.step(x, y)
            sync(device)

        benchmark.pedantic(step, setup=setup, rounds=7, warmup_rounds=1)
    finally:
        torch.set_num_threads(threads)
