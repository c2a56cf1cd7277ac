"""One noise draw per LM iteration for stochastic layers (RReLU, dropout; docs/algorithm.md, "Subsampled
curvature and noise").

Every evaluation inside an iteration (Jacobian, trial step, line-search candidates) replays the random number
generator from the same state, so stochastic layers see identical noise and the accept/reject comparisons are
fair. Evaluations must also run the same forward passes in the same order (same chunks), which the callers
guarantee by chunking every evaluation of a batch identically.
"""

from __future__ import annotations

import torch


class NoiseReplay:
    """Captures the RNG state at the start of an iteration and restores it before each evaluation."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.after_first: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def replay(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.device)

    def mark_first_evaluation_done(self) -> None:
        if self.after_first is None:
            cuda = torch.cuda.get_rng_state(self.device) if self.cuda_state is not None else None
            self.after_first = (torch.get_rng_state(), cuda)

    def finish(self) -> None:
        """Leave the generator as one forward pass would have: the same whatever the number of trials."""
        if self.after_first is not None:
            torch.set_rng_state(self.after_first[0])
            if self.after_first[1] is not None:
                torch.cuda.set_rng_state(self.after_first[1], self.device)
