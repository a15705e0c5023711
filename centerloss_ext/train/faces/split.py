"""`centerloss-faces split`: one folder per identity -> ``train/`` and ``val/``, by image,
optionally with whole identities kept out of training (for open-set verification)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Dict, List

from ..core.errors import DataError
from .data import scan_identity_folder


def split_identity_folder(
    source: Path,
    out: Path,
    val_fraction: float = 0.1,
    unseen_identities: int = 0,
    seed: int = 0,
    copy: bool = False,
) -> Dict[str, int]:
    """Splits ``source/<identity>/<images>`` into ``out/train`` and ``out/val`` by image:
    ``val_fraction`` of each identity's images (at least one, and never its last) go to
    val/; ``unseen_identities`` identities, drawn at random, go to val/ whole (for
    open-set verification). Files are symlinked (``copy``: copied). Identities with a
    single image stay in train/ only. Returns counts."""
    source, out = Path(source).resolve(), Path(out)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1); got {val_fraction}")
    for split in ("train", "val"):
        if (out / split).exists() and any((out / split).iterdir()):
            raise DataError(f"{out / split} exists and is not empty")
    tree = scan_identity_folder(source)
    names = sorted(tree.class_to_idx)
    if unseen_identities > len(names) - 2:
        raise DataError(
            f"--unseen-identities {unseen_identities}: {source} holds "
            f"{len(names)} identities and train/ needs at least 2"
        )
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
            n_val = min(
                max(1, round(val_fraction * len(files))) if val_fraction > 0 else 0, len(files) - 1
            )
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
