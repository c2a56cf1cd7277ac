"""K-FAC for Linear and Conv2d layers (Martens & Grosse 2015; KFC, Grosse & Martens 2016; docs/algorithm.md,
"Baselines").

Two variants, both followed by SGD with momentum:

* ``variant="paper"`` — what the paper's authors ran (the K-FAC preconditioner of EKFAC-pytorch): factors from
  the real labels (empirical Fisher), recomputed on every batch without running averages, damping ε split as
  √ε on each factor, inverses every step; the preconditioned conv gradient is divided by the number of
  spatial locations.
* ``variant="standard"`` — the de-facto PyTorch K-FAC (alecwangcq-style): G from labels sampled from the
  model's predictive distribution (the true Fisher), running averages (decay 0.95), factors every
  ``factor_interval`` steps, eigendecompositions every ``inverse_interval`` steps, damping added to the
  eigenvalue products, and KL-clipping of the update.

Factors, with ā = [a; 1] when the layer has a bias and Ds the per-example output gradient (N times the
gradient of the mean loss):
  Linear: A = E[ā āᵀ], G = E[Ds Dsᵀ];  Conv2d: A = E[Σ_t ā_t ā_tᵀ] (im2col patches), G = E[Σ_t Ds_t Ds_tᵀ]/|T|.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

KFACLayer = nn.Linear | nn.Conv2d  # the layers K-FAC preconditions


def _homogeneous(a: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1) if bias else a


def _patches(module: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """im2col of the layer input: [N, C_in·k_h·k_w, |T|]."""
    padding = module.padding
    assert not isinstance(padding, str)  # 'same'/'valid' padding is refused by KFAC.__init__
    return F.unfold(a, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)


def layer_inputs(module: KFACLayer, a: torch.Tensor) -> torch.Tensor:
    """ā as rows: [N, d_in(+1)] for Linear; [N·|T|, C_in·k_h·k_w(+1)] for Conv2d (im2col)."""
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return _homogeneous(a.reshape(-1, a.shape[-1]), bias)
    patches = _patches(module, a)
    return _homogeneous(patches.transpose(1, 2).reshape(-1, patches.shape[1]), bias)


def output_grads(module: KFACLayer, ds: torch.Tensor) -> torch.Tensor:
    """Ds as rows: [N, d_out] for Linear; [N·|T|, C_out] for Conv2d."""
    if isinstance(module, nn.Linear):
        return ds.reshape(-1, ds.shape[-1])
    return ds.flatten(2).transpose(1, 2).reshape(-1, ds.shape[1])


def kronecker_factors(
    module: KFACLayer, a: torch.Tensor, ds_per_example: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, G) of one layer from its input a and per-example output gradients (see the module docstring)."""
    n = a.shape[0]
    abar = layer_inputs(module, a)
    ds = output_grads(module, ds_per_example)
    A = abar.T @ abar / n
    locations = 1 if isinstance(module, nn.Linear) else ds.shape[0] // n
    G = ds.T @ ds / (n * locations)
    return A, G


def weight_gradient_matrix(module: KFACLayer) -> torch.Tensor:
    """∇W as [d_out, d_in(+1)] (the bias gradient as the last column)."""
    weight_grad = module.weight.grad
    assert weight_grad is not None  # step() runs the backward pass first
    g = weight_grad.reshape(module.weight.shape[0], -1)
    if module.bias is None:
        return g
    bias_grad = module.bias.grad
    assert bias_grad is not None
    return torch.cat([g, bias_grad.unsqueeze(1)], dim=1)


