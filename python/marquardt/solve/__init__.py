"""How (A + λ diag d) δ = −g is solved: primal (dense) or dual (Woodbury) form."""
