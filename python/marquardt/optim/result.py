"""What one LM iteration reports."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepResult:
    """What one LM iteration did."""

    loss_before: float
    loss_after: float
    accepted: bool
    reason: str  # 'downhill', 'uphill', 'line_search', 'rejected', 'zero_gradient', 'not_finite' (loss or g)
    lam: float
    multiplier: float  # η for a regular step, s* for a line-search step, 0 when rejected
    attempts: int
    forward_passes: int
    jacobian_passes: int
    solves: int
    form: str  # 'primal', 'dual', 'block_diagonal' or 'qr' (the form that solved the step)
    engine: str
    momentum_used: bool
    geodesic_used: bool
    grad_norm_inf: float
    step_norm: float
    theta_norm: float
    predicted_reduction: float | None = None
    #: ‖D⁻¹g‖² / (2 Σⱼ Aⱼⱼ/dⱼ): no step can lower the Gauss-Newton model by less than this from here (fit's ftol
    #: test needs it small too, so that an inaccurate solve's tiny prediction cannot stop a fit early)
    model_reduction_bound: float | None = None
    #: ‖g‖ / Σⱼ Aⱼⱼ: the Gauss-Newton step is at least this long (fit's xtol test needs it small too, so that a step
    #: held short by the damping or the trust region cannot stop a fit away from a minimum)
    step_bound: float | None = None
    #: MINPACK's scaled gradient maxⱼ |gⱼ|/√(2·loss·Aⱼⱼ), for least squares the largest cosine between r and a column
    #: of J (fit's gtol test; None where no system was built)
    gradient_cosine: float | None = None
    curvature_samples: int | None = None  # batch samples (all ranks) the curvature came from; None: residual fn
    cg_iterations: int | None = None  # conjugate-gradient iterations of all solves (dual_method 'pcg'), else None
    converged: str | None = None  # set by fit(): 'ftol', 'xtol', 'gtol' or None
    notes: list[str] = field(default_factory=list)
