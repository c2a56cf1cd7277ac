"""Checks a checkpoint against the optimizer it is loaded into, before anything changes."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..types.layout import ParameterLayout
from .config import Config, curvature_for

_NOT_SETTINGS = ("params", "loss")


def initial_state(config: Config, layout: ParameterLayout) -> dict[str, Any]:
    """The LM state before the first step: λ, ν, the damping vector d, no previous step, counters at zero."""
    return {
        "lam": float(config.lam.initial),
        "nu": 2.0,
        # d lives in float64 whatever the solve dtype: it is an n-vector, and it must not lose the running
        # maximum to rounding.
        "d": torch.full((layout.numel,), float(config.damping.initial), dtype=torch.float64, device=layout.device),
        "s_prev": None,
        "step": 0,
        "forward_passes": 0,
        "solves": 0,
    }


def translated_settings(group: dict[str, Any]) -> Config:
    """The Config of a checkpoint's param group (older option names read too), validated."""
    return Config().with_options(**{k: v for k, v in group.items() if k not in _NOT_SETTINGS})


def _refuse(what: str) -> ValueError:
    return ValueError(f"state_dict: {what}; was it saved by an optimizer of another model?")


def check_state_dict(state_dict: Any, layout: ParameterLayout, loss: str) -> Config:
    """The checkpoint's Config, after checking its settings, its loss and its state against this model:
    d [n] finite and >= 0, λ and ν finite and > 0, the previous step [n] finite, the step count an int >= 0."""
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("state_dict: expected the dict of LevenbergMarquardt.state_dict() (keys 'state' and "
                         "'param_groups')")
    groups = state_dict["param_groups"]
    if len(groups) != 1:
        raise _refuse(f"it has {len(groups)} param groups, LevenbergMarquardt has one")
    group = groups[0]
    if len(group.get("params", ())) != len(layout.params):
        raise _refuse(f"it holds {len(group.get('params', ()))} trainable parameters, this model has "
                      f"{len(layout.params)}")
    if group.get("loss", loss) != loss:
        raise _refuse(f"its loss is {group.get('loss')!r}, this optimizer's is {loss!r}")
    try:
        config = translated_settings(group)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"state_dict: its settings are not valid here: {exc}") from exc
    state = state_dict["state"].get(0)
    if state is None:
        return config
    n = layout.numel
    d = state.get("d")
    if not (isinstance(d, torch.Tensor) and d.shape == (n,)):
        shape = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
        raise _refuse(f"its damping vector d has shape {shape}, this model has {n} trainable parameters")
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise _refuse("its damping vector d holds NaN, Inf or negative entries")
    for name in ("lam", "nu"):  # (λ = 0 is the trust region's Gauss-Newton step; ν is its radius)
        value = state.get(name)
        least = 0.0 if name == "lam" and config.lam.rule == "trust_region" else None
        if not (isinstance(value, (int, float)) and math.isfinite(value)
                and (value >= least if least is not None else value > 0)):
            expected = "a finite number >= 0" if least is not None else "a finite number > 0"
            raise _refuse(f"its {name} is {value!r}, expected {expected}")
    s_prev = state.get("s_prev")
    if s_prev is not None and not (isinstance(s_prev, torch.Tensor) and s_prev.shape == (n,)
                                   and bool(torch.isfinite(s_prev).all())):
        raise _refuse(f"its previous step is not a finite vector of {n} entries")
    step = state.get("step")
    if not (isinstance(step, int) and step >= 0):
        raise _refuse(f"its step count is {step!r}, expected an int >= 0")
    return config


class Checkpointing:
    """What LevenbergMarquardt adds to torch.optim's state_dict loading: the checks above before anything changes,
    settings saved under older names, and the pieces rebuilt from a checkpoint's settings."""

    # (set by LevenbergMarquardt)
    layout: ParameterLayout
    loss_choice: Any
    state: Any
    param_groups: list[dict[str, Any]]
    _build: Any

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a checkpoint of this model's optimizer, refusing (before anything changes) one whose settings,
        damping vector, λ or previous step do not fit this model. Older option names are read."""
        config = check_state_dict(state_dict, self.layout, self.param_groups[0]["loss"])
        curvature_for(self.loss_choice.loss, self.loss_choice.residual_mode, config)  # the settings' rules
        saved = state_dict["state"].get(0, {})
        super().load_state_dict(state_dict)  # type: ignore[misc]  # installs the groups through __setstate__
        # torch.optim casts floating state to the parameter dtype; d stays float64 so that a resumed run is
        # bit-identical to an uninterrupted one.
        state = self.state[self.layout.params[0]]
        if "d" in saved:
            state["d"] = saved["d"].to(device=self.layout.device).clone()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Installs settings (from load_state_dict or unpickling), older option names translated; the pieces are
        rebuilt from them when the optimizer has its model."""
        super().__setstate__(state)  # type: ignore[misc]
        group = self.param_groups[0]
        config = translated_settings(group)
        loss = group.get("loss", getattr(getattr(self, "loss_choice", None), "name", "mse"))  # (older: none saved)
        self.param_groups[0] = {"params": group["params"], **config.flat(), "loss": loss}
        if "objective" in self.__dict__:
            self._build(config, curvature_for(self.loss_choice.loss, self.loss_choice.residual_mode, config))
