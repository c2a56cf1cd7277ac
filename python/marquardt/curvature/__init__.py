"""Where the rows of the generalized Jacobian come from (ALGORITHM.md §0.2, §3)."""
