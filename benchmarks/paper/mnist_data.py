"""MNIST from the IDX files (gzip or plain) in a directory; nothing is ever downloaded.

The directory defaults to ``../shared/data/mnist`` next to the repository when it exists. A missing or
corrupt file raises a clear error that names the expected files and where to put them.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.1307, 0.3081  # the authors' normalisation
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


class MNISTError(RuntimeError):
    """A missing or malformed MNIST file."""


def default_dir() -> Path | None:
    return DEFAULT_DIR if DEFAULT_DIR.is_dir() else None


def _open(directory: Path, stem: str) -> bytes:
    for name in (stem + ".gz", stem):
        path = directory / name
        if path.is_file():
            try:
                return gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise MNISTError(f"MNIST file {path} is corrupt ({exc}); replace it with the original IDX file") from exc
    expected = ", ".join(f"{s}.gz" for pair in FILES.values() for s in pair)
    raise MNISTError(
        f"MNIST file {stem}(.gz) not found in {directory}. Put the four IDX files there ({expected}) "
        "or pass --data-dir; nothing is downloaded."
    )


def _parse(data: bytes, magic: int, name: str) -> torch.Tensor:
    if len(data) < 8:
        raise MNISTError(f"MNIST file {name} is corrupt: {len(data)} bytes, too short for an IDX header")
    got_magic, count = struct.unpack(">II", data[:8])
    if got_magic != magic:
        raise MNISTError(f"MNIST file {name} is corrupt: magic number {got_magic:#x}, expected {magic:#x}")
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        offset, shape = 16, (count, rows, cols)
    else:
        offset, shape = 8, (count,)
    expected = offset + int(torch.Size(shape).numel())
    if len(data) != expected:
        raise MNISTError(f"MNIST file {name} is corrupt: {len(data)} bytes, expected {expected} for shape {shape}")
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(shape)


def load(split: str = "train", directory: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 1, 28, 28] float32 normalised, labels [N] int64) of the 'train' or 'test' split."""
    if split not in FILES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if directory is None:
        directory = default_dir()
        if directory is None:
            raise MNISTError(f"no MNIST directory given and the default {DEFAULT_DIR} does not exist; pass --data-dir")
    directory = Path(directory)
    image_stem, label_stem = FILES[split]
    images = _parse(_open(directory, image_stem), 0x803, image_stem)
    labels = _parse(_open(directory, label_stem), 0x801, label_stem)
    if images.shape[0] != labels.shape[0]:
        raise MNISTError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    x = (images.float().div_(255.0).sub_(MEAN).div_(STD)).unsqueeze(1)
    return x, labels.long()
