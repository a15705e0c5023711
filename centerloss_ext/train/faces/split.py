"""`centerloss-faces split`: one folder per identity -> ``train/`` and ``val/``, by image,
optionally with whole identities kept out of training (for open-set verification).

Every image is decoded once first (``decodes``): the files that do not decode (truncated,
not an image under an image name) are left out and listed in ``OUT/split_report.json``,
so a crawled set's bad file is found here and not in epoch 3 of `train`; ``strict``
stops on the first instead."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core.errors import DataError, first_line
from ..core.files import write_json
from .data import scan_identity_folder

REPORT = "split_report.json"


def decodes(path: Path) -> Optional[str]:
    """None when the image decodes whole (as training loads it: RGB), else why not."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.convert("RGB")
    except Exception as e:  # OSError (truncated), SyntaxError, ValueError, bombs: all unusable
        return f"{type(e).__name__}: {first_line(e)}"
    return None


def check_images(
    paths: Sequence[Path], strict: bool = False
) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    """Decodes each image once: (the readable ones, [(unreadable one, why)]), in order;
    ``strict``: the first unreadable one is a DataError instead."""
    good: List[Path] = []
    bad: List[Tuple[Path, str]] = []
    for path in paths:
        why = decodes(path)
        if why is None:
            good.append(path)
            continue
        if strict:
            raise DataError(f"cannot read image {path}: {why} (drop --strict to leave it out)")
        bad.append((path, why))
    return good, bad


def split_identity_folder(
    source: Path,
    out: Path,
    val_fraction: float = 0.1,
    unseen_identities: int = 0,
    seed: int = 0,
    copy: bool = False,
    strict: bool = False,
) -> Dict[str, Any]:
    """Splits ``source/<identity>/<images>`` into ``out/train`` and ``out/val`` by image:
    ``val_fraction`` of each identity's images (at least one, and never its last) go to
    val/; ``unseen_identities`` identities, drawn at random, go to val/ whole (for
    open-set verification). Files are symlinked (``copy``: copied). Identities with a
    single image stay in train/ only. Images that do not decode are left out and listed
    in ``out/split_report.json`` (``strict``: a DataError); an identity left without
    images is left out too. Returns counts."""
    source, out = Path(source).resolve(), Path(out)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1); got {val_fraction}")
    for split in ("train", "val"):
        if (out / split).exists() and any((out / split).iterdir()):
            raise DataError(f"{out / split} exists and is not empty")
    tree = scan_identity_folder(source)
    readable, unreadable = check_images([path for path, _ in tree.samples], strict)
    kept = set(readable)
    all_names = sorted(tree.class_to_idx)
    by_identity: Dict[str, List[Path]] = {name: [] for name in all_names}
    for path, label in tree.samples:
        if path in kept:
            by_identity[all_names[label]].append(path)
    names = [name for name in all_names if by_identity[name]]
    if unseen_identities > len(names) - 2:
        raise DataError(
            f"--unseen-identities {unseen_identities}: {source} holds "
            f"{len(names)} identities and train/ needs at least 2"
        )
    rng = random.Random(seed)
    unseen = set(rng.sample(names, unseen_identities))
    counts: Dict[str, Any] = {
        "train_images": 0,
        "val_images": 0,
        "unseen_identities": len(unseen),
        "unreadable": len(unreadable),
    }
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
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / REPORT,
        {
            "source": str(source),
            "checked": len(tree.samples),
            **counts,
            "identities_left_out": sorted(set(all_names) - set(names)),
            "unreadable_files": [
                {"path": path.relative_to(source).as_posix(), "error": why}
                for path, why in unreadable
            ],
        },
    )
    return counts
