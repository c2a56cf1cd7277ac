"""The objective: everything that evaluates the model on a batch (losses, gradients, generalized Jacobian rows)."""
