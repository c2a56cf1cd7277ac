"""The paper-experiment scripts run end to end at tiny sizes (synthetic IDX files), so they cannot rot."""

from __future__ import annotations

import gzip
import json
import math
import struct

import pytest
import torch

from benchmarks.paper import mnist, report


def write_idx(path, magic: int, tensor: torch.Tensor) -> None:
    shape = tuple(tensor.shape)
    header = struct.pack(">II", magic, shape[0]) + b"".join(struct.pack(">I", s) for s in shape[1:])
    path.write_bytes(gzip.compress(header + tensor.to(torch.uint8).numpy().tobytes()))


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """Learnable fake digits: class k lights up row block k of the image."""
    directory = tmp_path_factory.mktemp("mnist")
    g = torch.Generator().manual_seed(0)
    for n, images, labels in ((96, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                              (40, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randint(0, 60, (n, 28, 28), generator=g)
        for i, k in enumerate(y.tolist()):
            x[i, 2 * k + 4 : 2 * k + 6, 4:24] = 255
        write_idx(directory / images, 0x803, x)
        write_idx(directory / labels, 0x801, y)
    return directory


def run(fake_mnist, out, *args):
    return mnist.main([*args, "--data-dir", str(fake_mnist), "--out", str(out), "--no-progress", "--seeds", "0", "1"])


def test_table1_runs_every_optimizer_and_reports(fake_mnist, tmp_path):
    assert run(fake_mnist, tmp_path, "table1", "--iterations", "3", "--eval-every", "2") == 0
    files = sorted((tmp_path / "table1").glob("*.json"))
    assert len(files) == 2 * len(mnist.TABLE1)
    record = json.loads((tmp_path / "table1" / "lm-ggn_seed0.json").read_text())
    assert record["batch"] == 96 and len(record["step_seconds"]) == 3 and len(record["batch_loss"]) == 3
    assert record["step_seconds"] == sorted(record["step_seconds"])  # cumulative step time
    assert all(0.0 <= e[2] <= 1.0 for e in record["evals"])
    assert math.isfinite(record["batch_loss"][-1])
    output = tmp_path / "RESULTS.md"
    assert report.main(["--mnist", str(tmp_path), "--sine", str(tmp_path / "none"), "--output", str(output)]) == 0
    text = output.read_text()
    for name in mnist.TABLE1:
        assert f"| {name} | 2 |" in text
    assert "The paper's Table 1" in text and (tmp_path / "figure2.png").stat().st_size > 0


def test_swapped_ablation_epochs_and_sweep(fake_mnist, tmp_path):
    assert run(fake_mnist, tmp_path, "swapped", "--iterations", "2", "--optimizers", "LM (ef)", "Adam") == 0
    swapped = json.loads((tmp_path / "swapped" / "adam_seed0.json").read_text())
    assert swapped["n_train"] == 40 and swapped["n_eval"] == 96  # the test images train, the training images test
    assert run(fake_mnist, tmp_path, "ablation", "--iterations", "2") == 0
    assert len(list((tmp_path / "ablation").glob("*.json"))) == 2 * 2 * len(mnist.optimizers.ABLATION)
    assert run(fake_mnist, tmp_path, "epochs", "--epochs", "2") == 0
    epochs = json.loads((tmp_path / "epochs" / "lm-ggn_seed0.json").read_text())
    assert [e[0] for e in epochs["evals"]] == [1, 2]  # one 96-image batch per epoch of the fake set
    assert run(fake_mnist, tmp_path, "sweep", "--iterations", "2", "--optimizers", "Adam") == 0
    best = json.loads((tmp_path / "sweep.json").read_text())["best"]
    assert best["Adam"] in mnist.optimizers.SWEEPS["Adam"]


def test_validation_experiment_holds_out_the_end_of_the_training_set(fake_mnist, tmp_path):
    name = mnist.optimizers.SCHEDULED
    assert run(fake_mnist, tmp_path, "validation", "--iterations", "2", "--optimizers", name) == 0
    record = json.loads((tmp_path / "validation" / f"{mnist.slug(name)}_seed1.json").read_text())
    assert (record["n_train"], record["n_eval"]) == (80, 16)  # train[:5/6] trains, train[5/6:] is evaluated
    assert len(record["step_seconds"]) == 2 and math.isfinite(record["batch_loss"][-1])


def _sine_record(lm_curve, other_curve):
    run = lambda curve: {"curve": curve, "best_mse": min(m for _, m in curve)}  # noqa: E731
    runs = {"LM (marquardt)": [run(lm_curve)], "Adam": [run(other_curve)]}
    return {"seeds": [0], "runs": runs, "iteration_matched": runs}


def test_sine_target_verdicts():
    lm = [(0.1 * i, 1.0 / i) for i in range(1, 41)]  # reaches its best (1/40) at iteration 40, 4.0 s
    slow = [(1.0 * i, 1.0 / i) for i in range(1, 41)]  # the same values, ten times later
    text = "\n".join(report.sine_target_lines(_sine_record(lm, slow)))
    assert "| LM iterations to that level | 40 | missed |" in text and "| met (LM first) |" in text
    fast = [(0.01 * i, 0.5 / i) for i in range(1, 41)]  # a better best value, reached sooner
    text = "\n".join(report.sine_target_lines(_sine_record(lm, fast), lm_iterations=50))
    assert "| not within its 40 | missed |" in text and "missed (LM does not get there)" in text
    text = "\n".join(report.sine_target_lines(_sine_record(lm[:20], slow[:20]), lm_iterations=30))
    assert "| LM iterations to that level | 20 | met |" in text and "| met (LM first) |" in text
    faster = [(0.05 * i, 1.0 / i) for i in range(1, 21)]  # the same values, sooner than LM
    text = "\n".join(report.sine_target_lines(_sine_record(lm[:20], faster), lm_iterations=30))
    assert "| missed: Adam no later |" in text


def test_quartiles_and_first_reach():
    assert report.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0, 4.0)
    assert report.quartiles([1.0, math.inf, math.inf]) == (math.inf, math.inf, math.inf)
    run_record = {"evals": [(1, 0.1, 0.5, 1.0), (2, 0.2, 0.91, 0.5), (3, 0.3, 0.95, 0.4)]}
    assert report.first_reach(run_record) == (2.0, 0.2)
    assert report.first_reach(run_record, 0.99) == (math.inf, math.inf)


@pytest.mark.parametrize("model,blocks", [("mlp100k", "200"), ("cnn100k", "128")])
def test_large_networks_runs_block_diagonal_against_adam(fake_mnist, tmp_path, model, blocks):
    from benchmarks import large_networks

    assert large_networks.main(["--model", model, "--iterations", "2", "--curvature-samples", "0.05", "--blocks",
                                blocks, "--data-dir", str(fake_mnist), "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob(f"{model}_seed0*.json")  # the name also records non-default settings
    result = json.loads(path.read_text())
    assert result["parameters"] > 100_000 and result["blocks"] > 100  # the dense system would not fit
    assert [p[0] for p in result["lm"]] == [1, 2]
    assert [p[1] for p in result["adam"]] >= [p[1] for p in result["lm"]]  # Adam evaluated at LM's CPU times


def test_large_networks_runs_the_factored_dual(fake_mnist, tmp_path):
    from benchmarks import large_networks

    assert large_networks.main(["--model", "mlp100k", "--solver", "dual", "--iterations", "2", "--curvature-samples",
                                "0.05", "--data-dir", str(fake_mnist), "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("mlp100k_seed0*_dual.json")
    result = json.loads(path.read_text())
    assert result["form"] == "dual" and result["cg_iterations_last"] > 0  # the exact GGN, factored
    assert [p[0] for p in result["lm"]] == [1, 2]


def test_gpu_end_to_end_script_runs_on_the_cpu(fake_mnist, tmp_path):
    from benchmarks import gpu_end_to_end

    out = tmp_path / "e2e.json"
    assert gpu_end_to_end.main(["--device", "cpu", "--quick", "--data-dir", str(fake_mnist), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["sine"]["ok"] and len(result["sine"]["cpu"]) == 5
    assert any(key.startswith("time to 90%") for key in result["mnist"])


def test_batches_refuses_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="batch"):
        next(mnist.batches(10, 20, 0))


def test_loss_curves_script(tmp_path):
    from benchmarks import loss_curves

    assert loss_curves.main(["--budget-scale", "0.01", "--skip-mnist", "--out", str(tmp_path)]) == 0
    curves = json.loads((tmp_path / "sine_1-20-20-1.json").read_text())
    assert {"ours", "ours, curvature on 1/4", "L-BFGS", "Adam"} <= set(curves)
    for curve in curves.values():
        times = [t for t, _ in curve]
        assert times == sorted(times) and all(math.isfinite(v) for _, v in curve)


def test_minpack_comparison_table_counts_iterations_to_each_seeds_best():
    from benchmarks.paper.sine_minpack import comparison_lines

    record = {"arch": "1-2-1", "points": 8, "seeds": [0, 1], "iterations": 3,
              "curves": {"A": [[1.0, 0.5, 0.2, 0.2], [1.0, 0.9, 0.8, 0.7]],
                         "B": [[1.0, 0.3, 0.25, 0.201], [1.0, 0.1, 0.1, 0.1]]}}
    lines = comparison_lines(record)
    # Seed 0's best is A's 0.2 (B's 0.201 is within 1%: B gets there at iteration 3); seed 1's best is B's 0.1.
    a_row = next(line for line in lines if line.startswith("| A |"))
    b_row = next(line for line in lines if line.startswith("| B |"))
    assert a_row.endswith("| 2, > 3 |") and b_row.endswith("| 3, 1 |")
    assert "Best MSE per seed: 2.000e-01, 1.000e-01." in lines


def test_minpack_script_runs_at_a_tiny_size(tmp_path, capsys):
    pytest.importorskip("scipy")
    from benchmarks.paper import sine_minpack

    assert sine_minpack.main(["--width", "3", "--points", "40", "--seeds", "0", "--iterations", "12",
                              "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "minpack_1-3-1.json").read_text())
    for (curve,) in record["curves"].values():  # one seed
        assert len(curve) == 13 and all(math.isfinite(v) for v in curve)
        assert curve[-1] < curve[0]  # both optimizers make progress from the same start
    assert record["curves"]["LM (marquardt)"][0][0] == pytest.approx(record["curves"]["MINPACK LM"][0][0])
    assert "| MINPACK LM |" in capsys.readouterr().out
    assert (tmp_path / "minpack_1-3-1.png").stat().st_size > 10_000  # the per-iteration figure


def test_minpack_refuses_more_parameters_than_residuals():
    pytest.importorskip("scipy")
    from benchmarks.paper.sine_minpack import minpack_curve

    with pytest.raises(SystemExit, match="at least as many residuals"):
        minpack_curve(width=10, depth=1, seed=0, iterations=2, points=20)
