"""Fashion-MNIST / MNIST as in-memory tensors: the IDX file reader, with torchvision's
loader as the fallback for other folder layouts and downloads."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..core.errors import DataError, first_line

DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGITS = tuple(str(d) for d in range(10))
DATASETS = ("fashion-mnist", "mnist")

# IDX magic numbers: 0x08 = unsigned byte, then the number of dimensions
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}
_GZIP_MAX_RATIO = 1032  # deflate's largest expansion: a .gz holds at most this times its size


@dataclass
class ImageSplits:
    """uint8 images (N, 28, 28) and int64 labels (N,) for train and test."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: Sequence[str]
    source: str


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Reads an IDX file (plain or .gz) of unsigned bytes with ``ndim`` dimensions. The
    header is checked against the file's size before the body is read: nothing beyond
    the file's size (plain) or gzip's largest ratio times it (.gz) is ever allocated."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    head = 4 + 4 * ndim
    try:
        size = path.stat().st_size
        with opener(path, "rb") as f:
            raw = f.read(head)
            if len(raw) < head:
                raise DataError(f"{path} is too short to be an IDX file")
            magic = int.from_bytes(raw[:4], "big")
            if magic != _IDX_MAGIC[ndim]:
                raise DataError(
                    f"{path}: IDX magic {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x} "
                    f"(unsigned bytes, {ndim} dimension(s))"
                )
            shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
            count = math.prod(shape)
            most = size * _GZIP_MAX_RATIO if opener is gzip.open else size - head
            if count > most:
                raise DataError(
                    f"{path}: header says {shape} ({count} bytes), more than the "
                    f"{size}-byte file can hold"
                )
            body = f.read(count + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {first_line(e)}") from None
    if len(body) != count:
        raise DataError(f"{path}: header says {shape} ({count} bytes), file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _idx_file(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _required_idx_file(directory: Path, stem: str) -> Path:
    path = _idx_file(directory, stem)
    if path is None:
        raise DataError(f"{directory}: no {stem} or {stem}.gz (the four IDX files of MNIST)")
    return path


def has_idx_files(directory: Path) -> bool:
    return all(
        _idx_file(Path(directory), s)
        for s in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    )


def read_idx_splits(directory: Path, class_names: Sequence[str]) -> ImageSplits:
    """The four standard files (``train-images-idx3-ubyte[.gz]``, ...) of ``directory``."""
    directory = Path(directory)
    arrays = []
    for split in ("train", "t10k"):
        images = read_idx(_required_idx_file(directory, f"{split}-images-idx3-ubyte"), 3)
        labels = read_idx(_required_idx_file(directory, f"{split}-labels-idx1-ubyte"), 1)
        if len(images) != len(labels):
            raise DataError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
        if labels.size and labels.max() >= len(class_names):
            raise DataError(
                f"{directory}: label {labels.max()} in {split}, expected < {len(class_names)}"
            )
        arrays += [torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))]
    train_images, train_labels, test_images, test_labels = arrays
    return ImageSplits(
        train_images, train_labels, test_images, test_labels, class_names, str(directory)
    )


def load_mnist_like(
    name: str, data_dir: Optional[str] = None, download: bool = False
) -> ImageSplits:
    """Fashion-MNIST or MNIST.

    A folder holding the four IDX files is read directly (Debian's
    ``dataset-fashion-mnist`` installs them in /usr/share/datasets/fashion-mnist, the
    default for Fashion-MNIST). Otherwise torchvision's loader reads (or, with
    ``download``, fetches) the data set under ``data_dir``.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose from {DATASETS}")
    class_names = FASHION_CLASSES if name == "fashion-mnist" else DIGITS
    if data_dir is None and name == "fashion-mnist" and not download:
        if not has_idx_files(DEFAULT_FASHION_DIR):
            raise DataError(
                f"Fashion-MNIST not found in {DEFAULT_FASHION_DIR}: install it "
                "(apt-get install dataset-fashion-mnist), or pass --data DIR "
                "(a folder with the IDX files), or --download"
            )
        return read_idx_splits(DEFAULT_FASHION_DIR, class_names)
    if data_dir is not None and has_idx_files(Path(data_dir)):
        return read_idx_splits(Path(data_dir), class_names)
    return _torchvision_splits(name, data_dir, download, class_names)


def _torchvision_splits(
    name: str, data_dir: Optional[str], download: bool, class_names: Sequence[str]
) -> ImageSplits:
    from torchvision import datasets

    cls = datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST
    root = data_dir or os.path.join(os.path.expanduser("~"), ".cache", "centerloss_ext")
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as e:
        hint = "" if download else " (pass --download to fetch it, where a network exists)"
        raise DataError(f"{name} not found under {root}: {e}{hint}") from e
    return ImageSplits(
        train.data,
        train.targets.long(),
        test.data,
        test.targets.long(),
        class_names=class_names,
        source=str(Path(root) / cls.__name__),
    )


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [-1, 1]."""
    return images.unsqueeze(1).float().div_(127.5).sub_(1.0)
