"""Hessian-free optimisation (Martens 2010; Martens & Sutskever 2012) (docs/algorithm.md, "Baselines").

Per step on a batch: the gradient g, then preconditioned CG on (G + λI) p = −g with GGN-vector products
G v = (1/N) J_zᵀ H J_z v (forward-mode jvp, the loss Hessian in output space, reverse-mode vjp), Martens'
relative-progress stopping rule, warm start ζ·p_prev, CG backtracking over stored iterates, the
Levenberg-Marquardt heuristic for λ and an Armijo line search.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from ..curvature.jacobian import FastPathJacobian, FunctorchJacobian, NotApplicable
from ..curvature.losses import Curvature
from ..curvature.modes import make_curvature
from ..curvature.noise import NoiseReplay
from ..types.layout import ParameterLayout


class _PerSampleGradient(Curvature):
    """Rows = per-sample loss gradients ∇ℓᵢ (for the diagonal preconditioner Σᵢ ∇ℓᵢ²)."""

    def __init__(self, base: Curvature) -> None:
        self.base = base
        self.name = "per_sample_gradient"

    def per_sample_loss(self, outputs, targets):
        return self.base.per_sample_loss(outputs, targets)

    def weights(self, outputs, targets):
        z = outputs.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad_z,) = torch.autograd.grad(self.base.per_sample_loss(z, targets).sum(), z)
        g = grad_z.reshape(z.shape[0], -1)
        return g.unsqueeze(2), torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)


def output_hessian_product(loss: str, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H v per sample: v for ½‖z − y‖²; p ⊙ v − p (pᵀv) for softmax cross-entropy."""
    if loss == "mse":
        return v
    p = torch.softmax(z, dim=1)
    return p * v - p * (p * v).sum(dim=1, keepdim=True)


def ggn_vector_product(outputs, theta: torch.Tensor, z: torch.Tensor, vjp_fn, loss: str, n: int):
    """v ↦ G v = (1/N) J_zᵀ H J_z v at θ: a jvp (forward mode), H in output space, the stored vjp."""

    def product(v: torch.Tensor) -> torch.Tensor:
        jv = jvp(outputs, (theta,), (v,))[1]
        (gv,) = vjp_fn(output_hessian_product(loss, z, jv) / n)
        return gv

    return product


