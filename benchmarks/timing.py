"""Side-by-side timing helpers shared by the benchmark scripts.

Candidates of one case are timed round-robin (A, B, C, A, B, C, ...) so that drifts of the machine (clock,
other load) hit all of them alike; each figure is the median of the repeats. CUDA work is synchronised
inside the timed region.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_side_by_side(
    candidates: dict[str, Callable[[], object]], device: str, repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median wall seconds of each candidate, timed interleaved."""
    return {name: statistics.median(v) for name, v in sample_side_by_side(candidates, device, repeats, warmup).items()}


def ratios_to(samples: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Median over rounds of t(candidate)/t(reference) within the same round (robust to slow drifts)."""
    ref = samples[reference]
    return {name: statistics.median(t / r for t, r in zip(v, ref)) for name, v in samples.items()}


def sample_side_by_side(
    candidates: dict[str, Callable[[], object]], device: str, repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall seconds of every round of every candidate, timed interleaved (A, B, C, A, B, C, ...)."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - t0)
    return samples


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or "cpu"
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
