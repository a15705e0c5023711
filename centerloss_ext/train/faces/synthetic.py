"""A tiny generated identity-folder tree, for tests and for trying the faces pipeline
without a face data set:

    python -m centerloss_ext.train.synthetic OUT_DIR [--identities 8]

Each "identity" is a shape (ellipse, box, triangle, ring, cross, diamond) of its own size
and colour with a small mark at its own place. Every image draws its own background and
mark colours, varies the shape's colour (COLOUR_JITTER), moves, scales and re-lights the
shape and adds pixel noise. Raw pixels, and an untrained network's features, are
dominated by the random background, so the features that tell identities apart have to
be learnt (python_tests/train/faces/test_train_faces.py measures an untrained and a trained
network). val/ holds images of every training identity plus ``unseen`` identities
absent from train/.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

SHAPES = ("ellipse", "box", "triangle", "ring", "cross", "diamond")
COLOUR_JITTER = 15.0  # per-image spread of an identity's shape colour (grey levels)


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
    rng = np.random.default_rng(seed)
    root = Path(root)
    total = identities + unseen
    names = list(names) if names is not None else [f"id_{i:03d}" for i in range(total)]
    if len(names) != total:
        raise ValueError(f"need {total} names, got {len(names)}")
    for k, name in enumerate(names):
        identity = {
            "shape": SHAPES[k % len(SHAPES)],
            "colour": tuple(int(v) for v in rng.integers(30, 226, 3)),
            "scale": rng.uniform(0.5, 0.75),
            "mark": tuple(rng.uniform(0.15, 0.85, 2)),
        }
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
    return root


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
    a = p.parse_args(argv)
    root = make_synthetic_faces(
        Path(a.out),
        a.identities,
        a.train_per_identity,
        a.val_per_identity,
        a.unseen,
        a.image_size,
        a.seed,
    )
    print(f"wrote {root}/train and {root}/val")


if __name__ == "__main__":
    main()
