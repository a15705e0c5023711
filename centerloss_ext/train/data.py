"""Data: Fashion-MNIST / MNIST as in-memory tensors, and face identity folders.

Identity folders follow torchvision's ImageFolder layout (``DIR/<identity>/<image>``);
``val/`` is labelled with ``train/``'s class-to-index mapping, never its own, so a class
missing from one split cannot shift every label after it.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import DataError

DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(d) for d in range(10))
DATASETS = ("fashion-mnist", "mnist")

# IDX magic numbers: 0x08 = unsigned byte, then the number of dimensions
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}


# ---------------------------------------------------------------- MNIST-style data

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
    """Reads an IDX file (plain or .gz) of unsigned bytes with ``ndim`` dimensions."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is too short to be an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(f"{path}: IDX magic {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x} "
                        f"(unsigned bytes, {ndim} dimension(s))")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes), "
                        f"file holds {body.size}")
    return body.reshape(shape)


def _idx_file(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def has_idx_files(directory: Path) -> bool:
    return all(_idx_file(Path(directory), s) for s in
               ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def read_idx_splits(directory: Path, class_names: Sequence[str]) -> ImageSplits:
    """The four standard files (``train-images-idx3-ubyte[.gz]``, ...) of ``directory``."""
    directory = Path(directory)
    arrays = []
    for split in ("train", "t10k"):
        images = read_idx(_idx_file(directory, f"{split}-images-idx3-ubyte"), 3)
        labels = read_idx(_idx_file(directory, f"{split}-labels-idx1-ubyte"), 1)
        if len(images) != len(labels):
            raise DataError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
        if labels.size and labels.max() >= len(class_names):
            raise DataError(f"{directory}: label {labels.max()} in {split}, expected < "
                            f"{len(class_names)}")
        arrays += [torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))]
    return ImageSplits(*arrays, class_names=class_names, source=str(directory))


def load_mnist_like(name: str, data_dir: Optional[str] = None,
                    download: bool = False) -> ImageSplits:
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
            raise DataError(f"Fashion-MNIST not found in {DEFAULT_FASHION_DIR}: install it "
                            "(apt-get install dataset-fashion-mnist), or pass --data DIR "
                            "(a folder with the IDX files), or --download")
        return read_idx_splits(DEFAULT_FASHION_DIR, class_names)
    if data_dir is not None and has_idx_files(Path(data_dir)):
        return read_idx_splits(Path(data_dir), class_names)
    return _torchvision_splits(name, data_dir, download, class_names)


