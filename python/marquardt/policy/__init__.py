"""The per-iteration decisions of LM, each a small class behind a base class, chosen by name or passed as an
instance: damping, λ rule, momentum, acceptance, line search, geodesic acceleration."""
