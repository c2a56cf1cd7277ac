"""The per-iteration decisions of LM, each a small piece with the paper's variant and the default."""
