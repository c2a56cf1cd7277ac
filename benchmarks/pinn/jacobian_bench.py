"""The parameter Jacobian of PINN residuals, Taylor mode (``marquardt.pde``) against torch.func's nested transforms
and against autograd's double-backward graph, on the published problems' networks and points.

    python benchmarks/pinn/jacobian_bench.py            # D = 257 and D = 9,873, 900 interior + 120 boundary points
    python benchmarks/pinn/jacobian_bench.py --check    # exit 1 unless Taylor mode is >= 5x faster at D = 9,873

Each method computes the Jacobian [1020, D] of the 2-D Poisson residuals (−Δu − f inside, u − g on the
boundary, each group ÷ √(its count)):

* **Taylor mode**: ``PDEResiduals.jacobian``, one forward pass of (u, ∇u, Δu) and one backward pass;
* **torch.func**: Δu by ``vmap(hessian(u))`` over the points, the Jacobian by ``jacrev`` over the parameters, and
  by ``jacfwd`` too where there are no more parameters than residuals (the faster of the two is the reference;
  at D = 9,873 forward mode would carry 9,873 tangents through every intermediate, tens of GB);
* **autograd**: Δu by ``torch.autograd.grad(..., create_graph=True)``, the Jacobian by one batched backward pass per
  row (``torch.autograd.functional.jacobian(vectorize=True)``, what the optimizer's whole-batch engine does
  for such a residual function).

Every Jacobian is checked against Taylor mode's (1e-10 relative). Times are medians of ``--repeats`` runs, wall
clock, on the threads torch uses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, hessian, jacfwd, jacrev, vmap

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.pinn import problems as P  # noqa: E402
from benchmarks.pinn.run import residuals_for  # noqa: E402
from benchmarks.timing import git_revision, machine_description  # noqa: E402


def taylor(problem: P.Problem, run: P.Run) -> Callable[[], torch.Tensor]:
    fn, params = residuals_for(problem), list(run.model.parameters())

    def jacobian() -> torch.Tensor:
        got = fn.jacobian(run.model, params, *run.batch)
        assert got is not None
        return got[1]

    return jacobian


def by_torch_func(problem: P.Problem, run: P.Run, engine: Callable) -> Callable[[], torch.Tensor]:
    model = run.model
    x, f, xb, g = run.batch
    names = [n for n, _ in model.named_parameters()]

    def residuals(flat: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, p in model.named_parameters():
            params[name] = flat[offset : offset + p.numel()].reshape(p.shape)
            offset += p.numel()

        def u(xi: torch.Tensor) -> torch.Tensor:
            return functional_call(model, params, (xi.reshape(1, -1),)).squeeze()

        lap = vmap(hessian(u))(x).diagonal(dim1=1, dim2=2).sum(-1)
        boundary = functional_call(model, params, (xb,)).squeeze(1)
        return torch.cat([(-lap - f.reshape(-1)) / len(x) ** 0.5, (boundary - g.reshape(-1)) / len(xb) ** 0.5])

    theta = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])
    return lambda: engine(residuals)(theta)


def by_autograd(problem: P.Problem, run: P.Run) -> Callable[[], torch.Tensor]:
    fn = P.residual_function(problem)
    model = run.model
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def residuals(theta: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            n = shape.numel()
            params[name] = theta[offset : offset + n].reshape(shape)
            offset += n
        inner, boundary = fn(lambda z: functional_call(model, params, (z,)), *run.batch)
        return torch.cat([-inner.reshape(-1), boundary.reshape(-1)])

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return lambda: torch.autograd.functional.jacobian(residuals, theta, vectorize=True)


def median_seconds(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # (warm-up)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="+", default=["poisson2d", "poisson2d_deep"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--check", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    report: dict = {"host": machine_description("cpu"), "commit": git_revision(), "problems": {}}
    print(report["host"], report["commit"])
    failures = []
    for name in args.problems:
        problem = P.PROBLEMS[name]
        run = P.make_run(problem, 1)
        t_taylor, J = median_seconds(taylor(problem, run), args.repeats)
        times = {"taylor": t_taylor}
        methods = {"torch.func jacrev": by_torch_func(problem, run, jacrev), "autograd": by_autograd(problem, run)}
        if problem.parameters <= J.shape[0]:
            methods["torch.func jacfwd"] = by_torch_func(problem, run, jacfwd)
        for method, fn in methods.items():
            times[method], J_other = median_seconds(fn, args.repeats)
            error = float((J_other - J).abs().max() / J.abs().max())
            if error > 1e-10:
                failures.append(f"{name}: {method}'s Jacobian differs from Taylor mode's by {error:.1e}")
        best_func = min(t for method, t in times.items() if method.startswith("torch.func"))
        report["problems"][name] = {"parameters": problem.parameters, "rows": J.shape[0],
                                    "seconds": times, "speedup_over_torch_func": best_func / t_taylor,
                                    "speedup_over_autograd": times["autograd"] / t_taylor}
        print(f"{name} (D = {problem.parameters}, {J.shape[0]} rows): " + ", ".join(
            f"{k} {1e3 * v:.1f} ms" for k, v in times.items()) +
            f"; Taylor mode {best_func / t_taylor:.0f}x faster than torch.func, "
            f"{times['autograd'] / t_taylor:.0f}x than autograd", flush=True)
    deep = report["problems"].get("poisson2d_deep")
    if deep is not None and deep["speedup_over_torch_func"] < 5:
        failures.append(f"Taylor mode is only {deep['speedup_over_torch_func']:.1f}x faster than torch.func at D = 9,873")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    for failure in failures:
        print("FAILED:", failure)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
