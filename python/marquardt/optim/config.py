"""The optimizer's settings: grouped, typed, presets as values, every option validated once, at construction.

Users pass flat keyword options (``LevenbergMarquardt(model, "mse", momentum=None, lambda_init=1e-3)``); each
flat name belongs to one group of :class:`Config` (the table :data:`OPTIONS`). Policy options (``damping``,
``lambda_rule``, ``momentum``, ``acceptance``, ``line_search``, ``geodesic``) take a registered name or an
instance of the policy's base class. Older names (``lam_init``, ``lam_min``, ``lam_max``,
``lam_min_minibatch``, ``lam_skip_outside``, and ``uphill=True/False`` for ``acceptance``) are still read, from
arguments and from old checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..curvature.losses import Curvature, GaussNewtonMSE
from ..curvature.modes import make_curvature
from ..curvature.robust import ROBUST_LOSSES, RobustGaussNewton
from ..policy.acceptance import ACCEPTANCE
from ..policy.damping import DAMPING
from ..policy.geodesic import GeodesicAcceleration
from ..policy.lam import LAMBDA_RULES
from ..policy.line_search import LINE_SEARCHES
from ..policy.momentum import COMPARISON_RULES, MOMENTUM
from ..solve.choose import SOLVERS, SolverSettings


@dataclass(frozen=True)
class ObjectiveConfig:
    """How the objective and its curvature are evaluated."""

    curvature: str | None = None  # 'gn' for mse; 'ggn' (default) or 'ef' for cross_entropy
    # Subsampled curvature: A from curvature_samples evenly strided samples of each batch (a count, or a
    # fraction of the batch; the offset rotates from step to step), the gradient and every loss from the whole
    # batch (HF does the same). None = the whole batch. A schedule {first step: setting, ...} changes it as
    # training goes on, e.g. {0: 0.25, 10: None}.
    curvature_samples: int | float | dict[int, int | float | None] | None = None
    loss_scale: str = "mean"  # f = mean of the per-sample losses, or their sum
    robust: str | None = None  # least squares: None, or scipy's 'linear', 'huber', 'soft_l1', 'cauchy', 'arctan'
    robust_scale: float = 1.0  # the robust loss's scale f (scipy's f_scale): residuals beyond it count less
    engine: str = "auto"  # Jacobian engine: 'fast' (Linear/Conv layers), 'functorch', 'full', or 'auto'
    distributed: bool | str = "auto"  # sum over torch.distributed ranks when a process group is initialised


@dataclass(frozen=True)
class DampingConfig:
    kind: Any = "max_diagonal"  # 'max_diagonal' (paper), 'levenberg', 'marquardt' or a Damping
    initial: float = 0.01  # d₀
    floor: float = 0.0
    revert_on_reject: bool = False  # restore d when an iteration takes no step (the authors' code)


@dataclass(frozen=True)
class LambdaConfig:
    # 'auto' (by the objective: objective_defaults), 'delayed' (Transtrum & Sethna), 'fixed', 'nielsen',
    # 'trust_region' (Moré 1978, MINPACK) or a LambdaRule
    rule: Any = "auto"
    initial: float = 1.0
    up: float = 2.0
    down: float = 3.0
    minimum: float = 1e-10
    maximum: float = 1e10
    # A floor for λ while the batches change from step to step (mini-batch training). Without it λ falls to
    # ~1e-3 on MNIST and every step over-fits its own batch: on a validation split (train[50000:], paper CNN,
    # ggn, 80 iterations of 600) the accuracy was 88.4% with no floor, 96.3% with 0.1, 97.8% with 1.0 and 97.3%
    # with 10 (BENCHMARKS.md). None disables it.
    minibatch_minimum: float | None = 1.0
    skip_outside: bool = False  # the authors' code: no update at all outside [minimum, maximum]
    trust_factor: float = 100.0  # 'trust_region': Δ₀ = trust_factor·‖Dθ₀‖ (MINPACK's factor)


@dataclass(frozen=True)
class MomentumConfig:
    kind: Any = "auto"  # 'auto' (by the objective: objective_defaults), 'lmam', 'olmam', None or a Momentum
    delta_p_mode: str = "relative"  # δP = κ√I_GG ('relative') or delta_p ('absolute', the paper's code)
    delta_p: float = 0.6
    kappa: float = 0.5
    xi: float = 0.9
    paper_code_factor2: bool = False  # the authors' code doubles c_g
    compare_lm_step: str = "repeated_batch"  # also try the plain LM step, keep the better (policy/momentum.py)


@dataclass(frozen=True)
class TrialConfig:
    """How trial steps are made, judged and searched."""

    max_attempts: int = 10
    step_multiplier: float = 1.0
    acceptance: Any = "downhill"  # 'downhill', 'uphill' (guarded) or an Acceptance
    uphill_b: float = 2.0
    uphill_max_ratio: float | None = 1.5
    # Backtracking from s = 1 (then doubling while it improves) reached the sine noise floor in as few or fewer
    # iterations than the log grid with ~3x fewer forward passes (benchmarks/paper/sine_ablation.py).
    line_search: Any = "backtrack"  # 'backtrack', 'log', 'paper_code', 'paper_text', None or a LineSearch
    line_search_apply_always: bool = False
    geodesic: Any = False  # True or a GeodesicAcceleration
    geodesic_alpha: float = 0.75


@dataclass(frozen=True)
class Config:
    """Every setting of the optimizer, by group; ``Config().with_options(**flat)`` validates and replaces."""

    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    damping: DampingConfig = field(default_factory=DampingConfig)
    lam: LambdaConfig = field(default_factory=LambdaConfig)
    momentum: MomentumConfig = field(default_factory=MomentumConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    solve: SolverSettings = field(default_factory=SolverSettings)

    def with_options(self, **options: Any) -> Config:
        """A copy with the flat options replaced (older names translated), validated."""
        groups: dict[str, dict[str, Any]] = {}
        for given, (name, value) in translate(options).items():
            spec = OPTIONS[name]
            if not spec.check(value):  # named as the caller spelled it
                raise ValueError(f"Invalid {given} value: {value!r} (expected {spec.expected})")
            groups.setdefault(spec.group, {})[spec.field] = value
        replaced = dataclasses.replace(
            self, **{group: dataclasses.replace(getattr(self, group), **fields) for group, fields in groups.items()}
        )
        replaced.validate()
        return replaced

    def flat(self) -> dict[str, Any]:
        """{flat option name: value} (what a checkpoint's param group holds)."""
        return {name: getattr(getattr(self, spec.group), spec.field) for name, spec in OPTIONS.items()}

    def validate(self) -> None:
        """Every option's type and range, then the rules between options; errors name the option."""
        values = self.flat()
        for name, spec in OPTIONS.items():
            if not spec.check(values[name]):
                raise ValueError(f"Invalid {name} value: {values[name]!r} (expected {spec.expected})")
        if not self.lam.minimum < self.lam.maximum:
            raise ValueError(f"Invalid lambda bounds: lambda_min={self.lam.minimum} must be < "
                             f"lambda_max={self.lam.maximum}")
        floor = self.lam.minibatch_minimum
        if floor is not None and not floor < self.lam.maximum:
            raise ValueError(f"Invalid lambda_min_minibatch value: {floor!r} (expected None or a number in "
                             f"(0, lambda_max = {self.lam.maximum}))")


# ----------------------------------------------------------------------------------- the option table
def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x: Any) -> bool:
    return _number(x) and x > 0


