"""`centerloss-faces eval`, and the evaluation on ``val/`` that training runs every
``--eval-every`` epochs: k-NN identification (val/ images against a gallery of train/
images), softmax and nearest-center accuracy, and verification on same/different-identity
pairs of val/ images (ROC AUC, TAR at FAR, best-threshold accuracy); where val/ holds two
or more identities absent from train/, verification and identification on those alone
(``val_unseen_*``: the open-set measures)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ... import CenterLoss
from ..core import plots
from ..core.files import write_json
from ..core.metrics import (
    extract_features,
    knn_accuracy,
    l2_normalize,
    nearest_center_accuracy,
    pair_similarities,
    verification_metrics,
    verification_pairs,
)
from .data import FaceFolders, ImageListDataset, face_transforms, load_face_folders, make_loader
from .model import FaceNet, Runtime, load_face_model

KNN_KS = (1, 5)


@dataclass(frozen=True)
class EvalOptions:
    """gallery_per_class: the k-NN gallery takes up to this many train/ images per
    identity (0: all); max_pairs: verification uses every val/ pair up to this many, else
    a sample drawn with ``seed``."""

    gallery_per_class: int = 10
    max_pairs: int = 2_000_000
    seed: int = 0


@dataclass(frozen=True)
class Extraction:
    """How a faces job turns images into features: the network's image size, the device,
    the autocast dtype (None: full precision), images per batch and data-loading
    processes."""

    image_size: int
    device: torch.device
    autocast: Optional[torch.dtype]
    batch_size: int
    workers: int


def checkpoint_extraction(
    ckpt: Dict[str, Any], device: torch.device, autocast: Optional[torch.dtype], runtime: Runtime
) -> Extraction:
    """How the jobs that load a `train` checkpoint (eval, embed, identify) embed images:
    at its model's image size, on the resolved device and autocast of ``runtime``."""
    return Extraction(
        ckpt["model_config"]["image_size"], device, autocast, runtime.batch_size, runtime.workers
    )


def features(
    model: FaceNet, samples: Sequence[Tuple[Path, int]], how: Extraction, with_logits: bool = False
):
    """Features (float32, CPU), labels and, ``with_logits``, the predicted classes of
    ``samples`` (path, label), in order."""
    loader = make_loader(
        ImageListDataset(samples, face_transforms(how.image_size, train=False)),
        how.batch_size,
        False,
        how.workers,
        how.device,
    )
    with contextlib.closing(iter(loader)) as batches:  # the workers stop here, always
        return extract_features(
            model.embed,
            batches,
            how.device,
            logits_fn=model.classifier if with_logits else None,
            autocast_dtype=how.autocast,
            channels_last=True,
        )


def gallery_samples(folders: FaceFolders, per_class: int) -> List[Tuple[Path, int]]:
    """Up to ``per_class`` train/ images per identity (all when 0), in sorted order."""
    if per_class <= 0:
        return folders.train.samples
    taken: Dict[int, int] = {}
    out = []
    for path, label in folders.train.samples:
        if taken.get(label, 0) < per_class:
            out.append((path, label))
            taken[label] = taken.get(label, 0) + 1
    return out


def evaluate(
    model: FaceNet,
    center_loss: CenterLoss,
    folders: FaceFolders,
    how: Extraction,
    options: EvalOptions = EvalOptions(),
) -> Tuple[Dict[str, Any], Optional[Dict]]:
    """Identification and verification on val/; returns the metrics and the ROC curve."""
    model.eval()
    center_loss.eval()  # evaluation must not move the centers
    num_classes = folders.num_classes
    g_feats, g_labels, _ = features(model, gallery_samples(folders, options.gallery_per_class), how)
    v_feats, v_labels, v_pred = features(model, folders.val.samples, how, with_logits=True)
    seen = v_labels < num_classes
    metrics: Dict[str, Any] = {
        "val_images": len(v_labels),
        "val_images_seen": int(seen.sum()),
        "val_identities": len(folders.val.class_to_idx),
        "val_unseen_identities": len(folders.val.unseen),
        "gallery_images": len(g_labels),
    }
    if seen.any():
        knn = knn_accuracy(
            l2_normalize(g_feats), g_labels, l2_normalize(v_feats[seen]), v_labels[seen], KNN_KS
        )
        metrics.update({f"val_knn{k}_acc": v for k, v in knn.items()})
        metrics["val_softmax_acc"] = float((v_pred[seen] == v_labels[seen]).float().mean())
        metrics["val_nearest_center_acc"] = nearest_center_accuracy(
            v_feats[seen], v_labels[seen], center_loss.centers.cpu()
        )
    roc = None
    if len(folders.val.class_to_idx) >= 2:
        ver, roc = _verification(v_feats, v_labels, options, "val_")
        metrics.update(ver)
    if len(v_labels[~seen].unique()) >= 2:  # the open-set question: identities never trained on
        metrics.update(unseen_metrics(v_feats[~seen], v_labels[~seen], options))
    return metrics, roc


