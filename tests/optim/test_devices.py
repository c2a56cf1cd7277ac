"""Every tensor a step makes lives on the parameters' device and in the dtype it should, without a GPU to show it.

The steps run with the default device set to ``meta``: a tensor made without naming a device lands there, and
the first operation that mixes it with the parameters' (CPU) tensors fails. On a GPU the same omission would
put a tensor on the CPU beside CUDA parameters: the same failure, or a silent copy every step. Likewise with the
default dtype set to float64 under float32 models: a tensor made without naming a dtype would promote the
arithmetic and change the steps, which must stay bit-identical."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import marquardt
from marquardt import LevenbergMarquardt
from tests.models import Exponential, exponential_data, residuals, sine_data, sine_mlp


def _classifier() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 3))
    return model, (torch.randn(30, 2), torch.randint(0, 3, (30,)))


def _pinn_residuals(model, x, xb):
    x = x.clone().requires_grad_(True)
    u = model(x)
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    return du - torch.cos(x), model(xb)


CASES = {
    "mse": lambda: (LevenbergMarquardt(sine_mlp(5), "mse"), sine_data(40)),
    "cross_entropy": lambda: (LevenbergMarquardt(_classifier()[0], "cross_entropy"), _classifier()[1]),
    "empirical_fisher": lambda: (LevenbergMarquardt(_classifier()[0], "cross_entropy", curvature="ef",
                                                    geodesic=False), _classifier()[1]),
    "dual": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", solver="dual"), sine_data(10)),
    "dual_pcg": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", solver="dual", dual_method="pcg"), sine_data(10)),
    "block_layer": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", solver="block_diagonal"), sine_data(40)),
    "block_unit": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", solver="block_diagonal", blocks="unit"),
                           sine_data(40)),
    "block_group": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", solver="block_diagonal", blocks=4),
                            sine_data(40)),
    "chunked": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", memory_budget=40_000), sine_data(200)),
    "float64_accumulation": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", accumulate_dtype=torch.float64,
                                                        solve_dtype=torch.float64), sine_data(40)),
    "residual_callable": lambda: (LevenbergMarquardt(Exponential(), residuals), exponential_data(20)),
    "residual_function": lambda: (LevenbergMarquardt(sine_mlp(5).double(), residuals=_pinn_residuals),
                                  (torch.linspace(0, 1, 9, dtype=torch.float64).unsqueeze(1),
                                   torch.zeros(1, 1, dtype=torch.float64))),
    "geodesic": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", geodesic=True), sine_data(40)),
    "subsampled": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", curvature_samples=10), sine_data(40)),
    "functorch": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", engine="functorch"), sine_data(40)),
    "full": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", engine="full"), sine_data(40)),
    "line_search": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", line_search="log"), sine_data(40)),
    "paper": lambda: (LevenbergMarquardt(sine_mlp(5), "mse", preset="paper"), sine_data(40)),
    "rrelu": lambda: (LevenbergMarquardt(nn.Sequential(nn.Linear(1, 5), nn.RReLU(), nn.Linear(5, 1)), "mse"),
                      sine_data(40)),
}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("default", ["device", "dtype"])
@pytest.mark.parametrize("case", CASES)
def test_steps_make_no_tensor_off_the_parameters_device_or_dtype(case, default):
    torch.manual_seed(0)
    opt, batch = CASES[case]()
    torch.manual_seed(0)
    reference, reference_batch = CASES[case]()
    torch.manual_seed(1)  # (the same noise for stochastic layers)
    with torch.device("meta") if default == "device" else _default_dtype(torch.float64):
        infos = [opt.step(*batch) for _ in range(3)]
    torch.manual_seed(1)
    expected = [reference.step(*reference_batch) for _ in range(3)]
    assert [i.loss_after for i in infos] == [e.loss_after for e in expected]  # and the steps are the usual ones


def test_fits_describe_their_solution_on_the_parameters_device():
    t, y = exponential_data(20)
    opt = LevenbergMarquardt(Exponential(), residuals)
    with torch.device("meta"):
        result = marquardt.fit(opt, t, y, max_iterations=30, return_jacobian=True)
        errors = result.standard_errors()
    assert all(e.device.type == "cpu" and bool(torch.isfinite(e)) for e in errors.values())
    assert result.jac.device.type == result.fun.device.type == result.grad.device.type == "cpu"