def _non_negative(x: Any) -> bool:
    return _number(x) and x >= 0


def _above_one(x: Any) -> bool:
    return _number(x) and x > 1


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _bool(x: Any) -> bool:
    return isinstance(x, bool)


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda x: any(x is a or (type(x) is type(a) and x == a) for a in allowed)


def _sample_setting(m: Any) -> bool:
    """None (the whole batch), a count >= 1 or a fraction in (0, 1]."""
    return m is None or (_int(m) and m >= 1) or (isinstance(m, float) and 0.0 < m <= 1.0)


def _curvature_samples(m: Any) -> bool:
    if isinstance(m, dict):
        return 0 in m and all(_int(k) and k >= 0 for k in m) and all(_sample_setting(v) for v in m.values())
    return _sample_setting(m)


@dataclass(frozen=True)
class Option:
    group: str
    field: str
    check: Callable[[Any], bool]
    expected: str


_POSITIVE = "a finite number > 0"
_BOOL = "True or False"
OPTIONS: dict[str, Option] = {
    "curvature": Option("objective", "curvature", _one_of(None, "gn", "ggn", "ef"), "None, 'gn', 'ggn' or 'ef'"),
    "curvature_samples": Option("objective", "curvature_samples", _curvature_samples,
                                "None, an int >= 1, a fraction in (0, 1], or a schedule {first step: one of those} "
                                "with key 0"),
    "loss_scale": Option("objective", "loss_scale", _one_of("mean", "sum"), "'mean' or 'sum'"),
    "robust": Option("objective", "robust", _one_of(None, *ROBUST_LOSSES),
                     "None, 'linear', 'huber', 'soft_l1', 'cauchy' or 'arctan'"),
    "robust_scale": Option("objective", "robust_scale", _positive, _POSITIVE),
    "engine": Option("objective", "engine", _one_of("auto", "fast", "functorch", "full"),
                     "'auto', 'fast', 'functorch' or 'full'"),
    "distributed": Option("objective", "distributed", _one_of("auto", True, False), "'auto', True or False"),
    "damping": Option("damping", "kind", DAMPING.accepts, DAMPING.expected()),
    "d_init": Option("damping", "initial", _non_negative, "a finite number >= 0"),
    "d_floor": Option("damping", "floor", _non_negative, "a finite number >= 0"),
    "revert_d_on_reject": Option("damping", "revert_on_reject", _bool, _BOOL),
    "lambda_rule": Option("lam", "rule", lambda x: x == "auto" or LAMBDA_RULES.accepts(x),
                          f"'auto' or {LAMBDA_RULES.expected()}"),
    "lambda_init": Option("lam", "initial", _positive, _POSITIVE),
    "lambda_up": Option("lam", "up", _above_one, "a finite number > 1"),
    "lambda_down": Option("lam", "down", _above_one, "a finite number > 1"),
    "lambda_min": Option("lam", "minimum", _positive, _POSITIVE),
    "lambda_max": Option("lam", "maximum", _positive, _POSITIVE),
    "lambda_min_minibatch": Option("lam", "minibatch_minimum", lambda x: x is None or _positive(x),
                                   "None or a finite number > 0"),
    "lambda_skip_outside": Option("lam", "skip_outside", _bool, _BOOL),
    "trust_region_factor": Option("lam", "trust_factor", _positive, _POSITIVE),
    "momentum": Option("momentum", "kind", lambda x: x is None or x == "auto" or MOMENTUM.accepts(x),
                       f"'auto', None or {MOMENTUM.expected()}"),
    "delta_p_mode": Option("momentum", "delta_p_mode", _one_of("relative", "absolute"), "'relative' or 'absolute'"),
    "delta_p": Option("momentum", "delta_p", _positive, _POSITIVE),
    "kappa": Option("momentum", "kappa", _positive, _POSITIVE),
    "xi": Option("momentum", "xi", lambda x: _number(x) and 0 < x < 1, "a number in (0, 1)"),
    "paper_code_factor2": Option("momentum", "paper_code_factor2", _bool, _BOOL),
    "compare_lm_step": Option("momentum", "compare_lm_step", _one_of(*COMPARISON_RULES),
                              "'repeated_batch', 'always' or 'never'"),
    "max_attempts": Option("trial", "max_attempts", lambda x: _int(x) and x >= 1, "an int >= 1"),
    "step_multiplier": Option("trial", "step_multiplier", _positive, _POSITIVE),
    "acceptance": Option("trial", "acceptance", ACCEPTANCE.accepts, ACCEPTANCE.expected()),
    "uphill_b": Option("trial", "uphill_b", _positive, _POSITIVE),
    "uphill_max_ratio": Option("trial", "uphill_max_ratio", lambda x: x is None or (_number(x) and x >= 1),
                               "None or a finite number >= 1"),
    "line_search": Option("trial", "line_search", lambda x: x is None or LINE_SEARCHES.accepts(x),
                          f"None or {LINE_SEARCHES.expected()}"),
    "line_search_apply_always": Option("trial", "line_search_apply_always", _bool, _BOOL),
    "geodesic": Option("trial", "geodesic", lambda x: _bool(x) or isinstance(x, GeodesicAcceleration),
                       "True, False or a GeodesicAcceleration"),
    "geodesic_alpha": Option("trial", "geodesic_alpha", _positive, _POSITIVE),
    "solver": Option("solve", "solver", lambda x: isinstance(x, str) and (x == "auto" or x in SOLVERS),
                     "'auto' or a registered solver name ('primal', 'dual', 'block_diagonal', ...)"),
    "dual_method": Option("solve", "dual_method", _one_of("auto", "cholesky", "pcg"), "'auto', 'cholesky' or 'pcg'"),
    "dual_tol": Option("solve", "dual_tol", lambda x: x is None or (isinstance(x, float) and 0.0 < x < 1.0),
                       "None or a float in (0, 1)"),
    "primal_accumulation": Option("solve", "primal_accumulation", _one_of("auto", "rows", "factored"),
                                  "'auto', 'rows' or 'factored'"),
    "blocks": Option("solve", "blocks", lambda x: _one_of("layer", "unit")(x) or (_int(x) and x >= 1),
                     "'layer', 'unit' or an int >= 1"),
    "memory_budget": Option("solve", "memory_budget", lambda x: _int(x) and x > 0, "an int > 0 (bytes)"),
    "accumulate_dtype": Option("solve", "accumulate_dtype", _one_of(None, torch.float32, torch.float64),
                               "None, torch.float32 or torch.float64"),
    "solve_dtype": Option("solve", "solve_dtype", _one_of(None, torch.float32, torch.float64),
                          "None, torch.float32 or torch.float64"),
    "solve_float64_max": Option("solve", "solve_float64_max", lambda x: _int(x) and x >= 0, "an int >= 0"),
}

