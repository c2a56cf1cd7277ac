"""Second-order baselines of the paper's comparison, implemented in house (none is installable from PyPI in a
maintained PyTorch form; docs/algorithm.md, "Baselines"): Hessian-free (Martens 2010) and K-FAC (Martens &
Grosse 2015)."""

from .hessian_free import HessianFree
from .kfac import KFAC

__all__ = ["HessianFree", "KFAC"]
