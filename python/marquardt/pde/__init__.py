"""Physics-informed residuals: differential operators evaluated on MLPs in Taylor mode, with their parameter
Jacobians from one forward and one backward pass."""

from .operators import DiagonalOperator, derivative, laplacian, value
from .residuals import PDEResiduals, operator_by_autograd
from .taylor import NotAnMLP, Sine, TaylorMLP

__all__ = ["PDEResiduals", "operator_by_autograd", "DiagonalOperator", "derivative", "laplacian", "value",
           "TaylorMLP", "NotAnMLP", "Sine"]