def _verification(
    feats: torch.Tensor, labels: torch.Tensor, options: EvalOptions, prefix: str
) -> Tuple[Dict[str, Any], Optional[Dict]]:
    """Verification on same/different-identity pairs of ``feats``: the metrics, named
    ``prefix`` + key, and the ROC curve (None when skipped)."""
    i, j = verification_pairs(labels, options.max_pairs, options.seed)
    try:
        ver = verification_metrics(pair_similarities(feats, i, j), labels[i] == labels[j])
    except ValueError as e:  # e.g. one image per identity: no same pairs
        return {f"{prefix}verification_skipped": str(e)}, None
    roc = ver.pop("roc")
    return {f"{prefix}{k}": v for k, v in ver.items()}, roc


def unseen_metrics(
    feats: torch.Tensor, labels: torch.Tensor, options: EvalOptions = EvalOptions()
) -> Dict[str, Any]:
    """Open-set measures on the val/ images of identities absent from train/ (at least
    two): verification on pairs of these images only, and identification with each
    identity's first image as its gallery entry and the others as probes (1-NN)."""
    metrics, _ = _verification(feats, labels, options, "val_unseen_")
    first = torch.zeros(len(labels), dtype=torch.bool)
    first[np.unique(labels.numpy(), return_index=True)[1]] = True
    metrics.update(
        {"val_unseen_gallery": int(first.sum()), "val_unseen_probes": int((~first).sum())}
    )
    if (~first).any():
        metrics["val_unseen_1nn_acc"] = knn_accuracy(
            l2_normalize(feats[first]),
            labels[first],
            l2_normalize(feats[~first]),
            labels[~first],
            (1,),
        )[1]
    return metrics


def summary(metrics: Dict[str, Any]) -> str:
    """The evaluation in one line."""
    keys = [
        ("val_knn1_acc", "1-NN acc"),
        ("val_softmax_acc", "softmax acc"),
        ("val_nearest_center_acc", "nearest-center acc"),
        ("val_roc_auc", "ROC AUC"),
        ("val_tar@far=0.001", "TAR@FAR=1e-3"),
        ("val_best_accuracy", "verif. acc"),
        ("val_unseen_tar@far=0.001", "unseen TAR@FAR=1e-3"),
        ("val_unseen_1nn_acc", "unseen 1-NN acc"),
    ]
    return ", ".join(f"{name} {metrics[k]:.4f}" for k, name in keys if metrics.get(k) is not None)


def eval_checkpoint(
    checkpoint: Path,
    input_dir: Path,
    out: Optional[Path] = None,
    runtime: Runtime = Runtime(),
    options: EvalOptions = EvalOptions(),
) -> Dict[str, Any]:
    """The `eval` job: evaluates ``checkpoint`` on ``input_dir``/val (gallery:
    ``input_dir``/train), writes eval_metrics.json and eval_roc.png to ``out`` (default:
    the checkpoint's folder) and returns the metrics."""
    names = {"checkpoint": str(checkpoint), "input_dir": str(input_dir)}  # as given
    checkpoint, input_dir = Path(checkpoint), Path(input_dir)
    device, autocast = runtime.resolve()
    model, center_loss, ckpt = load_face_model(checkpoint, device)
    folders = load_face_folders(input_dir, class_names=ckpt["class_names"])
    metrics, roc = evaluate(
        model, center_loss, folders, checkpoint_extraction(ckpt, device, autocast, runtime), options
    )
    out = Path(out) if out else checkpoint.parent
    out.mkdir(parents=True, exist_ok=True)
    if roc is not None:
        plots.roc_plot(
            out / "eval_roc.png",
            roc["fpr"],
            roc["tpr"],
            f"{input_dir.name}/val verification: AUC {metrics['val_roc_auc']:.4f}",
        )
    result = {
        "checkpoint": names["checkpoint"],
        "epoch": ckpt["epoch"],
        "input_dir": names["input_dir"],
        "unseen_val_identities": folders.val.unseen,
        **metrics,
    }
    write_json(out / "eval_metrics.json", result)
    print(summary(metrics))
    print(f"wrote {out}/eval_metrics.json" + (", eval_roc.png" if roc is not None else ""))
    return result
