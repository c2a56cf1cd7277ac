"""Golden trajectories: the optimizer takes the same steps as the code before the core was redesigned.

48 configurations (every solver, engine, curvature, damping and λ rule, momentum on and off, line searches,
uphill, geodesic, subsampled curvature, the presets, float32 and float64, full batch and mini-batch, residual
callables), 10 steps each, recorded at commit db1e0da by ``python -m tests.optim.golden.record``.

On a host like the recording one (same CPU family and model, torch and SYRK kernel), θ, λ and the reasons must
match bit for bit. Elsewhere BLAS orders its sums differently, and along a trajectory the rounding differences
grow (measured on a Xeon against the AMD recording: at most 2e-10 after the first step, 1e-6 after the tenth in
float64, 2e-2 where the solve runs in float32). There, every λ and reason must still match (the same accept and
reject decisions at every step) and the first step's θ must agree to 1e-9 relative in float64 (1e-5 where
anything runs in float32).
"""

from __future__ import annotations

import pytest
import torch

import marquardt
from tests.optim.golden.cases import CASES, run
from tests.optim.golden.record import PATH, host

GOLDEN = torch.load(PATH, weights_only=False)
SAME_HOST = GOLDEN["host"] == host()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_recording_covers_every_case():
    assert sorted(GOLDEN["cases"]) == sorted(case.name for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_trajectory_is_reproduced(case):
    expected = GOLDEN["cases"][case.name]
    got = run(case, marquardt.LevenbergMarquardt)
    assert got["reason"] == expected["reason"]
    if SAME_HOST:
        assert torch.equal(got["theta"], expected["theta"]), "θ differs from the recording (bit for bit)"
        assert got["lam"] == expected["lam"]
        assert got["loss"] == expected["loss"]
    else:
        in_float64 = expected["theta"].dtype == torch.float64 and case.options.get("solve_dtype") != torch.float32
        rtol = 1e-9 if in_float64 else 1e-5
        torch.testing.assert_close(got["theta"][0], expected["theta"][0], rtol=rtol, atol=rtol)
        assert got["lam"] == pytest.approx(expected["lam"], rel=1e-9)
