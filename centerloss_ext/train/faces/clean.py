"""`centerloss-faces clean`: find the images of ``DIR/train`` that are probably
mislabelled, or of nobody in the set, with a trained checkpoint, and write a cleaned copy.

Every image of ``DIR/train`` is embedded (L2-normalised) and measured against the
identities' centers: the angle to its own identity's center, the nearest other identity
and the angle to that one's center. The centers are robust means of each identity's
embeddings (``robust_centers``: start at the identity's densest embedding, then the mean
of the half nearest it, three times), not the trained centers: under label noise the
trained centers are pulled toward the wrong images (docs/cleaning.md measures both).

The rule (``flag``): an image is flagged when its angle to its own center is above the
threshold; the threshold is picked without the truth, by Otsu's method on the histogram
of all the angles (the cut that best separates two groups), unless ``--threshold-deg``
fixes it. The score (report.csv is sorted by it, worst first) is that angle.

Writes ``OUT/report.csv`` (one row per image of DIR/train), ``OUT/summary.json``,
``OUT/angles.png`` and ``OUT/train/<identity>/`` (the kept images) and ``OUT/val/`` (links,
or copies), so OUT is a ready ``--input-dir``. DIR is never changed. Images that do not
decode are left out of OUT and listed (``strict``: stop)."""

from __future__ import annotations

import csv
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.errors import DataError
from ..core.files import output_folder, write_json
from ..core.metrics import l2_normalize
from .data import load_face_folders
from .enroll import embed_images
from .evaluate import checkpoint_extraction
from .model import Runtime, load_face_model
from .split import check_images

REPORT_COLUMNS = (
    "path",
    "label",
    "angle_deg",
    "nearest_other",
    "nearest_other_angle_deg",
    "score",
    "flagged",
)


@dataclass(frozen=True)
class CleanOptions:
    """What `clean` takes: the checkpoint, DIR (train/ and val/), OUT; ``threshold_deg``
    fixes the rule's angle (None: Otsu's cut); ``centers``: robust (default) or trained;
    ``copy``: copy the kept images instead of linking them; ``strict``: an unreadable
    image stops the command."""

    checkpoint: str
    input_dir: str
    out: str
    threshold_deg: Optional[float] = None
    centers: str = "robust"
    copy: bool = False
    strict: bool = False


# ------------------------------------------------------------------ the measures


