"""Second-order baselines of the paper's comparison, implemented in house (none is installable from PyPI in a
maintained PyTorch form; ALGORITHM.md §6.4): Hessian-free (Martens 2010)."""

from .hessian_free import HessianFree

__all__ = ["HessianFree"]
