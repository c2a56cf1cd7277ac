"""The MNIST IDX loader: real files when present, clear errors for missing or corrupt ones."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import pytest
import torch

from benchmarks.paper import mnist_data

DATA_DIR = os.environ.get("MARQUARDT_MNIST_DIR") or mnist_data.default_dir()


@pytest.mark.skipif(DATA_DIR is None, reason="MNIST IDX files not found (../shared/data/mnist or MARQUARDT_MNIST_DIR)")
def test_real_files():
    x, y = mnist_data.load("test", DATA_DIR)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(float(x.mean())) < 0.05  # normalised with the training mean/std


def write_idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(">II", magic, shape[0]) + b"".join(struct.pack(">I", s) for s in shape[1:])
    path.write_bytes(gzip.compress(header + payload))


def test_small_synthetic_files(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, (2, 28, 28), bytes(range(256)) * 6 + bytes(32))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, (2,), bytes([3, 7]))
    x, y = mnist_data.load("test", tmp_path)
    assert x.shape == (2, 1, 28, 28) and y.tolist() == [3, 7]


def test_missing_file_names_what_to_put_where(tmp_path):
    with pytest.raises(mnist_data.MNISTError, match=r"t10k-images-idx3-ubyte\(\.gz\) not found in .*nothing is downloaded"):
        mnist_data.load("test", tmp_path)


def test_corrupt_files(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not a gzip file")
    with pytest.raises(mnist_data.MNISTError, match="is corrupt"):
        mnist_data.load("test", tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, (2, 28, 28), bytes(10))  # truncated payload
    with pytest.raises(mnist_data.MNISTError, match=r"corrupt: .* expected 1584 for shape \(2, 28, 28\)"):
        mnist_data.load("test", tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x999, (2, 28, 28), bytes(1568))
    with pytest.raises(mnist_data.MNISTError, match="magic number"):
        mnist_data.load("test", tmp_path)


@pytest.mark.skipif(DATA_DIR is None, reason="MNIST IDX files not found (../shared/data/mnist or MARQUARDT_MNIST_DIR)")
@pytest.mark.parametrize("curvature", ["ggn", "ef"])
def test_lm_learns_real_mnist_in_a_few_iterations(curvature):
    import marquardt
    from tests.models import paper_cnn

    x, y = mnist_data.load("train", DATA_DIR)
    x_test, y_test = mnist_data.load("test", DATA_DIR)
    model = paper_cnn(0)
    opt = marquardt.LevenbergMarquardt(model, "cross_entropy", curvature=curvature)
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(0))
    iterations = 4 if curvature == "ggn" else 8  # the empirical Fisher is the weaker curvature (docs/algorithm.md, "Curvature modes")
    for it in range(iterations):
        idx = perm[it * 600 : (it + 1) * 600]
        opt.step(x[idx], y[idx])
    with torch.no_grad():
        accuracy = float((model(x_test[:2000]).argmax(1) == y_test[:2000]).float().mean())
    assert accuracy > 0.75, accuracy  # measured 0.89 (ggn, 4 it) and 0.85 (ef, 8 it); chance is 10%
