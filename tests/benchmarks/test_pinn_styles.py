"""benchmarks/pinn_styles.py runs, and the three styles it times take the same steps."""

from __future__ import annotations

import json

import pytest

from benchmarks import pinn_styles


def test_the_three_styles_are_timed_on_the_same_trajectory(tmp_path):
    out = tmp_path / "pinn.json"
    report = pinn_styles.main(["--width", "6", "--points", "10", "--iterations", "3", "--repeats", "2",
                               "--json", str(out)])
    losses = report["final_loss"]
    assert losses["torch_func"] == pytest.approx(losses["autograd"], rel=1e-10)
    assert losses["taylor"] == pytest.approx(losses["autograd"], rel=1e-10)
    assert all(ms > 0 for ms in report["ms_per_iteration"].values()) and report["ratio_autograd_over_taylor"] > 0
    assert json.loads(out.read_text())["settings"]["iterations"] == 3
