"""Types beneath curvature/ and solve/: the flat parameter layout and the row operators of the Jacobian."""
