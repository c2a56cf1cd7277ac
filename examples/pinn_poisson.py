"""A physics-informed network trained by Levenberg-Marquardt: the 2-D Poisson problem

    −Δu = 2π² sin(πx) sin(πy) on the unit square,  u = 0 on its edges,  solved by u = sin(πx) sin(πy).

The residual function ``fn(model, x, f, x_boundary, g)`` returns two groups, −Δu − f at the interior points and
u − g at the boundary points, each divided by √(its number of points) (so ½ Σ r² is the usual ½ mean + ½ mean);
marquardt concatenates them and minimises ½ Σ r². The Laplacian can come three ways, which give the same steps:

* ``torch_func``: ``vmap(hessian(u))``, differentiated again by ``torch.func`` transforms;
* ``autograd``: ``torch.autograd.grad(..., create_graph=True)``, the usual PINN code, whose Jacobian comes from
  one batched backward pass over the residuals (transforms refuse functions that make tensors require grad);
* ``taylor``: ``marquardt.pde.PDEResiduals(-laplacian(2), value())``, which carries u, ∇u and Δu forward through
  the MLP and gives the Jacobian from one forward and one backward pass (by far the fastest: BENCHMARKS.md).

    python examples/pinn_poisson.py [--style taylor|autograd|torch_func] [--width 20] [--points 200]
                                    [--iterations 200]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import hessian, vmap

import marquardt
from marquardt import pde


def exact(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(math.pi * x).prod(dim=1)


def source(x: torch.Tensor) -> torch.Tensor:
    return 2 * math.pi**2 * exact(x)


def by_torch_func(model: nn.Module, x: torch.Tensor, f: torch.Tensor, xb: torch.Tensor, g: torch.Tensor):
    def u(xi: torch.Tensor) -> torch.Tensor:  # one point in, one value out
        return model(xi.reshape(1, 2)).squeeze()

    laplacian = vmap(hessian(u))(x).diagonal(dim1=1, dim2=2).sum(dim=1)
    return (-laplacian - f) / math.sqrt(len(x)), (model(xb).squeeze(1) - g) / math.sqrt(len(xb))


def by_autograd(model: nn.Module, x: torch.Tensor, f: torch.Tensor, xb: torch.Tensor, g: torch.Tensor):
    x = x.clone().requires_grad_(True)
    u = model(x)
    (grad,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    laplacian = sum(torch.autograd.grad(grad[:, j].sum(), x, create_graph=True)[0][:, j] for j in range(2))
    return (-laplacian - f) / math.sqrt(len(x)), (model(xb).squeeze(1) - g) / math.sqrt(len(xb))


STYLES: dict[str, Callable[..., Any]] = {
    "taylor": pde.PDEResiduals(-pde.laplacian(2), pde.value()), "autograd": by_autograd, "torch_func": by_torch_func}


def network(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, 1)).double()


def points(interior: int, boundary: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(x, f(x), x_boundary, g(x_boundary)): uniform points inside, and a quarter of the boundary points on each
    edge."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(interior, 2, generator=gen, dtype=torch.float64)
    along = torch.rand(boundary, generator=gen, dtype=torch.float64)
    edge = torch.arange(boundary) % 4
    xb = torch.stack([torch.where(edge < 2, along, (edge == 3).double()),
                      torch.where(edge < 2, (edge == 1).double(), along)], dim=1)
    return x, source(x), xb, exact(xb)


def relative_l2_error(model: nn.Module, count: int = 2000) -> float:
    x = torch.rand(count, 2, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    with torch.no_grad():
        return float((model(x).squeeze(1) - exact(x)).norm() / exact(x).norm())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", choices=sorted(STYLES), default="taylor")
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--points", type=int, default=200, help="interior collocation points")
    parser.add_argument("--boundary-points", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = network(args.width, args.seed)
    batch = points(args.points, args.boundary_points, args.seed + 1)
    opt = marquardt.LevenbergMarquardt(model, residuals=STYLES[args.style], loss_scale="sum")
    start = time.perf_counter()
    result = marquardt.fit(opt, *batch, max_iterations=args.iterations)
    seconds = time.perf_counter() - start
    error = relative_l2_error(model)
    print(f"{args.style}: {result.iterations} iterations ({result.reason}) in {seconds:.1f} s, "
          f"loss {result.loss:.3e}, relative L2 error of u {error:.2e}")
    return {"iterations": float(result.iterations), "loss": result.loss, "error": error, "seconds": seconds}


if __name__ == "__main__":
    main()