def robust_centers(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One unit-length center per identity from its (normalised) embeddings: start at the
    embedding with the highest mean similarity to its nearest fifth, then, three times,
    the normalised mean of the half of the identity's embeddings nearest the center. An
    identity without embeddings gets a zero row."""
    centers = torch.zeros(num_classes, features.shape[1])
    for c in range(num_classes):
        x = features[labels == c].float()
        if len(x) == 0:
            continue
        sims = x @ x.T
        k = max(1, len(x) // 5)
        density = sims.topk(k, dim=1).values.mean(dim=1)
        center = x[int(density.argmax())]
        keep = max(1, (len(x) + 1) // 2)
        for _ in range(3):
            nearest = (x @ center).topk(keep).indices
            center = l2_normalize(x[nearest].mean(dim=0, keepdim=True))[0]
        centers[c] = center
    return centers


def angles_to_centers(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each (normalised) embedding: the angle (degrees) to its own identity's center,
    the nearest other identity and the angle to its center."""
    cos = (features.float() @ l2_normalize(centers.float()).T).clamp(-1.0, 1.0)
    own = cos.gather(1, labels.view(-1, 1)).squeeze(1)
    others = cos.clone()
    others.scatter_(1, labels.view(-1, 1), -2.0)
    other_cos, nearest = others.max(dim=1)
    degrees = 180.0 / math.pi
    return (
        (torch.acos(own) * degrees).numpy(),
        nearest.numpy(),
        (torch.acos(other_cos.clamp(-1.0, 1.0)) * degrees).numpy(),
    )


def otsu_threshold(values: np.ndarray, bins: int = 90) -> float:
    """The cut of ``values`` that maximises the between-group variance (Otsu's method on a
    histogram): picked from the values alone, without the truth."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or values.max() <= values.min():
        return float(values.max(initial=0.0))
    counts, edges = np.histogram(values, bins=bins)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    s0 = np.cumsum(counts * mids)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = (w0 * w1 * (m0 - m1) ** 2)[:-1]
    # an empty gap between the groups is a run of equal best cuts: take its middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def flag(angles: np.ndarray, threshold_deg: Optional[float] = None) -> Tuple[np.ndarray, float]:
    """The rule: flagged where the angle to the own center is above the threshold
    (``threshold_deg``, or Otsu's cut of ``angles``); returns (flags, threshold)."""
    threshold = otsu_threshold(angles) if threshold_deg is None else float(threshold_deg)
    return np.asarray(angles) > threshold, threshold


def precision_recall(flagged: Sequence[bool], truth: Sequence[bool]) -> Dict[str, float]:
    """Precision, recall and F1 of ``flagged`` against ``truth`` (noise.json's files)."""
    f, t = np.asarray(flagged, bool), np.asarray(truth, bool)
    hit = int((f & t).sum())
    precision = hit / max(int(f.sum()), 1)
    recall = hit / max(int(t.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": int(f.sum())}


# ------------------------------------------------------------------ the command


def clean(opts: CleanOptions, runtime: Runtime = Runtime()) -> Dict[str, Any]:
    """The `clean` job; returns summary.json's content."""
    source, out = Path(opts.input_dir), Path(opts.out)
    if opts.centers not in ("robust", "trained"):
        raise DataError(f"centers: robust or trained, not {opts.centers}")
    if out.resolve().is_relative_to(source.resolve()):
        raise DataError(f"--out {out} is inside --input-dir {source}: give a folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} exists and is not an empty folder")
    device, autocast = runtime.resolve()
    model, center_loss, ckpt = load_face_model(Path(opts.checkpoint), device)
    names: List[str] = list(ckpt["class_names"])
    folders = load_face_folders(source, class_names=names)
    train_ok, train_bad = check_images([p for p, _ in folders.train.samples], opts.strict)
    val_ok, val_bad = check_images([p for p, _ in folders.val.samples], opts.strict)
    label_of = dict(folders.train.samples)
    labels = torch.tensor([label_of[p] for p in train_ok], dtype=torch.int64)
    feats = embed_images(model, train_ok, checkpoint_extraction(ckpt, device, autocast, runtime))
    centers = (
        robust_centers(feats, labels, len(names))
        if opts.centers == "robust"
        else center_loss.centers.detach().float().cpu()
    )
    own, nearest, other = angles_to_centers(feats, labels, centers)
    flagged, threshold = flag(own, opts.threshold_deg)
    rows = [
        {
            "path": p.relative_to(source).as_posix(),
            "label": names[int(y)],
            "angle_deg": round(float(a), 3),
            "nearest_other": names[int(n)],
            "nearest_other_angle_deg": round(float(o), 3),
            "score": round(float(a), 3),
            "flagged": int(f),
        }
        for p, y, a, n, o, f in zip(train_ok, labels.tolist(), own, nearest, other, flagged)
    ]
    rows.sort(key=lambda r: (-r["score"], r["path"]))
    kept = [p for p, f in zip(train_ok, flagged) if not f]
    with output_folder(out):
        _write_report(out / "report.csv", rows)
        _angle_histogram(out / "angles.png", own, threshold)
        for path in kept:
            _place(path, out / path.relative_to(source), opts.copy)
        for path in val_ok:
            _place(path, out / path.relative_to(source), opts.copy)
        summary = _summary(opts, rows, threshold, [*train_bad, *val_bad], source)
        summary["val_images"] = len(val_ok)
        write_json(out / "summary.json", summary)
    print(
        f"wrote {out}/: {summary['flagged']} of {summary['images']} train/ images flagged "
        f"(angle to own center > {threshold:.1f}°, {opts.centers} centers), "
        f"{summary['kept']} kept in train/, {len(val_ok)} in val/; report.csv, summary.json, "
        "angles.png"
        + (f"; {len(summary['unreadable'])} unreadable left out" if summary["unreadable"] else "")
    )
    if summary["identities_under_2"]:
        few = summary["identities_under_2"]
        print(
            f"{len(few)} identities keep fewer than 2 images: {', '.join(few[:5])}"
            f"{', ...' if len(few) > 5 else ''}"
        )
    return summary


def _summary(
    opts: CleanOptions,
    rows: List[Dict[str, Any]],
    threshold: float,
    unreadable: List[Tuple[Path, str]],
    source: Path,
) -> Dict[str, Any]:
    per_identity: Dict[str, Dict[str, int]] = {}
    for r in rows:
        entry = per_identity.setdefault(r["label"], {"images": 0, "flagged": 0, "kept": 0})
        entry["images"] += 1
        entry["flagged"] += r["flagged"]
        entry["kept"] += 1 - r["flagged"]
    flagged = sum(r["flagged"] for r in rows)
    return {
        "checkpoint": str(opts.checkpoint),
        "input_dir": str(source),
        "rule": "angle to own center > threshold",
        "threshold_deg": round(threshold, 3),
        "threshold_from": "--threshold-deg" if opts.threshold_deg is not None else "otsu",
        "centers": opts.centers,
        "images": len(rows),
        "flagged": flagged,
        "kept": len(rows) - flagged,
        "identities_under_2": sorted(n for n, e in per_identity.items() if e["kept"] < 2),
        "unreadable": [
            {"path": p.relative_to(source).as_posix(), "error": why} for p, why in unreadable
        ],
        "per_identity": dict(sorted(per_identity.items())),
    }


def _write_report(path: Path, rows: List[Dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _place(path: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(path, target)
    else:
        target.symlink_to(path.resolve())


def _angle_histogram(path: Path, angles: np.ndarray, threshold: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=90)
    ax = fig.add_subplot()
    ax.hist(
        angles, bins=60, range=(0, max(90.0, float(np.max(angles, initial=0)))), color="#1f77b4"
    )
    ax.axvline(threshold, color="#d62728", lw=1.5, label=f"threshold {threshold:.1f}°")
    ax.set_xlabel("angle to its identity's center (degrees)")
    ax.set_ylabel("train/ images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
