"""`centerloss-faces verify`, and the verification sets `train --verify` scores at each
evaluation: the pairs of a ``pairs.txt`` or ``.bin`` (faces.pairs) scored by the cosine
similarity of L2-normalised embeddings (with ``flip``, the embedding of the horizontally
flipped image is added first), and the 10-fold protocol (core.metrics.kfold_verification:
each fold's threshold chosen on the other folds), with ROC AUC and TAR at FAR over all
pairs.

scores.csv holds everything the protocol uses (fold, same, score), so its numbers can be
recomputed from it alone."""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..core import plots
from ..core.files import atomic_write, write_json
from ..core.metrics import extract_features, kfold_verification, l2_normalize, verification_metrics
from .data import face_transforms, make_loader
from .evaluate import Extraction, checkpoint_extraction
from .model import FaceNet, Runtime, load_face_model
from .pairs import PairImages, PairSet, read_pair_set

FARS = (1e-3, 1e-2)


@torch.no_grad()
def pair_scores(model: FaceNet, pairs: PairSet, how: Extraction, flip: bool = False) -> np.ndarray:
    """The cosine similarity of each pair's L2-normalised embeddings (float32 features, the
    same ones `embed` writes), in pair order."""
    model.eval()
    loader = make_loader(
        PairImages(pairs, face_transforms(how.image_size, train=False)),
        how.batch_size,
        False,
        how.workers,
        how.device,
    )

    def embed(x: torch.Tensor) -> torch.Tensor:
        return model.embed(x) + model.embed(x.flip(3)) if flip else model.embed(x)

    with contextlib.closing(iter(loader)) as batches:  # the workers stop here, always
        feats, _, _ = extract_features(
            embed, batches, how.device, autocast_dtype=how.autocast, channels_last=True
        )
    f = l2_normalize(feats)
    return (f[0::2] * f[1::2]).sum(1).numpy()


def protocol_metrics(
    scores: np.ndarray, pairs: PairSet
) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """The 10-fold accuracy (mean, population std, each fold's accuracy and threshold), ROC
    AUC and TAR at each FAR of FARS over all pairs; and the ROC curve."""
    result: Dict[str, Any] = kfold_verification(scores, pairs.same, pairs.fold.tolist())
    ver = verification_metrics(torch.from_numpy(scores), torch.from_numpy(pairs.same), FARS)
    result["roc_auc"] = ver["roc_auc"]
    result["tar_at_far"] = {f"{far:g}": ver[f"tar@far={far:g}"] for far in FARS}
    result["pairs"] = len(pairs)
    result["pairs_same"] = ver["pairs_same"]
    result["pairs_different"] = ver["pairs_different"]
    return result, ver["roc"]


def write_scores(path: Path, scores: np.ndarray, pairs: PairSet) -> None:
    """scores.csv: fold, same (1/0), score (shortest text that reads back to the same
    float), left, right; one row per pair in file order."""
    atomic_write(path, lambda tmp: _write_scores(tmp, scores, pairs))


def _write_scores(path: Path, scores: np.ndarray, pairs: PairSet) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["fold", "same", "score", "left", "right"])
        for k in range(len(pairs)):
            out.writerow(
                [
                    int(pairs.fold[k]),
                    int(pairs.same[k]),
                    repr(float(scores[k])),
                    pairs.left[k],
                    pairs.right[k],
                ]
            )


@dataclass(frozen=True)
class VerifyInputs:
    """What `verify` scores: a checkpoint, a set (``.bin`` or ``pairs.txt``), the images
    folder of a pairs.txt, and whether flipped images join the embedding."""

    checkpoint: str
    pairs: str
    images: Optional[str] = None
    flip: bool = False


def verify_checkpoint(inputs: VerifyInputs, out: Path, runtime: Runtime = Runtime()) -> Dict:
    """The `verify` job: scores ``inputs`` and writes scores.csv, metrics.json and roc.png
    to ``out``; returns metrics.json's content."""
    pairs = read_pair_set(Path(inputs.pairs), Path(inputs.images) if inputs.images else None)
    device, autocast = runtime.resolve()
    model, _, ckpt = load_face_model(Path(inputs.checkpoint), device)
    how = checkpoint_extraction(ckpt, device, autocast, runtime)
    scores = pair_scores(model, pairs, how, inputs.flip)
    metrics, roc = protocol_metrics(scores, pairs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_scores(out / "scores.csv", scores, pairs)
    plots.roc_plot(
        out / "roc.png",
        roc["fpr"],
        roc["tpr"],
        f"{Path(inputs.pairs).name}: accuracy {metrics['accuracy']:.4f} "
        f"± {metrics['accuracy_std']:.4f}, AUC {metrics['roc_auc']:.4f}",
    )
    result = {
        "checkpoint": inputs.checkpoint,
        "epoch": ckpt["epoch"],
        "set": inputs.pairs,
        "images": inputs.images,
        "flip": inputs.flip,
        **metrics,
    }
    write_json(out / "metrics.json", result)
    tar = metrics["tar_at_far"]["0.001"]
    print(
        f"{Path(inputs.pairs).name}: {len(pairs)} pairs, accuracy {metrics['accuracy']:.4f} ± "
        f"{metrics['accuracy_std']:.4f}, ROC AUC {metrics['roc_auc']:.4f}, TAR@FAR=1e-3 "
        + ("n/a" if tar is None else f"{tar:.4f}")
    )
    print(f"wrote {out}/scores.csv, metrics.json, roc.png")
    return result


def set_metrics(name: str, model: FaceNet, pairs: PairSet, how: Extraction) -> Dict[str, Any]:
    """A training run's row for one --verify set: ``verify_<name>_accuracy``,
    ``_accuracy_std``, ``_roc_auc`` and ``_tar@far=<FAR>``."""
    metrics, _ = protocol_metrics(pair_scores(model, pairs, how), pairs)
    row = {
        f"verify_{name}_accuracy": metrics["accuracy"],
        f"verify_{name}_accuracy_std": metrics["accuracy_std"],
        f"verify_{name}_roc_auc": metrics["roc_auc"],
    }
    row.update({f"verify_{name}_tar@far={k}": v for k, v in metrics["tar_at_far"].items()})
    return row