class HessianFree(torch.optim.Optimizer):
    """Hessian-free Newton with the GGN (Martens 2010) for ``loss="mse"`` or ``"cross_entropy"``.

    ``step(inputs, targets)`` runs one outer iteration and returns a dict (loss before/after, CG iterations,
    λ, step size).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str = "mse",
        *,
        lr: float = 1.0,
        damping: float = 0.5,
        max_cg: int = 100,
        cg_epsilon: float = 5e-4,
        warm_start: float = 0.95,
        precondition: bool = True,
        preconditioner_power: float = 0.75,
        armijo_c: float = 1e-2,
        backtrack_factor: float = 0.8,
        max_line_search: int = 20,
    ) -> None:
        if loss not in ("mse", "cross_entropy"):
            raise ValueError(f"loss: expected 'mse' or 'cross_entropy', got {loss!r}")
        for name, value in (("lr", lr), ("damping", damping), ("cg_epsilon", cg_epsilon)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Invalid {name} value: {value!r} (expected a finite number > 0)")
        if max_cg < 1:
            raise ValueError(f"Invalid max_cg value: {max_cg!r} (expected >= 1)")
        self.model = model
        self.layout = ParameterLayout.of(model)
        self.loss_name = loss
        self.curvature = make_curvature(loss, None)
        defaults = dict(lr=lr, damping=damping, max_cg=max_cg, cg_epsilon=cg_epsilon, warm_start=warm_start,
                        precondition=precondition, preconditioner_power=preconditioner_power, armijo_c=armijo_c,
                        backtrack_factor=backtrack_factor, max_line_search=max_line_search)
        super().__init__(self.layout.params, defaults)
        try:
            self._rows_engine: Any = FastPathJacobian(model, self.layout)
        except NotApplicable:
            self._rows_engine = FunctorchJacobian(model, self.layout)

    @property
    def _state(self) -> dict[str, Any]:
        state = self.state[self.layout.params[0]]
        if not state:
            state["lam"] = float(self.param_groups[0]["damping"])
            state["p_prev"] = None
            state["step"] = 0
        return state

    def _outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.layout.as_dict(theta), (x,))

    def _loss(self, theta: torch.Tensor, x, y, noise: NoiseReplay) -> float:
        noise.replay()
        with torch.no_grad():
            value = float(self.curvature.loss(self._outputs(theta, x), y))
        return value if math.isfinite(value) else math.inf

    @torch.no_grad()
    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:  # type: ignore[override]
        s = self.param_groups[0]
        state = self._state
        theta = self.layout.get_flat()
        noise = NoiseReplay(self.layout.device)
        n = inputs.shape[0]
        try:
            noise.replay()
            with torch.enable_grad():
                z, vjp_fn = vjp(lambda t: self._outputs(t, inputs), theta)[:2]  # (outputs, pullback); no aux
                z_req = z.detach().requires_grad_(True)
                loss0 = self.curvature.loss(z_req, targets)
                (grad_z,) = torch.autograd.grad(loss0, z_req)
            noise.mark_first_evaluation_done()
            c0 = float(loss0)
            (g,) = vjp_fn(grad_z)
            z = z.detach()

            def outputs(t: torch.Tensor) -> torch.Tensor:
                noise.replay()  # the same noise as at the linearisation point
                return self._outputs(t, inputs)

            ggn_vector = ggn_vector_product(outputs, theta, z, vjp_fn, self.loss_name, n)

            lam = state["lam"]
            precond = None
            if s["precondition"]:
                noise.replay()
                rows, _, _ = self._rows_engine.rows(inputs, targets, _PerSampleGradient(self.curvature))
                precond = (rows.pow(2).sum(dim=0) / n + lam) ** s["preconditioner_power"]
            x0 = None if state["p_prev"] is None else s["warm_start"] * state["p_prev"]
            iterates, cg_iterations = conjugate_gradient(
                lambda v: ggn_vector(v) + lam * v, -g, x0=x0, preconditioner=precond, max_iter=s["max_cg"],
                epsilon=s["cg_epsilon"],
            )
            p_final = iterates[-1]
            # CG backtracking (M&S §20.8.7): walk the stored iterates back while the loss keeps improving.
            best_p, best_loss = p_final, self._loss(theta + p_final, inputs, targets, noise)
            for p in reversed(iterates[:-1]):
                value = self._loss(theta + p, inputs, targets, noise)
                if value >= best_loss:
                    break
                best_p, best_loss = p, value
            # Levenberg-Marquardt heuristic on the final iterate (as the ltatzel port does).
            q_final = float(g @ p_final + 0.5 * p_final @ (ggn_vector(p_final) + lam * p_final))
            f_final = self._loss(theta + p_final, inputs, targets, noise)
            rho = (f_final - c0) / q_final if q_final < 0 else -math.inf
            if rho < 0.25:
                lam *= 1.5
            elif rho > 0.75:
                lam *= 2.0 / 3.0
            # Armijo line search on the backtracked iterate.
            alpha, slope, accepted_loss = s["lr"], float(g @ best_p), c0
            for _ in range(s["max_line_search"]):
                value = self._loss(theta + alpha * best_p, inputs, targets, noise)
                if value <= c0 + s["armijo_c"] * alpha * slope:
                    accepted_loss = value
                    break
                alpha *= s["backtrack_factor"]
            else:
                alpha = 0.0
            new_theta = theta + alpha * best_p
            if not bool(torch.isfinite(new_theta).all()):
                alpha, new_theta = 0.0, theta
            self.layout.set_flat(new_theta)
            state["lam"], state["p_prev"] = lam, p_final
            state["step"] += 1
            return {"loss_before": c0, "loss_after": accepted_loss if alpha > 0 else c0, "cg_iterations": cg_iterations,
                    "lam": lam, "alpha": alpha}
        except BaseException:
            self.layout.set_flat(theta)
            raise
        finally:
            noise.finish()


def conjugate_gradient(
    matvec, b: torch.Tensor, *, x0: torch.Tensor | None = None, preconditioner: torch.Tensor | None = None,
    max_iter: int = 100, epsilon: float = 5e-4, storage_base: float = 1.3,
) -> tuple[list[torch.Tensor], int]:
    """Preconditioned CG for A x = b (A SPD) with Martens' stopping rule.

    Minimises q(x) = ½ xᵀAx − bᵀx; stops at iteration i when i > k = max(10, ⌈0.1 i⌉), q(xᵢ) < 0 and
    (q(xᵢ) − q(x_{i−k})) / q(xᵢ) < k·ε, or at max_iter, or when the residual vanishes. Returns the iterates
    stored at i ∈ {⌈1.3ʲ⌉} plus the last one (for backtracking), and the number of iterations.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x)
    m_inv = (lambda v: v / preconditioner) if preconditioner is not None else (lambda v: v)
    y = m_inv(r)
    p = y.clone()
    ry = float(r @ y)
    q_values: list[float] = []
    stored: list[tuple[int, torch.Tensor]] = []
    store_at = {math.ceil(storage_base**j) for j in range(int(math.log(max_iter, storage_base)) + 2)}
    b_norm = float(b.norm())
    i = 0
    for i in range(1, max_iter + 1):
        ap = matvec(p)
        pap = float(p @ ap)
        if pap <= 0 or not math.isfinite(pap):
            break  # not positive definite along p (cannot happen with λ > 0 but rounding)
        step = ry / pap
        x = x + step * p
        r = r - step * ap
        q_values.append(float(-0.5 * (x @ (r + b))))  # q(x) = ½xᵀAx − bᵀx with Ax = b − r
        if i in store_at:
            stored.append((i, x))
        k = max(10, math.ceil(0.1 * i))
        if i > k and q_values[-1] < 0 and (q_values[-1] - q_values[-1 - k]) / q_values[-1] < k * epsilon:
            break
        if float(r.norm()) <= 1e-10 * max(b_norm, 1e-30):
            break
        y = m_inv(r)
        ry_new = float(r @ y)
        p = y + (ry_new / ry) * p
        ry = ry_new
    if not stored or stored[-1][0] != i:
        stored.append((i, x))
    return [iterate for _, iterate in stored], i
