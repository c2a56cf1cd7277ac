r"""Linear differential operators with constant coefficients and no mixed second derivatives:

.. math::

    \mathcal{L}u = c\,u + \sum_j b_j\,\partial_j u + \sum_j a_j\,\partial_j^2 u

the shape of the Poisson operator (−Δ), the heat operator (∂ₜ − κΔₓ), advection-diffusion with constant velocity,
and the Helmholtz operator (Δ + k²). They add, subtract and scale::

    heat = derivative(0) - 0.25 * laplacian(range(1, 3))
    helmholtz = laplacian(range(2)) + 4.0 * value()

Taylor mode (:mod:`marquardt.pde.taylor`) evaluates such an operator on a network by carrying the value, the
input derivatives ∂ⱼu along the directions the operator needs, and the weighted sum Σⱼ aⱼ ∂²ⱼu forward through
the layers; no second backward pass is taken.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def _merged(*terms: Iterable[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    coefficients: dict[int, float] = {}
    for part in terms:
        for j, a in part:
            coefficients[j] = coefficients.get(j, 0.0) + a
    return tuple(sorted((j, a) for j, a in coefficients.items() if a != 0.0))


@dataclass(frozen=True)
class DiagonalOperator:
    """𝓛u = value·u + Σⱼ first[j]·∂ⱼu + Σⱼ second[j]·∂²ⱼu, the coefficients as (coordinate, coefficient)
    pairs."""

    value: float = 0.0
    first: tuple[tuple[int, float], ...] = ()
    second: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("first", "second"):
            for j, a in getattr(self, name):
                if not (isinstance(j, int) and not isinstance(j, bool) and j >= 0):
                    raise ValueError(f"{name}: expected coordinates as ints >= 0, got {j!r}")
                if not isinstance(a, (int, float)) or isinstance(a, bool):
                    raise TypeError(f"{name}: expected numeric coefficients, got {a!r} for coordinate {j}")
        if not isinstance(self.value, (int, float)) or isinstance(self.value, bool):
            raise TypeError(f"value: expected a number, got {self.value!r}")

    @property
    def directions(self) -> tuple[int, ...]:
        """The input coordinates whose derivatives the operator needs (first or second order)."""
        return tuple(sorted({j for j, _ in self.first} | {j for j, _ in self.second}))

    @property
    def order(self) -> int:
        return 2 if self.second else 1 if self.first else 0

    def __add__(self, other: DiagonalOperator) -> DiagonalOperator:
        if not isinstance(other, DiagonalOperator):
            return NotImplemented
        return DiagonalOperator(self.value + other.value, _merged(self.first, other.first),
                                _merged(self.second, other.second))

    def __mul__(self, scale: float) -> DiagonalOperator:
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            return NotImplemented
        return DiagonalOperator(self.value * scale, _merged([(j, a * scale) for j, a in self.first]),
                                _merged([(j, a * scale) for j, a in self.second]))

    __rmul__ = __mul__

    def __neg__(self) -> DiagonalOperator:
        return self * -1.0

    def __sub__(self, other: DiagonalOperator) -> DiagonalOperator:
        if not isinstance(other, DiagonalOperator):
            return NotImplemented
        return self + (-other)


def _coordinates(coordinates: Iterable[int] | int, name: str) -> list[int]:
    picked = list(range(coordinates)) if isinstance(coordinates, int) else list(coordinates)
    if not picked:
        raise ValueError(f"{name}: expected at least one coordinate")
    return picked


def laplacian(coordinates: Iterable[int] | int) -> DiagonalOperator:
    """Δu = Σⱼ ∂²ⱼu over ``coordinates`` (an int d means the first d: ``laplacian(2)`` is ∂²₀ + ∂²₁)."""
    return DiagonalOperator(second=_merged([(j, 1.0) for j in _coordinates(coordinates, "coordinates")]))


def derivative(coordinate: int) -> DiagonalOperator:
    """∂u/∂x_coordinate (the time derivative ∂ₜ when time is that input column)."""
    return DiagonalOperator(first=((coordinate, 1.0),))


def value() -> DiagonalOperator:
    """u itself (boundary and initial conditions)."""
    return DiagonalOperator(value=1.0)
