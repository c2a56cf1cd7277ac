"""λ update rules (ALGORITHM.md §2.2): fixed factors, delayed gratification, Nielsen."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LambdaRule:
    """How λ moves after an accepted or a rejected trial.

    * ``fixed``: λ ← λ/down on success, λ·up on failure (Marquardt; the paper's code uses 10/10 and skips
      updates that would leave [lam_min, lam_max]).
    * ``delayed``: the same with up = 2, down = 3 (Transtrum & Sethna's "delayed gratification", default).
    * ``nielsen``: on success λ ← λ·max(1/3, 1 − (2ρ − 1)³), ν ← 2; on failure λ ← λν, ν ← 2ν, with ρ the
      gain ratio actual/predicted reduction.
    """

    kind: str = "delayed"
    up: float = 2.0
    down: float = 3.0
    lam_min: float = 1e-10
    lam_max: float = 1e10
    skip_outside: bool = False  # paper-code behaviour: no update at all outside the bounds

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "delayed", "nielsen"):
            raise ValueError(f"lambda_rule: expected 'fixed', 'delayed' or 'nielsen', got {self.kind!r}")
        if not (self.up > 1 and self.down > 1):
            raise ValueError(f"lambda factors: up and down must be > 1, got up={self.up}, down={self.down}")
        if not (0 < self.lam_min < self.lam_max):
            raise ValueError(f"lambda bounds: need 0 < lam_min < lam_max, got {self.lam_min}, {self.lam_max}")

    def accepted(self, lam: float, nu: float, gain_ratio: float | None) -> tuple[float, float]:
        if self.kind == "nielsen":
            rho = gain_ratio if gain_ratio is not None else 1.0
            # The factor is 1/3 for every ρ ≥ 1; the clip only keeps the cube of an extreme ρ (a predicted
            # reduction near zero) from overflowing a Python float, which raises instead of giving inf.
            rho = min(max(rho, -1e3), 1e3)
            factor = max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            return min(max(lam * factor, self.lam_min), self.lam_max), 2.0
        if self.skip_outside and lam < self.lam_min:
            return lam, nu
        return max(lam / self.down, self.lam_min), nu

    def rejected(self, lam: float, nu: float) -> tuple[float, float]:
        if self.kind == "nielsen":
            return min(lam * nu, self.lam_max), 2.0 * nu
        if self.skip_outside and lam > self.lam_max:
            return lam, nu
        return min(lam * self.up, self.lam_max), nu
