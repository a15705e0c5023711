"""Face identity folders (torchvision's ImageFolder layout, ``DIR/<identity>/<image>``)
and their loading: ``val/`` is labelled with ``train/``'s class-to-index mapping, never
its own, so a class missing from one split cannot shift every label after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, DistributedSampler

from ..core.errors import DataError, first_line
from ..core.workers import WorkerSafeLoader


def _image_extensions() -> Tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_image_extensions())


def list_images(directory: Path) -> List[Path]:
    """Image files under ``directory`` (recursively), sorted, so the order is the same on
    every machine."""
    directory = Path(directory)
    found: List[Path] = []
    seen = set()  # (device, inode) of the folders entered: a symlink loop is refused
    for root, _, files in os.walk(directory, onerror=_unreadable, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            raise DataError(f"{root}: a folder reached twice through symlinks (a loop?)")
        seen.add((st.st_dev, st.st_ino))
        found += [Path(root) / f for f in files]
    return sorted(p for p in found if is_image_file(p))


def _unreadable(e: OSError) -> None:
    raise DataError(f"cannot read folder {e.filename}: {e.strerror or e}")


def _listing(folder: Path) -> List[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise DataError(f"cannot read folder {folder}: {e.strerror or e}") from None


# PIL's own limit (Image.MAX_IMAGE_PIXELS, left alone): larger images are refused in one
# line before they are decoded (train's --max-image-pixels); PIL itself refuses twice that
MAX_IMAGE_PIXELS = 89_478_485


def open_rgb(source: Any, name: object, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """An image file (or its bytes' stream) as an RGB PIL image; one that cannot be
    decoded, or one of more than ``max_pixels`` (a decompression bomb: a small file that
    decodes to gigapixels), is a DataError naming ``name``, checked from the header
    before any pixel is decoded."""
    from PIL import Image

    try:
        with Image.open(source) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise DataError(
                    f"image {name} is {width}x{height} pixels, more than the limit of "
                    f"{max_pixels} (a decompression bomb?); raise it with --max-image-pixels"
                )
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {name}: {first_line(e)}") from None


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
    stray = [p.name for p in _listing(root) if is_image_file(p)]
    if stray:
        raise DataError(
            f"{root} holds image files directly ({', '.join(sorted(stray)[:3])}"
            f"{', ...' if len(stray) > 3 else ''}): expected one subfolder per "
            "identity, each holding that identity's images"
        )
    names = sorted(p.name for p in _listing(root) if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{root} has no identity subfolders (expected {root}/<identity>/<image>)")
    per_class = {name: list_images(root / name) for name in names}
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise DataError(
            f"{root}: identity folder(s) without images: "
            f"{', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''} "
            f"(image extensions: {', '.join(_image_extensions())})"
        )
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


def load_face_folders(
    input_dir: Path, num_classes: Optional[int] = None, class_names: Optional[Sequence[str]] = None
) -> FaceFolders:
    """Scans ``input_dir/{train,val}``.

    ``num_classes``, when given, must equal the number of training identities.
    ``class_names`` (from a checkpoint) fixes the mapping instead of train/'s folders;
    train/ must then hold exactly those identities.
    """
    input_dir = Path(input_dir)
    for split in ("train", "val"):
        if not (input_dir / split).is_dir():
            raise DataError(
                f"{input_dir / split} is missing: --input-dir must hold train/ "
                "and val/, each with one subfolder per identity"
            )
    train = scan_identity_folder(input_dir / "train")
    if class_names is not None:
        expected = {name: i for i, name in enumerate(class_names)}
        if set(expected) != set(train.class_to_idx):
            extra = sorted(set(train.class_to_idx) - set(expected))[:5]
            missing = sorted(set(expected) - set(train.class_to_idx))[:5]
            raise DataError(
                f"{input_dir / 'train'} does not hold the identities the model "
                f"was trained on (new: {extra}, missing: {missing})"
            )
        train = scan_identity_folder(input_dir / "train", known=expected)
    if len(train.class_to_idx) < 2:
        raise DataError(
            f"{input_dir / 'train'} holds {len(train.class_to_idx)} identity; "
            "a softmax classifier needs at least 2"
        )
    if num_classes is not None and num_classes != len(train.class_to_idx):
        raise DataError(
            f"--num-classes {num_classes} but {input_dir / 'train'} holds "
            f"{len(train.class_to_idx)} identities: drop --num-classes or fix "
            "the folders"
        )
    val = scan_identity_folder(input_dir / "val", known=train.class_to_idx)
    return FaceFolders(train, val)


class ImageListDataset(Dataset):
    """(image, label) from a list of (path, label); images load as RGB PIL images."""

    def __init__(
        self,
        samples: Sequence[Tuple[Path, int]],
        transform: Optional[Callable] = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = open_rgb(path, path, self.max_pixels)
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
        steps += [
            T.RandomResizedCrop(image_size, scale=(0.85, 1.0), ratio=(0.9, 1.1)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    steps += [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    return T.Compose(steps)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    device: torch.device,
    generator: Optional[torch.Generator] = None,
    drop_last: bool = False,
    sampler: Optional[DistributedSampler] = None,
) -> WorkerSafeLoader:
    """One place for loaders; under torchrun a DistributedSampler gives each rank its share
    (and does the shuffling). Its workers survive a Ctrl-C whole (see ``core.workers``)."""
    return WorkerSafeLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        generator=generator,
        persistent_workers=False,
    )


def labelled_images(folder: Path) -> List[Tuple[Path, str]]:
    """An image file, or the images under ``folder``; one inside ``folder/<name>/`` is
    labelled ``<name>``, the others ``""``."""
    folder = Path(folder)
    if folder.is_file():
        if not is_image_file(folder):
            raise DataError(f"{folder} is not an image file")
        return [(folder, "")]
    if not folder.is_dir():
        raise DataError(f"{folder} is neither an image nor a folder")
    images = list_images(folder)
    if not images:
        raise DataError(f"{folder} holds no images")
    return [
        (p, p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else "")
        for p in images
    ]
