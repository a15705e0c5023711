"""A tiny generated identity-folder tree, for tests and for trying the faces pipeline
without a face data set:

    python -m centerloss_ext.train.synthetic OUT_DIR [--identities 8]
        [--label-noise RATE] [--outliers RATE]

Each "identity" is a shape (ellipse, box, triangle, ring, cross, diamond) of its own size
and colour with a small mark at its own place. Every image draws its own background and
mark colours, varies the shape's colour (COLOUR_JITTER), moves, scales and re-lights the
shape and adds pixel noise. Raw pixels, and an untrained network's features, are
dominated by the random background, so the features that tell identities apart have to
be learnt (python_tests/train/faces/test_train_faces.py measures an untrained and a trained
network). val/ holds images of every training identity plus ``unseen`` identities
absent from train/.

``--label-noise RATE`` files that share of each identity's train/ images under it while
drawing them from another set identity; ``--outliers RATE`` files that share as images of
identities that are nowhere else in the set (distractors). Which files, and what they
truly show, is written to ``OUT_DIR/noise.json`` (val/ stays clean), the truth that
``centerloss-faces clean`` is measured against. The clean tree is the same with and
without noise: only the chosen train/ files are redrawn.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

SHAPES = ("ellipse", "box", "triangle", "ring", "cross", "diamond")
COLOUR_JITTER = 15.0  # per-image spread of an identity's shape colour (grey levels)
NOISE_FILE = "noise.json"


@dataclass(frozen=True)
class Noise:
    """What ``make_noisy_faces`` does to train/: ``label_noise`` and ``outliers`` are the
    shares of each identity's train/ images (rounded per identity) drawn from another set
    identity / from a distractor identity that is nowhere else in the set; ``seed`` picks
    the files and draws the new images."""

    label_noise: float = 0.0
    outliers: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.label_noise, self.outliers) < 0 or self.label_noise + self.outliers >= 1:
            raise ValueError(
                f"label noise {self.label_noise} and outliers {self.outliers}: each at "
                "least 0, together below 1 (an identity keeps some of its own images)"
            )


def _contrasting(rng: np.random.Generator, other: tuple) -> tuple:
    """A random colour that stands out from ``other`` (40 grey levels brighter or darker,
    or 120 apart in one channel), so shapes and marks stay visible."""
    while True:
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if (
            abs(sum(colour) - sum(other)) / 3 >= 40
            or max(abs(a - b) for a, b in zip(colour, other)) >= 120
        ):
            return colour


def _draw(rng: np.random.Generator, identity: dict, size: int):
    from PIL import Image, ImageDraw

    jitter = rng.normal(0, COLOUR_JITTER, 3)
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(identity["colour"], jitter))
    background = _contrasting(rng, colour)
    mark_colour = _contrasting(rng, colour)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    scale = identity["scale"] * rng.uniform(0.85, 1.15)
    cx = size / 2 + rng.uniform(-0.08, 0.08) * size
    cy = size / 2 + rng.uniform(-0.08, 0.08) * size
    r = scale * size / 2
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = identity["shape"]
    if shape == "ellipse":
        draw.ellipse((cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r), fill=colour)
    elif shape == "box":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, size // 10))
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    # a second, smaller mark: a per-identity "feature" at a per-identity place
    mx, my = identity["mark"]
    m = size / 10
    draw.ellipse((mx * size - m, my * size - m, mx * size + m, my * size + m), fill=mark_colour)
    pixels = np.asarray(image, dtype=np.float32)
    lit = pixels * rng.uniform(0.8, 1.2) + rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))


def _new_identity(rng: np.random.Generator, shape: str) -> dict:
    return {
        "shape": shape,
        "colour": tuple(int(v) for v in rng.integers(30, 226, 3)),
        "scale": rng.uniform(0.5, 0.75),
        "mark": tuple(rng.uniform(0.15, 0.85, 2)),
    }


def make_synthetic_faces(
    root: Path,
    identities: int = 6,
    train_per_identity: int = 12,
    val_per_identity: int = 4,
    unseen: int = 1,
    image_size: int = 32,
    seed: int = 0,
    names: Optional[Sequence[str]] = None,
) -> Path:
    """Writes ``root/train/<id>/*.png`` and ``root/val/<id>/*.png``; returns ``root``."""
    _write_tree(
        root, identities, train_per_identity, val_per_identity, unseen, image_size, seed, names
    )
    return Path(root)


def _write_tree(
    root: Path,
    identities: int,
    train_per_identity: int,
    val_per_identity: int,
    unseen: int,
    image_size: int,
    seed: int,
    names: Optional[Sequence[str]],
) -> List[dict]:
    """make_synthetic_faces' tree; returns every identity's drawing recipe (with its name)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    total = identities + unseen
    names = list(names) if names is not None else [f"id_{i:03d}" for i in range(total)]
    if len(names) != total:
        raise ValueError(f"need {total} names, got {len(names)}")
    recipes = []
    for k, name in enumerate(names):
        identity = _new_identity(rng, SHAPES[k % len(SHAPES)])
        recipes.append({**identity, "name": name})
        splits = (
            [("val", val_per_identity)]
            if k >= identities
            else [("train", train_per_identity), ("val", val_per_identity)]
        )
        for split, count in splits:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _draw(rng, identity, image_size).save(folder / f"{name}_{i:03d}.png")
    return recipes


def make_noisy_faces(root: Path, noise: Noise, **tree: Any) -> Dict[str, Any]:
    """make_synthetic_faces(root, **tree), then ``noise`` applied to train/: the chosen
    files are redrawn (same names) from another set identity or from a distractor.
    Writes and returns ``root/noise.json``: the rates, counts and one entry per changed
    file: ``path`` (relative to root), ``filed_as``, ``kind`` (label_noise / outlier) and
    ``truth`` (the identity it shows; distractors are named ``outlier_NNN``)."""
    root = Path(root)
    size = tree.get("image_size", 32)
    recipes = _write_tree(
        root,
        tree.get("identities", 6),
        tree.get("train_per_identity", 12),
        tree.get("val_per_identity", 4),
        tree.get("unseen", 1),
        size,
        tree.get("seed", 0),
        tree.get("names"),
    )
    rng = np.random.default_rng([noise.seed, 24])
    in_train = [r for r in recipes if (root / "train" / r["name"]).is_dir()]
    # as many distractors as set identities, each of its own look
    distractors = [
        {**_new_identity(rng, SHAPES[int(rng.integers(len(SHAPES)))]), "name": f"outlier_{i:03d}"}
        for i in range(max(1, len(in_train)))
    ]
    files: List[Dict[str, str]] = []
    total = 0
    for k, recipe in enumerate(in_train):
        folder = root / "train" / recipe["name"]
        paths = sorted(folder.iterdir())
        total += len(paths)
        n_label = int(round(noise.label_noise * len(paths))) if len(in_train) > 1 else 0
        n_out = min(int(round(noise.outliers * len(paths))), len(paths) - n_label - 1)
        order = rng.permutation(len(paths))
        for j, index in enumerate(order[: n_label + n_out]):
            if j < n_label:
                other = int(rng.integers(len(in_train) - 1))
                source, kind = in_train[other + (other >= k)], "label_noise"
            else:
                source, kind = distractors[int(rng.integers(len(distractors)))], "outlier"
            path = paths[int(index)]
            _draw(rng, source, size).save(path)
            files.append(
                {
                    "path": path.relative_to(root).as_posix(),
                    "filed_as": recipe["name"],
                    "kind": kind,
                    "truth": source["name"],
                }
            )
    files.sort(key=lambda f: f["path"])
    record = {
        "label_noise": noise.label_noise,
        "outliers": noise.outliers,
        "seed": noise.seed,
        "train_images": total,
        "label_noise_images": sum(f["kind"] == "label_noise" for f in files),
        "outlier_images": sum(f["kind"] == "outlier" for f in files),
        "files": files,
    }
    (root / NOISE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m centerloss_ext.train.synthetic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out")
    p.add_argument("--identities", type=int, default=8)
    p.add_argument("--train-per-identity", type=int, default=40)
    p.add_argument("--val-per-identity", type=int, default=10)
    p.add_argument("--unseen", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        metavar="RATE",
        help="share of each identity's train/ images drawn from another identity",
    )
    p.add_argument(
        "--outliers",
        type=float,
        default=0.0,
        metavar="RATE",
        help="share of each identity's train/ images drawn from identities not in the set",
    )
    a = p.parse_args(argv)
    tree = {
        "identities": a.identities,
        "train_per_identity": a.train_per_identity,
        "val_per_identity": a.val_per_identity,
        "unseen": a.unseen,
        "image_size": a.image_size,
        "seed": a.seed,
    }
    if not (a.label_noise or a.outliers):
        make_synthetic_faces(Path(a.out), **tree)
        print(f"wrote {a.out}/train and {a.out}/val")
        return
    try:
        noise = Noise(a.label_noise, a.outliers, a.seed)
    except ValueError as e:
        p.error(str(e))
    record = make_noisy_faces(Path(a.out), noise, **tree)
    print(
        f"wrote {a.out}/train and {a.out}/val; {a.out}/{NOISE_FILE}: "
        f"{record['label_noise_images']} mislabelled and {record['outlier_images']} outlier "
        f"images of {record['train_images']} in train/"
    )


if __name__ == "__main__":
    main()
