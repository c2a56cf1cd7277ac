"""The four physics-informed benchmark problems of Dangel, Müller & Zeinhofer, "Kronecker-Factored Approximate
Curvature for Physics-Informed Neural Networks" (NeurIPS 2024), defined as their public code defines them
(``f-dangel/kfac-pinns-experiments``: ``train.py``, ``poisson_equation.py``, ``heat_equation.py`` and the
experiments' sweep files).

What makes a run the same as theirs:

* **Random numbers.** Their script seeds the generator with the data seed and then, before anything is drawn,
  with the model seed (1 by default), so the network's initial weights come first and the points follow on the
  same stream: the interior training points, the boundary points, then (at the first evaluation) the
  evaluation points. Points are drawn in float32 (``torch.rand``'s default) and the targets computed in float32,
  then both are cast to float64; the weights are initialised in float32 and cast too. :func:`make_run` repeats
  that order.
* **Loss.** ½·mean of the squared interior residuals plus ½·mean of the squared boundary residuals. The residual
  function below returns both groups divided by √(their count), so ½ Σ r² (``loss_scale="sum"``) is that loss.
* **Error.** Their ``l2_error``: the root mean square of u_θ − u* over the evaluation points (10·N_Ω fresh
  interior points). :func:`errors` returns it with the relative error (÷ the root mean square of u*).
* **Resampling.** The 5-D Poisson problem draws new interior and boundary points at every step
  (``batch_frequency = 1`` in their sweep); the others keep one training set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from marquardt import pde

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------- solutions
def poisson_sin_product(x: Tensor) -> Tensor:
    """u*(x) = Πᵢ sin(πxᵢ) on [0, 1]^d; −Δu* = dπ² u*."""
    return torch.sin(math.pi * x).prod(dim=1, keepdim=True)


def poisson_sin_product_source(x: Tensor) -> Tensor:
    return x.shape[1] * math.pi**2 * torch.sin(math.pi * x).prod(dim=1, keepdim=True)


def poisson_cos_sum(x: Tensor) -> Tensor:
    """u*(x) = Σᵢ cos(πxᵢ); −Δu* = π² u*."""
    return torch.cos(math.pi * x).sum(dim=1, keepdim=True)


def poisson_cos_sum_source(x: Tensor) -> Tensor:
    return math.pi**2 * torch.cos(math.pi * x).sum(dim=1, keepdim=True)


def heat_sin_product(x: Tensor) -> Tensor:
    """u*(t, x) = exp(−π² d t/4) Πᵢ sin(πxᵢ), column 0 is time; solves ∂ₜu = ¼Δₓu with u = 0 on the spatial
    boundary."""
    t, space = x[:, :1], x[:, 1:]
    return torch.exp(-(math.pi**2) * space.shape[1] / 4 * t) * torch.sin(math.pi * space).prod(dim=1, keepdim=True)


# ------------------------------------------------------------------------------------------------ sampling
def square_boundary(n: int, dim: int) -> Tensor:
    """n points uniform on the boundary of [0, 1]^dim: uniform in the cube, then one random coordinate set to a
    random side (their ``square_boundary``, draw for draw)."""
    x = torch.rand(n, dim)
    coordinate = torch.randint(0, dim, (n,))
    side = torch.randint(0, 2, (n,))
    x[torch.arange(n), coordinate] = side.float()
    return x


def heat_condition_points(n: int, dim: int) -> Tensor:
    """n//2 points on the spatial boundary at uniform times, then n//2 at t = 0 inside (boundary, then initial
    condition; time is column 0)."""
    times = torch.rand(n // 2, 1)
    boundary = torch.cat([times, square_boundary(n // 2, dim)], dim=1)
    start = torch.cat([torch.zeros(n // 2, 1), torch.rand(n // 2, dim)], dim=1)
    return torch.cat([boundary, start])


# ------------------------------------------------------------------------------------------------ problems
@dataclass(frozen=True)
class Published:
    """A best run of the paper's sweep: their ``l2_error`` after the budget, on one RTX 6000."""

    error: float
    note: str = ""


@dataclass(frozen=True)
class Problem:
    name: str
    equation: str  # 'poisson' or 'heat'
    dim_omega: int  # spatial dimension (heat adds time)
    widths: tuple[int, ...]  # hidden layers of the tanh MLP
    n_interior: int
    n_boundary: int
    solution: Callable[[Tensor], Tensor]
    source: Callable[[Tensor], Tensor] | None  # Poisson's right-hand side f (−Δu = f); None for heat
    resample: bool  # new training points at every step
    published_budget_s: float
    target_s: float  # the CPU budget on the 2-core machine
    published: dict[str, Published] = field(default_factory=dict)
    #: the dtype the targets (f and u* at the points) are computed in: float32 in their scripts, which draw the
    #: points and evaluate the targets in torch's default dtype and cast both to float64 afterwards
    target_dtype: torch.dtype = torch.float32

    @property
    def in_dim(self) -> int:
        return self.dim_omega + (1 if self.equation == "heat" else 0)

    @property
    def parameters(self) -> int:
        sizes = (self.in_dim, *self.widths, 1)
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

    def network(self) -> nn.Sequential:
        """Their ``set_up_layers``: Linear and Tanh, PyTorch's default init in float32, cast to float64."""
        sizes = (self.in_dim, *self.widths, 1)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        return nn.Sequential(*layers[:-1]).double()

    def interior(self, n: int) -> tuple[Tensor, Tensor]:
        """Points uniform in the domain and their targets (f for Poisson, 0 for heat), float32 points, targets
        in :attr:`target_dtype`, both cast to float64."""
        x = torch.rand(n, self.in_dim)
        y = self.source(x.to(self.target_dtype)) if self.source is not None else torch.zeros(n, 1)
        return x.double(), y.double()

    def condition(self, n: int) -> tuple[Tensor, Tensor]:
        """Boundary (and for heat, initial-condition) points and u* there, float32 cast to float64."""
        x = square_boundary(n, self.dim_omega) if self.equation == "poisson" else heat_condition_points(
            n, self.dim_omega)
        return x.double(), self.solution(x.to(self.target_dtype)).double()