class KFAC(torch.optim.Optimizer):
    """K-FAC preconditioned SGD for the Linear/Conv2d layers of ``model`` (other parameters get plain SGD).

    ``step(inputs, targets)`` runs the forward and backward passes itself (cross-entropy or MSE loss).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str = "cross_entropy",
        *,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        variant: str = "standard",
        damping: float | None = None,
        ema_decay: float = 0.95,
        factor_interval: int = 10,
        inverse_interval: int = 100,
        kl_clip: float = 1e-3,
    ) -> None:
        if variant not in ("standard", "paper"):
            raise ValueError(f"variant: expected 'standard' or 'paper', got {variant!r}")
        if loss not in ("mse", "cross_entropy"):
            raise ValueError(f"loss: expected 'mse' or 'cross_entropy', got {loss!r}")
        if damping is None:
            damping = 1e-3 if variant == "standard" else 0.1
        if not (lr > 0 and damping > 0 and 0 <= momentum < 1):
            raise ValueError(f"Invalid lr/damping/momentum: {lr}, {damping}, {momentum}")
        self.model = model
        self.loss_name = loss
        self.variant = variant
        self.layers: list[KFACLayer] = []
        for name, m in model.named_modules():
            if not (isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.requires_grad):
                continue
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
                raise ValueError(f"model: K-FAC needs Conv2d layers with groups=1 and numeric zero padding; "
                                 f"{name!r} has groups={m.groups}, padding={m.padding!r}, "
                                 f"padding_mode={m.padding_mode!r}")
            self.layers.append(m)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, damping=damping, ema_decay=ema_decay,
                        factor_interval=factor_interval, inverse_interval=inverse_interval, kl_clip=kl_clip)
        super().__init__([p for p in model.parameters() if p.requires_grad], defaults)
        self._sgd = torch.optim.SGD(self.param_groups[0]["params"], lr=lr, momentum=momentum, weight_decay=weight_decay)
        self._inputs: dict[KFACLayer, torch.Tensor] = {}
        self._outputs: dict[KFACLayer, torch.Tensor] = {}
        self.factors: dict[KFACLayer, tuple[torch.Tensor, torch.Tensor]] = {}
        self._eig: dict[KFACLayer, tuple[torch.Tensor, ...]] = {}
        self.steps = 0

    def _loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "cross_entropy":
            return F.cross_entropy(z, y)
        return 0.5 * ((z - y) ** 2).sum(dim=1).mean()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        def hook(module, inputs, output):
            self._inputs[module] = inputs[0].detach()
            output.retain_grad()
            self._outputs[module] = output

        handles = [m.register_forward_hook(hook) for m in self.layers]
        try:
            return self.model(x)
        finally:
            for h in handles:
                h.remove()

    def _factor_labels(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Targets for the G factor: the real labels (paper) or labels sampled from the model (true Fisher)."""
        if self.variant == "paper":
            return y
        with torch.no_grad():
            if self.loss_name == "cross_entropy":
                return torch.multinomial(torch.softmax(z, dim=1), 1).squeeze(1)
            return z + torch.randn_like(z)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:  # type: ignore[override]
        s = self.param_groups[0]
        self._sgd.param_groups[0]["lr"] = s["lr"]
        n = inputs.shape[0]
        refresh_factors = self.variant == "paper" or self.steps % s["factor_interval"] == 0
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            z = self._forward(inputs)
            loss = self._loss(z, targets)
            if refresh_factors:
                factor_loss = self._loss(z, self._factor_labels(z, targets))
                ds = torch.autograd.grad(factor_loss, [self._outputs[m] for m in self.layers], retain_graph=True)
                for m, d in zip(self.layers, ds):
                    A, G = kronecker_factors(m, self._inputs[m], d * n)
                    if self.variant == "standard" and m in self.factors:
                        decay = min(1.0 - 1.0 / (self.steps + 1), s["ema_decay"])
                        A = decay * self.factors[m][0] + (1 - decay) * A
                        G = decay * self.factors[m][1] + (1 - decay) * G
                    self.factors[m] = (A, G)
            loss.backward()
        with torch.no_grad():
            updates = {m: self._precondition(m, weight_gradient_matrix(m)) for m in self.layers}
            scale = self._kl_scale(updates) if self.variant == "standard" else 1.0
            for m, u in updates.items():
                u = u * scale
                weight_grad = m.weight.grad
                assert weight_grad is not None
                if m.bias is not None:
                    bias_grad = m.bias.grad
                    assert bias_grad is not None
                    weight_grad.copy_(u[:, :-1].reshape_as(m.weight))
                    bias_grad.copy_(u[:, -1])
                else:
                    weight_grad.copy_(u.reshape_as(m.weight))
        self._sgd.step()
        self.steps += 1
        return {"loss": float(loss.detach())}

    def _precondition(self, m: KFACLayer, grad: torch.Tensor) -> torch.Tensor:
        s = self.param_groups[0]
        A, G = self.factors[m]
        if self.variant == "paper":
            # (G + √ε I)⁻¹ ∇W (A + √ε I)⁻¹, inverses every step; conv: / number of spatial locations
            root = math.sqrt(s["damping"])
            eye_a = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
            eye_g = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
            u = torch.linalg.solve(G + root * eye_g, torch.linalg.solve(A + root * eye_a, grad.T).T)
            if isinstance(m, nn.Conv2d):
                u = u / self._locations(m)
            return u
        if m not in self._eig or self.steps % s["inverse_interval"] == 0:
            d_a, q_a = torch.linalg.eigh(A)
            d_g, q_g = torch.linalg.eigh(G)
            self._eig[m] = (d_a.clamp_min(0), q_a, d_g.clamp_min(0), q_g)
        d_a, q_a, d_g, q_g = self._eig[m]
        v = q_g.T @ grad @ q_a
        v = v / (d_g.unsqueeze(1) * d_a.unsqueeze(0) + s["damping"])
        return q_g @ v @ q_a.T

    def _locations(self, m: nn.Conv2d) -> int:
        return _patches(m, self._inputs[m][:1]).shape[2]

    def _kl_scale(self, updates: dict[KFACLayer, torch.Tensor]) -> float:
        """ν = min(1, sqrt(κ / (lr² Σ Uᵀ∇W))): bounds the KL change of the predictive distribution."""
        s = self.param_groups[0]
        vg = sum(float((u * weight_gradient_matrix(m)).sum()) for m, u in updates.items()) * s["lr"] ** 2
        return min(1.0, math.sqrt(s["kl_clip"] / vg)) if vg > 0 else 1.0
