"""How (A + λ diag d) δ = −g is solved: the System interface, its primal, dual and block-diagonal forms, and the
choice between them."""