#: older flat names, read from arguments and old checkpoints
ALIASES = {
    "lam_init": "lambda_init",
    "lam_min": "lambda_min",
    "lam_max": "lambda_max",
    "lam_min_minibatch": "lambda_min_minibatch",
    "lam_skip_outside": "lambda_skip_outside",
}


def translate(options: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """{name as given: (current name, value)}, older names replaced; unknown names refused."""
    out: dict[str, tuple[str, Any]] = {}
    seen: set[str] = set()
    for given, value in options.items():
        name = given
        if name == "uphill":  # the boolean of older versions
            if not isinstance(value, bool):
                raise ValueError(f"Invalid uphill value: {value!r} (expected True or False; or use acceptance=)")
            name, value = "acceptance", "uphill" if value else "downhill"
        name = ALIASES.get(name, name)
        if name not in OPTIONS:
            close = difflib.get_close_matches(name, [*OPTIONS, *ALIASES], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(f"LevenbergMarquardt got an unknown option {given!r}; {hint}valid options: "
                            f"{sorted(OPTIONS)}")
        if name in seen:
            raise TypeError(f"option {name!r} given twice (under an older name too)")
        seen.add(name)
        out[given] = (name, value)
    return out


#: The authors' code (docs/algorithm.md, "The paper's experiments"): ×10/÷10 λ with bounds [1e-5, 1e5] that skip
#: the update,
#: damping reverted on failure, absolute LMAM (δP = 0.6, ξ = 0.9), the code's cubic line-search grid applied
#: unconditionally after a failure, unguarded uphill acceptance (b = 2), one attempt per batch.
PAPER = Config().with_options(
    lambda_rule="fixed", lambda_up=10.0, lambda_down=10.0, lambda_min=1e-5, lambda_max=1e5, lambda_skip_outside=True,
    lambda_min_minibatch=None, revert_d_on_reject=True, max_attempts=1, momentum="lmam", delta_p_mode="absolute",
    compare_lm_step="never", delta_p=0.6, xi=0.9, line_search="paper_code", line_search_apply_always=True,
    acceptance="uphill", uphill_b=2.0, uphill_max_ratio=None,
)

#: Plain LM for comparisons ("vanilla LM" of the paper's Fig. 1a): λI damping, ×10/÷10, nothing else.
VANILLA = Config().with_options(
    damping="levenberg", lambda_rule="fixed", lambda_up=10.0, lambda_down=10.0, momentum=None, line_search=None,
    acceptance="downhill", max_attempts=1, lambda_min_minibatch=None,
)

PRESETS: dict[str, Config] = {"default": Config(), "paper": PAPER, "vanilla": VANILLA}


def resolve(preset: str | Config, options: dict[str, Any]) -> Config:
    """The preset (a name or a Config), then the user's flat options; validated."""
    if isinstance(preset, Config):
        base = preset
    elif isinstance(preset, str) and preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"Invalid preset value: {preset!r} (expected one of {sorted(PRESETS)} or a Config)")
    return base.with_options(**options)


@dataclass(frozen=True)
class LossChoice:
    """What the optimizer minimises: a loss name (``'mse'`` when nothing is given), a residual callable
    ``fn(outputs, targets)``, or a residual function of the model ``fn(model, *batch)`` (``residuals``)."""

    loss: Any
    residual_fn: Any = None
    residuals: Any = None

    @property
    def residual_mode(self) -> bool:
        """Residuals (a callable or a function) rather than a model loss."""
        return self.residual_fn is not None or self.residuals is not None

    @property
    def name(self) -> str:
        """The name a checkpoint records (a loss module by its repr, which shows its settings)."""
        if self.residuals is not None or self.residual_fn is not None:
            return "residuals" if self.residuals is not None else "residual"
        return repr(self.loss) if isinstance(self.loss, torch.nn.Module) else self.loss

    def split(self, batch: tuple) -> tuple[Any, Any]:
        """(inputs, targets) of step()'s arguments; a residual function's arguments are its inputs, whole (none
        at all when fn(model) holds its points itself)."""
        if self.residuals is not None:
            return batch, None
        if len(batch) not in (1, 2):
            raise TypeError(f"step: expected (inputs, targets), got {len(batch)} arguments")
        return batch[0], batch[1] if len(batch) == 2 else None


def choose_loss(loss: Any, residuals: Any, options: dict[str, Any]) -> tuple[LossChoice, dict[str, Any]]:
    """The optimizer's ``loss`` and ``residuals`` arguments as a :class:`LossChoice`, and the options with the
    defaults that depend on it."""
    if residuals is not None:
        if loss is not None:
            raise ValueError("loss and residuals: pass one of them (residuals=fn(model, *batch) replaces the loss)")
        if not callable(residuals) or isinstance(residuals, torch.nn.Module):
            raise TypeError(f"residuals: expected a function fn(model, *batch) returning residuals, got "
                            f"{type(residuals).__name__}")
        choice = LossChoice(None, residuals=residuals)
    else:
        loss = "mse" if loss is None else loss
        choice = LossChoice(loss, loss if callable(loss) and not isinstance(loss, (str, torch.nn.Module)) else None)
        if isinstance(loss, torch.nn.Module):  # a loss module: its reduction is the loss scale
            reduction = getattr(loss, "reduction", "mean")
            if options.get("loss_scale", reduction) != reduction and reduction in ("mean", "sum"):
                raise ValueError(f"loss_scale: {options['loss_scale']!r} contradicts the loss module's "
                                 f"reduction={reduction!r}; leave loss_scale out")
            options = {**options, "loss_scale": reduction} if reduction in ("mean", "sum") else options
    return choice, options


#: A model with at most this many trainable parameters fitted through residuals is a parametric fit (a curve fit,
#: not a network): ``momentum='auto'`` leaves it without momentum.
PARAMETRIC_FIT_MAX_PARAMETERS = 64


def objective_defaults(config: Config, choice: LossChoice, parameters: int) -> Config:
    """The config with ``lambda_rule='auto'`` and ``momentum='auto'`` resolved for this objective, as measured by
    ``benchmarks/lambda_rule_defaults.py`` (BENCHMARKS.md):

    * residuals (a residual callable or a residual function): MINPACK's trust region (``'trust_region'``), which
      solves more hard least-squares starts in fewer iterations; a loss name or module (network training):
      ``'delayed'``, which needs about a third of the trust region's iterations on the sine network;
    * residuals of a model with at most :data:`PARAMETRIC_FIT_MAX_PARAMETERS` parameters: no momentum (on the
      Moré-Garbow-Hillstrom problems momentum solves fewer starts in more time); everything else LMAM, which
      lowers a PINN's error 10-1000x under the trust region and keeps the sine network's iterations.
    """
    changes: dict[str, Any] = {}
    if config.lam.rule == "auto":
        changes["lambda_rule"] = "trust_region" if choice.residual_mode else "delayed"
    if config.momentum.kind == "auto":
        parametric = choice.residual_mode and parameters <= PARAMETRIC_FIT_MAX_PARAMETERS
        changes["momentum"] = None if parametric else "lmam"
    return config.with_options(**changes) if changes else config


def curvature_for(loss: Any, residual_mode: bool, config: Config) -> Curvature:
    """The curvature mode of this loss, with the options that depend on it checked."""
    mode = config.objective.curvature
    if residual_mode:
        if mode not in (None, "gn"):
            raise ValueError("curvature: a residual callable or function supports only 'gn'")
        curvature: Curvature = GaussNewtonMSE()
    else:
        curvature = make_curvature(loss, mode)
    robust = config.objective.robust
    if robust is not None:
        if type(curvature) is not GaussNewtonMSE:  # (a loss module's own robust loss excluded)
            raise ValueError(f"robust: a robust loss applies to least squares (loss='mse', a residual callable or "
                             f"function), not to loss={loss!r}")
        curvature = RobustGaussNewton(robust, config.objective.robust_scale)
    geodesic = config.trial.geodesic is not False
    if subsamples_curvature(config.objective.curvature_samples) and (residual_mode or geodesic):
        raise ValueError("curvature_samples: subsampled curvature needs loss='mse' or 'cross_entropy' and "
                         "geodesic=False")
    if geodesic and not curvature.supports_geodesic:
        raise ValueError("geodesic: acceleration has no meaning for the empirical Fisher (curvature='ef')")
    return curvature



def comparable_settings(config: Config) -> dict[str, Any]:
    """The settings as values that compare equal across processes (a policy object by its class and attributes)."""

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str, torch.dtype, tuple)):
            return str(value) if isinstance(value, torch.dtype) else value
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return (type(value).__qualname__, sorted((k, repr(v)) for k, v in vars(value).items()))

    return {name: plain(value) for name, value in config.flat().items()}