PROBLEMS: dict[str, Problem] = {
    "poisson2d": Problem(
        "poisson2d", "poisson", 2, (64,), 900, 120, poisson_sin_product, poisson_sin_product_source, False, 1000,
        120, {"ENGD (full)": Published(6.2e-8, "5701 steps"), "KFAC": Published(2.0e-7),
              "Hessian-free": Published(3.2e-7), "L-BFGS": Published(1.8e-4), "Adam": Published(9.4e-5)}),
    "heat1d": Problem(
        "heat1d", "heat", 1, (64,), 900, 120, heat_sin_product, None, False, 1000, 120,
        {"ENGD (full)": Published(3.0e-8), "KFAC": Published(8.8e-7), "Hessian-free": Published(6.2e-7),
         "L-BFGS": Published(2.7e-4), "Adam": Published(1.2e-4)}),
    "poisson5d": Problem(
        "poisson5d", "poisson", 5, (64,), 3000, 500, poisson_cos_sum, poisson_cos_sum_source, True, 3000, 600,
        {"ENGD (full)": Published(5.6e-8), "KFAC": Published(2.7e-6), "Hessian-free": Published(6.1e-6),
         "L-BFGS": Published(8.9e-4), "Adam": Published(1.1e-3)}),
    "poisson2d_deep": Problem(
        "poisson2d_deep", "poisson", 2, (64, 64, 48, 48), 900, 120, poisson_sin_product,
        poisson_sin_product_source, False, 1000, 1800,
        {"ENGD (full)": Published(0.30, "3 steps in 1337 s"), "KFAC": Published(7.9e-7),
         "Hessian-free": Published(1.3e-6), "L-BFGS": Published(3.4e-4), "Adam": Published(2.1e-4)}),
}


# --------------------------------------------------------------------------------------------- residuals
def residual_function(problem: Problem) -> Callable[..., tuple[Tensor, Tensor]]:
    """fn(model, x_interior, y_interior, x_boundary, y_boundary) -> (interior, boundary) residuals in their
    form, Δu + f for Poisson and ∂ₜu − ¼Δₓu for heat (time is column 0), the derivatives by
    ``torch.autograd.grad`` (``marquardt.pde.operator_by_autograd``); each group divided by √(its count), so that
    ½ Σ r² is their loss (½ mean + ½ mean)."""
    if problem.equation == "poisson":
        interior_op = pde.laplacian(problem.dim_omega)
    else:
        interior_op = pde.derivative(0) - 0.25 * pde.laplacian(range(1, problem.in_dim))

    def residuals(model: nn.Module, x: Tensor, y: Tensor, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        interior = pde.operator_by_autograd(model, interior_op, x) + (y if problem.source is not None else -y)
        return interior / math.sqrt(len(x)), (model(xb) - yb) / math.sqrt(len(xb))

    return residuals


@torch.no_grad()
def errors(problem: Problem, model: nn.Module, x_eval: Tensor) -> tuple[float, float]:
    """(their l2_error: RMS of u_θ − u* over the evaluation points, the same divided by the RMS of u*)."""
    exact = problem.solution(x_eval)
    rms = float((model(x_eval) - exact).square().mean().sqrt())
    return rms, rms / float(exact.square().mean().sqrt())


@dataclass
class Run:
    """One seed's network, its data stream and its evaluation points."""

    problem: Problem
    model: nn.Module
    batch: tuple[Tensor, Tensor, Tensor, Tensor]
    x_eval: Tensor
    steps_taken: int = 0

    def next_batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The training points of the next step: from the second step on, new ones from the global generator
        when the problem resamples."""
        self.steps_taken += 1
        if self.problem.resample and self.steps_taken > 1:
            self.batch = (*self.problem.interior(self.problem.n_interior),
                          *self.problem.condition(self.problem.n_boundary))
        return self.batch


def make_run(problem: Problem, seed: int = 1) -> Run:
    """The network and points of their script for model seed ``seed`` (their default is 1): the weights, then
    the interior training points, the boundary points and 10·N_Ω evaluation points, from one stream."""
    torch.manual_seed(seed)
    model = problem.network()
    batch = (*problem.interior(problem.n_interior), *problem.condition(problem.n_boundary))
    x_eval, _ = problem.interior(10 * problem.n_interior)
    return Run(problem, model, batch, x_eval)