def _torchvision_splits(name: str, data_dir: Optional[str], download: bool,
                        class_names: Sequence[str]) -> ImageSplits:
    from torchvision import datasets

    cls = datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST
    root = data_dir or os.path.join(os.path.expanduser("~"), ".cache", "centerloss_ext")
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as e:
        hint = "" if download else " (pass --download to fetch it, where a network exists)"
        raise DataError(f"{name} not found under {root}: {e}{hint}") from e
    return ImageSplits(train.data, train.targets.long(), test.data, test.targets.long(),
                       class_names=class_names, source=str(Path(root) / cls.__name__))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [-1, 1]."""
    return images.unsqueeze(1).float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------- identity folders

def _image_extensions() -> Tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    return tuple(IMG_EXTENSIONS)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_image_extensions())


def list_images(directory: Path) -> List[Path]:
    """Image files under ``directory`` (recursively), sorted, so the order is the same on
    every machine."""
    directory = Path(directory)
    found = [Path(root) / f for root, _, files in os.walk(directory, followlinks=True)
             for f in files]
    return sorted(p for p in found if is_image_file(p))


@dataclass
class IdentitySplit:
    """One split of an identity-folder tree: (path, label) samples and the identities.

    ``class_to_idx`` maps every identity of the split to its label; identities unseen in
    training get labels from ``num_known`` up, in ``unseen``.
    """
    root: Path
    samples: List[Tuple[Path, int]]
    class_to_idx: Dict[str, int]
    unseen: List[str] = field(default_factory=list)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)


def scan_identity_folder(root: Path, known: Optional[Dict[str, int]] = None) -> IdentitySplit:
    """Reads ``root/<identity>/**/<image>``.

    Without ``known`` the identities are numbered in sorted order (train). With ``known``
    (train's mapping) they keep train's numbers, and identities train lacks are numbered
    after train's and listed in ``unseen``. Malformed trees raise DataError.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    stray = [p.name for p in root.iterdir() if is_image_file(p)]
    if stray:
        raise DataError(f"{root} holds image files directly ({', '.join(sorted(stray)[:3])}"
                        f"{', ...' if len(stray) > 3 else ''}): expected one subfolder per "
                        "identity, each holding that identity's images")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{root} has no identity subfolders (expected {root}/<identity>/<image>)")
    per_class = {name: list_images(root / name) for name in names}
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise DataError(f"{root}: identity folder(s) without images: "
                        f"{', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''} "
                        f"(image extensions: {', '.join(_image_extensions())})")
    if known is None:
        class_to_idx = {name: i for i, name in enumerate(names)}
        unseen: List[str] = []
    else:
        unseen = [name for name in names if name not in known]
        class_to_idx = {name: known[name] for name in names if name in known}
        next_label = max(known.values(), default=-1) + 1
        for offset, name in enumerate(unseen):
            class_to_idx[name] = next_label + offset
    samples = [(path, class_to_idx[name]) for name in names for path in per_class[name]]
    return IdentitySplit(root, samples, class_to_idx, unseen)


@dataclass
class FaceFolders:
    """``input_dir/train`` and ``input_dir/val``, both labelled with train's mapping."""
    train: IdentitySplit
    val: IdentitySplit

    @property
    def class_names(self) -> List[str]:
        """Training identities in label order."""
        return sorted(self.train.class_to_idx, key=self.train.class_to_idx.__getitem__)

    @property
    def num_classes(self) -> int:
        return len(self.train.class_to_idx)


def load_face_folders(input_dir: Path, num_classes: Optional[int] = None,
                      class_names: Optional[Sequence[str]] = None) -> FaceFolders:
    """Scans ``input_dir/{train,val}``.

    ``num_classes``, when given, must equal the number of training identities.
    ``class_names`` (from a checkpoint) fixes the mapping instead of train/'s folders;
    train/ must then hold exactly those identities.
    """
    input_dir = Path(input_dir)
    for split in ("train", "val"):
        if not (input_dir / split).is_dir():
            raise DataError(f"{input_dir / split} is missing: --input-dir must hold train/ "
                            "and val/, each with one subfolder per identity")
    train = scan_identity_folder(input_dir / "train")
    if class_names is not None:
        expected = {name: i for i, name in enumerate(class_names)}
        if set(expected) != set(train.class_to_idx):
            extra = sorted(set(train.class_to_idx) - set(expected))[:5]
            missing = sorted(set(expected) - set(train.class_to_idx))[:5]
            raise DataError(f"{input_dir / 'train'} does not hold the identities the model "
                            f"was trained on (new: {extra}, missing: {missing})")
        train = scan_identity_folder(input_dir / "train", known=expected)
    if len(train.class_to_idx) < 2:
        raise DataError(f"{input_dir / 'train'} holds {len(train.class_to_idx)} identity; "
                        "a softmax classifier needs at least 2")
    if num_classes is not None and num_classes != len(train.class_to_idx):
        raise DataError(f"--num-classes {num_classes} but {input_dir / 'train'} holds "
                        f"{len(train.class_to_idx)} identities: drop --num-classes or fix "
                        "the folders")
    val = scan_identity_folder(input_dir / "val", known=train.class_to_idx)
    return FaceFolders(train, val)


def split_identity_folder(source: Path, out: Path, val_fraction: float = 0.1,
                          unseen_identities: int = 0, seed: int = 0,
                          copy: bool = False) -> Dict[str, int]:
    """Splits ``source/<identity>/<images>`` into ``out/train`` and ``out/val`` by image:
    ``val_fraction`` of each identity's images (at least one, and never its last) go to
    val/; ``unseen_identities`` identities, drawn at random, go to val/ whole (for
    open-set verification). Files are symlinked (``copy``: copied). Identities with a
    single image stay in train/ only. Returns counts."""
    import random
    import shutil

    source, out = Path(source).resolve(), Path(out)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1); got {val_fraction}")
    for split in ("train", "val"):
        if (out / split).exists() and any((out / split).iterdir()):
            raise DataError(f"{out / split} exists and is not empty")
    tree = scan_identity_folder(source)
    names = sorted(tree.class_to_idx)
    if unseen_identities > len(names) - 2:
        raise DataError(f"--unseen-identities {unseen_identities}: {source} holds "
                        f"{len(names)} identities and train/ needs at least 2")
    rng = random.Random(seed)
    unseen = set(rng.sample(names, unseen_identities))
    by_identity: Dict[str, List[Path]] = {name: [] for name in names}
    for path, label in tree.samples:
        by_identity[names[label]].append(path)
    counts = {"train_images": 0, "val_images": 0, "unseen_identities": len(unseen)}
    for name in names:
        files = by_identity[name]
        if name in unseen:
            val, train = files, []
        else:
            shuffled = files[:]
            rng.shuffle(shuffled)
            n_val = min(max(1, round(val_fraction * len(files))) if val_fraction > 0 else 0,
                        len(files) - 1)
            val, train = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
        for split, chosen in (("train", train), ("val", val)):
            for path in chosen:
                target = out / split / name / path.relative_to(source / name)
                target.parent.mkdir(parents=True, exist_ok=True)
                if copy:
                    shutil.copy2(path, target)
                else:
                    target.symlink_to(path)
            counts[f"{split}_images"] += len(chosen)
    return counts


class ImageListDataset(Dataset):
    """(image, label) from a list of (path, label); images load as RGB PIL images."""

    def __init__(self, samples: Sequence[Tuple[Path, int]],
                 transform: Optional[Callable] = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def face_transforms(image_size: int, train: bool, augment: bool = True) -> Callable:
    """Resize to ``image_size``² and scale to [-1, 1]; for training also a mild random
    crop/zoom, a horizontal flip and colour jitter (faces are assumed roughly aligned, so
    nothing that moves them far)."""
    from torchvision import transforms as T

    steps: list = [T.Resize((image_size, image_size))]
    if train and augment:
        steps += [T.RandomResizedCrop(image_size, scale=(0.85, 1.0), ratio=(0.9, 1.1)),
                  T.RandomHorizontalFlip(),
                  T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)]
    steps += [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    return T.Compose(steps)
