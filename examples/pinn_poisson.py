"""A physics-informed network trained by Levenberg-Marquardt: the 1-D Poisson problem

    u''(x) = −π² sin(πx) on (0, 1),  u(0) = u(1) = 0,  solved by u(x) = sin(πx).

The residual function ``fn(model, x, x_boundary)`` returns two groups, the PDE residuals at the interior points
and the boundary values; marquardt concatenates them and minimises ½ Σ r². The second derivative of the network
with respect to its input can be written in either of two styles, which give the same steps:

* ``torch_func``: ``vmap(hessian(u))``, differentiated again by ``torch.func`` transforms;
* ``autograd``: ``torch.autograd.grad(..., create_graph=True)``, the usual PINN code, whose Jacobian comes from
  one batched backward pass over the residuals (transforms refuse functions that make tensors require grad).

On this problem the autograd style is the faster one (BENCHMARKS.md has the figures).

    python examples/pinn_poisson.py [--style torch_func|autograd] [--width 20] [--points 50] [--iterations 100]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.func import hessian, vmap

import marquardt


def source(x: torch.Tensor) -> torch.Tensor:
    return -(math.pi**2) * torch.sin(math.pi * x)


def residuals_by_torch_func(model: nn.Module, x: torch.Tensor, x_boundary: torch.Tensor):
    def u(xi: torch.Tensor) -> torch.Tensor:  # one point in, one value out
        return model(xi.reshape(1, 1)).squeeze()

    u_xx = vmap(hessian(u))(x).reshape(-1, 1)
    return u_xx - source(x), model(x_boundary)


def residuals_by_autograd(model: nn.Module, x: torch.Tensor, x_boundary: torch.Tensor):
    x = x.clone().requires_grad_(True)
    u = model(x)
    (u_x,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (u_xx,) = torch.autograd.grad(u_x.sum(), x, create_graph=True)
    return u_xx - source(x), model(x_boundary)


STYLES = {"torch_func": residuals_by_torch_func, "autograd": residuals_by_autograd}


def network(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, 1)).double()


def relative_l2_error(model: nn.Module, points: int = 1000) -> float:
    x = torch.linspace(0.0, 1.0, points, dtype=torch.float64).unsqueeze(1)
    exact = torch.sin(math.pi * x)
    with torch.no_grad():
        return float((model(x) - exact).norm() / exact.norm())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", choices=sorted(STYLES), default="torch_func")
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--points", type=int, default=50, help="interior collocation points")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = network(args.width, args.seed)
    x = torch.linspace(0.0, 1.0, args.points + 2, dtype=torch.float64)[1:-1].unsqueeze(1)
    x_boundary = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    opt = marquardt.LevenbergMarquardt(model, residuals=STYLES[args.style])
    start = time.perf_counter()
    result = marquardt.fit(opt, x, x_boundary, max_iterations=args.iterations)
    seconds = time.perf_counter() - start
    error = relative_l2_error(model)
    print(f"{args.style}: {result.iterations} iterations ({result.reason}) in {seconds:.1f} s, "
          f"loss {result.loss:.3e}, relative L2 error of u {error:.2e}")
    return {"iterations": float(result.iterations), "loss": result.loss, "error": error, "seconds": seconds}


if __name__ == "__main__":
    main()
