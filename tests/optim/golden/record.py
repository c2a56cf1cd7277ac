"""Records the golden trajectories of tests/optim/golden/cases.py into trajectories.pt (one thread).

    python -m tests.optim.golden.record

Run only to re-record on purpose (a deliberate change of behaviour); the test compares against the file.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

import marquardt
from tests.optim.golden.cases import CASES, run

PATH = Path(__file__).with_name("trajectories.pt")


def host() -> dict[str, str]:
    """What decides the floating-point path: the CPU model and the CPU SYRK kernel."""
    cpu = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in ("vendor_id", "cpu family", "model") and key.strip() not in cpu:
                cpu[key.strip()] = value.strip()
    return {**cpu, "torch": torch.__version__, "kernel": marquardt.ops.cpu_syrk_kernel(), "machine": platform.machine()}


def main() -> None:
    torch.set_num_threads(1)
    data = {"host": host(), "cases": {case.name: run(case, marquardt.LevenbergMarquardt) for case in CASES}}
    torch.save(data, PATH)
    for name, trajectory in data["cases"].items():
        print(f"{name:32s} {trajectory['reason']} lam={trajectory['lam'][-1]:.3g} loss={trajectory['loss'][-1][1]:.6g}")


if __name__ == "__main__":
    main()