def eager_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module LM evaluates: a ``torch.compile``'d model's original module (the same parameters; the Jacobian
    engines need eager hooks and torch.func, which a compiled graph bypasses, so the compiled one would give
    wrong rows). A compiled module inside an eager model is refused: compile the whole model, or none of it."""
    compiled = getattr(torch._dynamo, "eval_frame", None)
    optimized = getattr(compiled, "OptimizedModule", None) if compiled is not None else None
    if optimized is None:
        return model
    if isinstance(model, optimized):
        model = model._orig_mod
    inner = [name for name, m in model.named_modules() if isinstance(m, optimized)]
    if inner:
        raise ValueError(f"model: the submodule {inner[0]!r} is torch.compile'd; LM evaluates models eagerly, so "
                         "pass the model uncompiled (or compile the whole model: it is then run uncompiled)")
    return model


def curvature_samples_at(setting: Any, step: int) -> int | float | None:
    """The curvature sample setting in force at ``step`` (0 = the first step): the setting itself, or for a
    schedule ``{first step: setting}`` the entry with the largest first step <= ``step``."""
    if not isinstance(setting, dict):
        return setting
    return setting[max(k for k in setting if k <= step)]


def subsamples_curvature(setting: Any) -> bool:
    """Whether the setting (or any entry of a schedule) builds the curvature from part of the batch."""
    values = setting.values() if isinstance(setting, dict) else (setting,)
    return any(v is not None for v in values)
