#!/usr/bin/env python3
"""Does center loss still help beside a margin head? Trains softmax, CosFace and ArcFace
heads, each without and with center loss, on generated identities, and scores every model
on a held-out verification set (identities never trained on) given both as an LFW-style
pairs.txt and as an insightface .bin of the same pairs (docs/faces.md, issue 23).

    python scripts/heads_table.py --out runs/heads [--identities 300 --unseen 100 --epochs 8]

Writes OUT/data (the generated tree), OUT/heldout (pairs.txt, lfw/, heldout.bin),
OUT/<config>/ (each training run and its verify outputs) and prints a markdown table:
10-fold accuracy ± std and TAR@FAR=1e-3 per configuration, from the .bin and the
pairs.txt (which must agree), plus the wall time.
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [  # name, head, center-loss weight
    ("softmax", "softmax", 0.0),
    ("softmax + center", "softmax", None),
    ("CosFace", "cosface", 0.0),
    ("CosFace + center", "cosface", None),
    ("ArcFace", "arcface", 0.0),
    ("ArcFace + center", "arcface", None),
]


def heldout_sets(data: Path, out: Path, per_fold: int, seed: int) -> tuple[Path, Path, Path]:
    """pairs.txt (10 folds of ``per_fold`` matched and ``per_fold`` mismatched pairs),
    the LFW-style image folder it names, and a .bin of the same pairs, from the val/
    images of the identities absent from train/."""
    seen = {p.name for p in (data / "train").iterdir()}
    names = sorted(p.name for p in (data / "val").iterdir() if p.name not in seen)
    lfw = out / "lfw"
    counts = {}
    for name in names:
        (lfw / name).mkdir(parents=True, exist_ok=True)
        images = sorted((data / "val" / name).iterdir())
        for i, src in enumerate(images, 1):
            shutil.copy(src, lfw / name / f"{name}_{i:04d}{src.suffix}")
        counts[name] = len(images)
    rng = random.Random(seed)
    lines, bins, issame = [f"10\t{per_fold}"], [], []

    def image(name: str, i: int) -> bytes:
        return next((lfw / name).glob(f"{name}_{i:04d}.*")).read_bytes()

    for _ in range(10):
        for _ in range(per_fold):
            a = rng.choice(names)
            i, j = rng.sample(range(1, counts[a] + 1), 2)
            lines.append(f"{a}\t{i}\t{j}")
            bins += [image(a, i), image(a, j)]
            issame.append(True)
        for _ in range(per_fold):
            a, b = rng.sample(names, 2)
            i, j = rng.randint(1, counts[a]), rng.randint(1, counts[b])
            lines.append(f"{a}\t{i}\t{b}\t{j}")
            bins += [image(a, i), image(b, j)]
            issame.append(False)
    (out / "pairs.txt").write_text("\n".join(lines) + "\n")
    with open(out / "heldout.bin", "wb") as f:
        pickle.dump((bins, issame), f, protocol=2)
    return out / "pairs.txt", lfw, out / "heldout.bin"


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"heads_table: failed: {' '.join(cmd)}\n{done.stderr.strip()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/heads"))
    p.add_argument("--identities", type=int, default=300, help="trained identities")
    p.add_argument("--unseen", type=int, default=100, help="held-out identities")
    p.add_argument("--train-per-identity", type=int, default=10)
    p.add_argument("--val-per-identity", type=int, default=6)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--center-loss-weight", type=float, default=0.005, help="λ where on")
    p.add_argument(
        "--pairs-per-fold", type=int, default=100, help="matched (= mismatched) pairs per fold"
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    py, start = sys.executable, time.time()
    data, held = a.out / "data", a.out / "heldout"
    if a.out.exists():
        shutil.rmtree(a.out)
    held.mkdir(parents=True)
    run([py, "-m", "centerloss_ext.train.synthetic", str(data), "--identities",
         str(a.identities), "--unseen", str(a.unseen), "--train-per-identity",
         str(a.train_per_identity), "--val-per-identity", str(a.val_per_identity),
         "--image-size", "32", "--seed", str(a.seed)])  # fmt: skip
    pairs, lfw, bin_file = heldout_sets(data, held, a.pairs_per_fold, a.seed)
    rows = []
    for name, head, weight in CONFIGS:
        lam = a.center_loss_weight if weight is None else weight
        folder = a.out / name.replace(" + ", "_").replace(" ", "_").lower()
        t0 = time.time()
        run([py, "-m", "centerloss_ext.train.faces", "train", "--input-dir", str(data),
             "--out", str(folder), "--arch", "compact", "--image-size", "32", "--no-augment",
             "--epochs", str(a.epochs), "--eval-every", str(a.epochs), "--head", head,
             "--center-loss-weight", str(lam), "--seed", str(a.seed), "--no-progress",
             "--device", "cpu"])  # fmt: skip
        train_s = time.time() - t0
        result = {}
        for kind, extra in (("bin", [str(bin_file)]), ("txt", [str(pairs), "--images", str(lfw)])):
            run([py, "-m", "centerloss_ext.train.faces", "verify", "--checkpoint",
                 str(folder / "checkpoint.pt"), "--pairs", *extra, "--out",
                 str(folder / f"verify_{kind}"), "--device", "cpu", "--no-progress"])  # fmt: skip
            result[kind] = json.loads((folder / f"verify_{kind}" / "metrics.json").read_text())
        b, t = result["bin"], result["txt"]
        tar = b["tar_at_far"]["0.001"]  # None: too few impostor pairs to resolve 1e-3
        rows.append(
            f"| {name} | {lam:g} | {b['accuracy']:.4f} ± {b['accuracy_std']:.4f} | "
            f"{'n/a' if tar is None else f'{tar:.3f}'} | {b['roc_auc']:.4f} | "
            f"{'yes' if b['accuracy'] == t['accuracy'] else 'NO'} | {train_s:.0f} s |"
        )
    print(
        f"{a.identities} trained / {a.unseen} held-out generated identities, "
        f"{a.train_per_identity} train images each, compact 32 px, {a.epochs} epochs, "
        f"{20 * a.pairs_per_fold} held-out pairs in 10 folds; {time.time() - start:.0f} s in all\n"
    )
    print("| configuration | λ | accuracy ± std | TAR@FAR=1e-3 | ROC AUC | .bin = txt | train |")
    print("|---|---:|---:|---:|---:|:---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
