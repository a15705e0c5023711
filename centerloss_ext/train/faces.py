"""Face identification and verification with softmax + λ·center loss.

    centerloss-faces train    --input-dir DIR --out runs/faces     # DIR/train, DIR/val
    centerloss-faces eval     --checkpoint runs/faces/checkpoint.pt --input-dir DIR
    centerloss-faces embed    --checkpoint CKPT --images FOLDER --out gallery.npz
    centerloss-faces identify --checkpoint CKPT --gallery gallery.npz --query face.jpg
    centerloss-faces split    --source ALL --out DIR     # ALL/<identity>/ -> DIR/{train,val}

DIR/train and DIR/val hold one folder per identity (torchvision's ImageFolder layout).
val/ is labelled with train/'s identity numbering; identities only in val/ are used for
verification and reported. Evaluation on val/: k-NN identification (val images against
train images), and verification on same/different-identity pairs of val/ images (cosine
similarity of L2-normalised features: ROC AUC, TAR at FAR=1e-3, best-threshold
accuracy), with a ROC plot.

Run with `python -m centerloss_ext.train.faces` too. `--help` after a command lists its
options.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .. import CenterLoss
from . import ddp, plots
from .common import (DataError, HelpFormatter, TrainingError, check_finite, check_same_config, environment,
                     load_checkpoint, resolve_device, run_cli, save_checkpoint,
                     seed_everything, write_json)
from .data import (FaceFolders, ImageListDataset, face_transforms, is_image_file,
                   list_images, load_face_folders, split_identity_folder)
from .evaluate import (extract_features, knn_accuracy, l2_normalize, nearest_center_accuracy,
                       pair_similarities, verification_metrics, verification_pairs)
from .models import FACE_ARCHS, FaceNet

PROG = "centerloss-faces"
CHECKPOINT_KIND = "centerloss_ext.faces"
MODEL_KEYS = ("arch", "feature_dim", "image_size", "dropout")
# options that define a run: resuming with other values would mix two runs
RUN_KEYS = MODEL_KEYS + ("optimizer", "lr", "momentum", "weight_decay", "scheduler",
                         "milestones", "warmup_epochs", "batch_size", "center_loss_weight",
                         "alpha", "clip_grad_norm", "seed", "augment")
KNN_KS = (1, 5)


# ------------------------------------------------------------------ options

def _common_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="data-loading processes")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="mixed precision: auto = bf16 (fp16 on GPUs without bf16) on CUDA, "
                        "off on the CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gallery-per-class", type=int, default=10, metavar="N",
                   help="k-NN gallery: up to N train/ images per identity (0: all)")
    p.add_argument("--max-pairs", type=int, default=2_000_000,
                   help="verification: every val/ pair up to this many, else a sample")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    t = command("train", "train on DIR/train, evaluate on DIR/val")
    t.add_argument("--input-dir", required=True, help="folder with train/ and val/")
    t.add_argument("--out", default="runs/faces", help="output folder")
    t.add_argument("--num-classes", type=int, default=None,
                   help="checked against the identities in train/ (inferred when absent)")
    t.add_argument("--arch", choices=FACE_ARCHS, default="resnet18",
                   help="resnet18: torchvision's ResNet-18 with a face-sized stem "
                        "(default); compact: a small 8-layer CNN for CPUs and small data")
    t.add_argument("--feature-dim", type=int, default=512, help="width of the embedding")
    t.add_argument("--image-size", type=int, default=112,
                   help="images are resized to this square size")
    t.add_argument("--dropout", type=float, default=0.2, help="before the embedding layer")
    t.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random crop/flip/colour jitter")
    t.add_argument("--epochs", type=int, default=20, help="passes over train/")
    t.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    t.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 0.1 for sgd, 1e-3 for adamw)")
    t.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="default: 5e-4 for sgd, 0.05 for adamw")
    t.add_argument("--scheduler", choices=("cosine", "step"), default="cosine",
                   help="after warm-up: cosine decay to 0, or ×0.1 at each --milestones epoch")
    t.add_argument("--milestones", type=int, nargs="*", default=None,
                   help="step scheduler epochs (default: 50%% and 75%% of --epochs)")
    t.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear learning-rate warm-up from 0")
    t.add_argument("--clip-grad-norm", type=float, default=5.0,
                   help="clip the gradients' global norm (0: off)")
    t.add_argument("--center-loss-weight", "--lambda", dest="center_loss_weight", type=float,
                   default=0.005, help="λ (caffe-face used 0.008)")
    t.add_argument("--alpha", type=float, default=0.5, help="center learning rate α")
    t.add_argument("--eval-every", type=int, default=1, metavar="N",
                   help="evaluate on val/ every N epochs and after the last")
    t.add_argument("--seed", type=int, default=0, help="initialisation, order, augmentation")
    t.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoint.pt up to --epochs")
    _common_runtime(t)
    _eval_options(t)

    e = command("eval", "evaluate a checkpoint on DIR/val (gallery: DIR/train)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--input-dir", required=True)
    e.add_argument("--out", default=None,
                   help="where to write eval_metrics.json and roc.png (default: the "
                        "checkpoint's folder)")
    e.add_argument("--seed", type=int, default=0, help="for sampling verification pairs")
    _common_runtime(e)
    _eval_options(e)

    m = command("embed", "write the L2-normalised features of a folder of images")
    m.add_argument("--checkpoint", required=True)
    m.add_argument("--images", required=True,
                   help="folder of images; an image in FOLDER/<name>/ is labelled <name>")
    m.add_argument("--out", required=True, help="output file: .npz or .pt")
    _common_runtime(m)

    q = command("identify", "the nearest enrolled identities of query images")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--gallery", required=True, help="features written by `embed` (labelled)")
    q.add_argument("--query", required=True, nargs="+", help="image file(s) or folder(s)")
    q.add_argument("--top-k", type=int, default=5, help="identities to list per query")
    q.add_argument("--threshold", type=float, default=None,
                   help="below this cosine similarity the answer is 'unknown'")
    q.add_argument("--json", action="store_true", help="print the results as JSON")
    _common_runtime(q)

    s = command("split", "split one folder per identity into train/ and val/ (by image)")
    s.add_argument("--source", required=True, help="folder with one subfolder per identity")
    s.add_argument("--out", required=True, help="where train/ and val/ are made")
    s.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of each identity's images for val/ (at least one, never "
                        "its last)")
    s.add_argument("--unseen-identities", type=int, default=0,
                   help="identities put in val/ whole, never trained on")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--copy", action="store_true", help="copy the images (default: symlinks)")

    args = p.parse_args(argv)
    if args.command == "split":
        return args
    if args.command == "train":
        if args.lr is None:
            args.lr = 0.1 if args.optimizer == "sgd" else 1e-3
        if args.weight_decay is None:
            args.weight_decay = 5e-4 if args.optimizer == "sgd" else 0.05
        if args.milestones is None:
            args.milestones = [max(1, args.epochs // 2), max(1, (3 * args.epochs) // 4)]
        if min(args.epochs, args.feature_dim, args.image_size, args.eval_every) < 1:
            p.error("--epochs, --feature-dim, --image-size and --eval-every must be positive")
        if args.center_loss_weight < 0 or args.warmup_epochs < 0:
            p.error("--center-loss-weight and --warmup-epochs must be >= 0")
    if args.batch_size < 1:
        p.error("--batch-size must be positive")
    return args


# ------------------------------------------------------------------ construction

def amp_dtype(choice: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for full precision."""
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "fp16" and device.type != "cuda":
        raise TrainingError("--amp fp16 needs a CUDA device (use bf16 on the CPU)")
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if choice == "bf16" else torch.float16


def build_model(model_config: Dict[str, Any], num_classes: int,
                device: torch.device) -> FaceNet:
    model = FaceNet(num_classes, model_config["feature_dim"], model_config["arch"],
                    model_config["image_size"], model_config["dropout"])
    return model.to(device, memory_format=torch.channels_last)


def build_training(args: argparse.Namespace, num_classes: int, steps_per_epoch: int,
                   device: torch.device):
    """Model, center loss, optimizer and per-step scheduler, built in one place (a
    distributed version wraps the model here)."""
    model = build_model({k: getattr(args, k) for k in MODEL_KEYS}, num_classes, device)
    center_loss = CenterLoss(num_classes, args.feature_dim, alpha=args.alpha, device=device)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                      weight_decay=args.weight_decay)
    total = args.epochs * steps_per_epoch
    warmup = int(round(args.warmup_epochs * steps_per_epoch))
    milestones = [m * steps_per_epoch for m in args.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 0.1 ** sum(step >= m for m in milestones)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return model, center_loss, optimizer, scheduler


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device,
                generator: Optional[torch.Generator] = None, drop_last: bool = False,
                sampler: Optional[DistributedSampler] = None) -> DataLoader:
    """One place for loaders; under torchrun a DistributedSampler gives each rank its share
    (and does the shuffling)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      drop_last=drop_last, generator=generator, persistent_workers=False)


# ------------------------------------------------------------------ training

def train_one_epoch(model: FaceNet, center_loss: CenterLoss, optimizer, scheduler, scaler,
                    loader: DataLoader, args: argparse.Namespace, epoch: int,
                    device: torch.device, autocast: Optional[torch.dtype],
                    show_progress: bool = True, ranks: ddp.Ranks = ddp.Ranks()
                    ) -> Dict[str, float]:
    """One pass over ``loader``; returns epoch means (over every rank's share under
    torchrun). Stops with NonFiniteLossError as soon as the loss is not finite, on
    every rank at once."""
    model.train()
    center_loss.train()                          # alpha mode: the forward moves the centers
    sums = {"loss": 0.0, "softmax": 0.0, "center": 0.0, "correct": 0, "seen": 0}
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", leave=False,
               disable=not show_progress or args.no_progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(bar):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast or torch.float32,
                            enabled=autocast is not None):
            features, logits = model(x)
        softmax = F.cross_entropy(logits.float(), y)
        center = center_loss(features.float(), y)
        loss = softmax + args.center_loss_weight * center
        # the mean over the ranks: a non-finite loss anywhere stops every rank together
        check_finite(ddp.mean_over_ranks(loss, ranks), epoch, step,
                     {"softmax": softmax, "center": center},
                     hint="Lower --lr or --center-loss-weight, keep --clip-grad-norm "
                          "and the warm-up on, and check the images.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = len(y)
        sums["loss"] += loss.item() * n
        sums["softmax"] += softmax.item() * n
        sums["center"] += center.item() * n
        sums["correct"] += int((logits.argmax(1) == y).sum())
        sums["seen"] += n
        bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.4f}",
                        acc=f"{sums['correct'] / sums['seen']:.4f}",
                        lr=f"{optimizer.param_groups[0]['lr']:.3g}", refresh=False)
    bar.close()
    keys = ("loss", "softmax", "center", "correct", "seen")
    sums.update(zip(keys, ddp.sum_over_ranks([sums[k] for k in keys], ranks, device)))
    seen = max(sums["seen"], 1)
    return {"train_loss": sums["loss"] / seen, "train_softmax_loss": sums["softmax"] / seen,
            "train_center_loss": sums["center"] / seen, "train_acc": sums["correct"] / seen,
            "images_per_second": sums["seen"] / (time.perf_counter() - t0)}


# ------------------------------------------------------------------ evaluation

def _features(model: FaceNet, samples, image_size: int, args, device, autocast,
              with_logits: bool = False):
    loader = make_loader(ImageListDataset(samples, face_transforms(image_size, train=False)),
                         args.batch_size, False, args.workers, device)
    return extract_features(model.embed, loader, device,
                            logits_fn=model.classifier if with_logits else None,
                            autocast_dtype=autocast, channels_last=True)


def gallery_samples(folders: FaceFolders, per_class: int):
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


def evaluate(model: FaceNet, center_loss: CenterLoss, folders: FaceFolders,
             image_size: int, args, device: torch.device,
             autocast: Optional[torch.dtype]) -> Tuple[Dict[str, Any], Optional[Dict]]:
    """Identification and verification on val/; returns the metrics and the ROC curve."""
    model.eval()
    center_loss.eval()                          # evaluation must not move the centers
    num_classes = folders.num_classes
    g_feats, g_labels, _ = _features(model, gallery_samples(folders, args.gallery_per_class),
                                     image_size, args, device, autocast)
    v_feats, v_labels, v_pred = _features(model, folders.val.samples, image_size, args,
                                          device, autocast, with_logits=True)
    seen = v_labels < num_classes
    metrics: Dict[str, Any] = {
        "val_images": len(v_labels), "val_images_seen": int(seen.sum()),
        "val_identities": len(folders.val.class_to_idx),
        "val_unseen_identities": len(folders.val.unseen),
        "gallery_images": len(g_labels),
    }
    if seen.any():
        knn = knn_accuracy(l2_normalize(g_feats), g_labels, l2_normalize(v_feats[seen]),
                           v_labels[seen], KNN_KS)
        metrics.update({f"val_knn{k}_acc": v for k, v in knn.items()})
        metrics["val_softmax_acc"] = float((v_pred[seen] == v_labels[seen]).float().mean())
        metrics["val_nearest_center_acc"] = nearest_center_accuracy(
            v_feats[seen], v_labels[seen], center_loss.centers.cpu())
    roc = None
    if len(folders.val.class_to_idx) >= 2:
        i, j = verification_pairs(v_labels, args.max_pairs, args.seed)
        scores = pair_similarities(v_feats, i, j)
        try:
            ver = verification_metrics(scores, v_labels[i] == v_labels[j])
        except ValueError as e:                 # e.g. one image per identity: no same pairs
            metrics["verification_skipped"] = str(e)
        else:
            roc = ver.pop("roc")
            metrics.update({f"val_{k}": v for k, v in ver.items()})
    return metrics, roc


def _summary(metrics: Dict[str, Any]) -> str:
    keys = [("val_knn1_acc", "1-NN acc"), ("val_softmax_acc", "softmax acc"),
            ("val_nearest_center_acc", "nearest-center acc"), ("val_roc_auc", "ROC AUC"),
            ("val_tar@far=0.001", "TAR@FAR=1e-3"), ("val_best_accuracy", "verif. acc")]
    return ", ".join(f"{name} {metrics[k]:.4f}" for k, name in keys
                     if metrics.get(k) is not None)


# ------------------------------------------------------------------ commands

def cmd_train(args: argparse.Namespace) -> Dict[str, Any]:
    """Trains on DIR/train, evaluates on DIR/val. Under torchrun every rank trains on its
    share of train/ (DDP for the model, CenterLoss syncing the centers); rank 0 logs,
    evaluates and saves."""
    ranks, device = ddp.setup(args.device)
    try:
        return _train(args, ranks, device)
    finally:
        ddp.cleanup(ranks)


def _train(args: argparse.Namespace, ranks: ddp.Ranks, device: torch.device) -> Dict[str, Any]:
    log = print if ranks.main else (lambda *a, **k: None)
    autocast = amp_dtype(args.amp, device)
    seed_everything(args.seed)
    out = Path(args.out)
    ckpt_path = out / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path, map_location=device) if args.resume else None
    folders = load_face_folders(Path(args.input_dir), args.num_classes,
                                class_names=ckpt["class_names"] if ckpt else None)
    if folders.val.unseen:
        log(f"val/: {len(folders.val.unseen)} "
              f"{'identity' if len(folders.val.unseen) == 1 else 'identities'} not in train/ "
              f"({', '.join(folders.val.unseen[:5])}{', ...' if len(folders.val.unseen) > 5 else ''})"
              ": used for verification only")
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
    train_set = ImageListDataset(folders.train.samples,
                                 face_transforms(args.image_size, train=True, augment=args.augment))
    generator = torch.Generator()
    sampler = (DistributedSampler(train_set, ranks.world, ranks.rank, shuffle=True,
                                  seed=args.seed) if ranks.distributed else None)
    share = len(sampler) if sampler else len(train_set)
    # drop_last: a last batch of one would break BatchNorm's batch statistics
    loader = make_loader(train_set, args.batch_size, True, args.workers, device, generator,
                         drop_last=share > args.batch_size, sampler=sampler)
    net, center_loss, optimizer, scheduler = build_training(args, folders.num_classes,
                                                            len(loader), device)
    model = ddp.wrap(net, ranks, device)     # `net` is the bare model: saved, evaluated
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)
    config = {k: getattr(args, k) for k in RUN_KEYS}
    config["epochs"] = args.epochs
    config["world_size"] = ranks.world       # --batch-size is per rank
    history: List[Dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    if ckpt is not None:
        check_same_config(ckpt["config"], config, RUN_KEYS + ("epochs", "world_size"),
                          ckpt_path)
        net.load_state_dict(ckpt["model"])
        center_loss.load_state_dict(ckpt["center_loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, history, elapsed = ckpt["epoch"], ckpt["history"], ckpt["train_seconds"]
        log(f"resuming {ckpt_path} after epoch {start_epoch}")
    elif ckpt_path.exists():
        log(f"note: starting afresh; {ckpt_path} will be overwritten (--resume continues it)")
    log(f"{PROG}: {args.arch} ({args.image_size}px, {args.feature_dim}-D), "
        f"{folders.num_classes} identities, {len(train_set)} train / "
        f"{len(folders.val.samples)} val images, λ={args.center_loss_weight:g}, "
        f"{args.optimizer} lr {args.lr:g}, on {device}"
        f"{f' x {ranks.world} ranks' if ranks.distributed else ''}"
        f"{f' with {autocast}'.replace('torch.', '') if autocast else ''} -> {out}")
    metrics: Dict[str, Any] = {}
    for epoch in range(start_epoch, args.epochs):
        epoch_seed = args.seed * 100_003 + epoch      # same order and augmentations on resume
        torch.manual_seed(epoch_seed + ranks.rank)   # each rank its own augmentations
        generator.manual_seed(epoch_seed)
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        row: Dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update(train_one_epoch(model, center_loss, optimizer, scheduler, scaler, loader,
                                   args, epoch, device, autocast, ranks.main, ranks))
        ddp.check_same_centers(center_loss.centers, ranks)
        elapsed += time.perf_counter() - t0
        row["train_seconds"] = round(elapsed, 1)
        if not ranks.main:                   # rank 0 evaluates and saves
            ddp.barrier(ranks)
            continue
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            metrics, roc = evaluate(net, center_loss, folders, args.image_size, args,
                                    device, autocast)
            row.update(metrics)
            if roc is not None:
                plots.roc_plot(out / "roc.png", roc["fpr"], roc["tpr"],
                               f"val/ verification, epoch {epoch + 1}: AUC "
                               f"{metrics['val_roc_auc']:.4f}")
        history.append(row)
        tqdm.write(f"epoch {epoch + 1}/{args.epochs}  loss {row['train_loss']:.4f}  train acc "
                   f"{row['train_acc']:.4f}  {_summary(row)}  ({elapsed:.0f} s)")
        save_checkpoint(ckpt_path, {
            "kind": CHECKPOINT_KIND, "config": config, "epoch": epoch + 1,
            "model_config": {k: getattr(args, k) for k in MODEL_KEYS},
            "class_names": folders.class_names, "history": history, "train_seconds": elapsed,
            "model": net.state_dict(), "center_loss": center_loss.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
        })
        write_json(out / "metrics.json", _train_metrics(args, folders, device, history, ranks))
        ddp.barrier(ranks)
    if not ranks.main:
        return {}
    plots.training_curves(out / "curves.png", history,
                          accuracy_keys=("train_acc", "val_knn1_acc", "val_softmax_acc",
                                         "val_roc_auc"))
    result = _train_metrics(args, folders, device, history, ranks)
    write_json(out / "metrics.json", result)
    print(f"wrote {out}/: checkpoint.pt, metrics.json, curves.png, roc.png")
    return result


def _train_metrics(args, folders: FaceFolders, device, history,
                   ranks: ddp.Ranks) -> Dict[str, Any]:
    evaluated = [h for h in history if "val_images" in h]
    return {"config": vars(args), "environment": {**environment(device), "world_size": ranks.world},
            "identities": folders.num_classes, "unseen_val_identities": folders.val.unseen,
            "final": evaluated[-1] if evaluated else None, "history": history}


def load_face_model(path: Path, device: torch.device) -> Tuple[FaceNet, CenterLoss, Dict]:
    """The model (eval mode) and centers of a checkpoint written by `train`."""
    ckpt = load_checkpoint(path, map_location=device)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise TrainingError(f"{path} is not a {PROG} checkpoint")
    cfg = ckpt["model_config"]
    num_classes = len(ckpt["class_names"])
    model = build_model(cfg, num_classes, device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    center_loss = CenterLoss(num_classes, cfg["feature_dim"], device=device)
    center_loss.load_state_dict(ckpt["center_loss"])
    center_loss.eval()
    return model, center_loss, ckpt


def cmd_eval(args: argparse.Namespace) -> Dict[str, Any]:
    device = resolve_device(args.device)
    autocast = amp_dtype(args.amp, device)
    model, center_loss, ckpt = load_face_model(Path(args.checkpoint), device)
    folders = load_face_folders(Path(args.input_dir), class_names=ckpt["class_names"])
    metrics, roc = evaluate(model, center_loss, folders, ckpt["model_config"]["image_size"],
                            args, device, autocast)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    if roc is not None:
        plots.roc_plot(out / "eval_roc.png", roc["fpr"], roc["tpr"],
                       f"{Path(args.input_dir).name}/val verification: AUC "
                       f"{metrics['val_roc_auc']:.4f}")
    result = {"checkpoint": str(args.checkpoint), "epoch": ckpt["epoch"],
              "input_dir": str(args.input_dir), "unseen_val_identities": folders.val.unseen,
              **metrics}
    write_json(out / "eval_metrics.json", result)
    print(_summary(metrics))
    print(f"wrote {out}/eval_metrics.json" + (", eval_roc.png" if roc is not None else ""))
    return result


def _images_with_labels(folder: Path) -> List[Tuple[Path, str]]:
    """Images under ``folder``; one inside ``folder/<name>/`` is labelled ``<name>``."""
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
    return [(p, p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else "")
            for p in images]


@torch.no_grad()
def embed_images(model: FaceNet, image_size: int, items: Sequence[Tuple[Path, str]], args,
                 device: torch.device) -> torch.Tensor:
    """L2-normalised features of the images, in order."""
    feats, _, _ = _features(model, [(p, 0) for p, _ in items], image_size, args, device,
                            amp_dtype(args.amp, device))
    return l2_normalize(feats)


def save_embeddings(path: Path, features: torch.Tensor, paths: Sequence[str],
                    labels: Sequence[str], meta: Dict[str, Any]) -> None:
    """``.npz`` (features, paths, labels arrays) or ``.pt`` (a dict) by extension."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, features=features.numpy(), paths=np.array(paths, dtype=str),
                 labels=np.array(labels, dtype=str), meta=json.dumps(meta))
    elif path.suffix == ".pt":
        torch.save({"features": features, "paths": list(paths), "labels": list(labels),
                    "meta": meta}, path)
    else:
        raise TrainingError(f"--out {path}: use a .npz or .pt file name")


def load_embeddings(path: Path) -> Tuple[torch.Tensor, List[str], List[str], Dict[str, Any]]:
    """What save_embeddings wrote: features, paths, labels, meta."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no embeddings file at {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return (torch.from_numpy(z["features"]), [str(s) for s in z["paths"]],
                    [str(s) for s in z["labels"]], json.loads(str(z["meta"])))
    d = torch.load(path, map_location="cpu", weights_only=True)
    return d["features"], d["paths"], d["labels"], d["meta"]


def cmd_embed(args: argparse.Namespace) -> Dict[str, Any]:
    device = resolve_device(args.device)
    model, _, ckpt = load_face_model(Path(args.checkpoint), device)
    items = _images_with_labels(Path(args.images))
    features = embed_images(model, ckpt["model_config"]["image_size"], items, args, device)
    root = Path(args.images)
    paths = [str(p.relative_to(root)) if root.is_dir() else str(p) for p, _ in items]
    labels = [label for _, label in items]
    meta = {"checkpoint": str(args.checkpoint), "images": str(root),
            "feature_dim": features.shape[1], "normalized": "l2"}
    save_embeddings(Path(args.out), features, paths, labels, meta)
    named = sum(bool(label) for label in labels)
    print(f"wrote {args.out}: {len(items)} images ({named} labelled, "
          f"{len(set(l for l in labels if l))} identities), {features.shape[1]}-D features")
    return {"out": str(args.out), "images": len(items), "labelled": named}


def identity_templates(features: torch.Tensor,
                       labels: Sequence[str]) -> Tuple[List[str], torch.Tensor]:
    """One enrolled template per identity: the normalised mean of its normalised features
    (unlabelled gallery images are left out)."""
    names = sorted({label for label in labels if label})
    if not names:
        raise TrainingError("the gallery has no labelled images: embed a folder with one "
                            "subfolder per identity")
    index = {name: i for i, name in enumerate(names)}
    rows = [i for i, label in enumerate(labels) if label]
    owner = torch.tensor([index[labels[i]] for i in rows])
    sums = torch.zeros(len(names), features.shape[1])
    sums.index_add_(0, owner, l2_normalize(features[rows]))
    return names, l2_normalize(sums)


def cmd_identify(args: argparse.Namespace) -> List[Dict[str, Any]]:
    device = resolve_device(args.device)
    model, _, ckpt = load_face_model(Path(args.checkpoint), device)
    g_feats, _, g_labels, g_meta = load_embeddings(Path(args.gallery))
    if g_feats.shape[1] != ckpt["model_config"]["feature_dim"]:
        raise TrainingError(f"{args.gallery} holds {g_feats.shape[1]}-D features; "
                            f"{args.checkpoint} makes {ckpt['model_config']['feature_dim']}-D")
    names, templates = identity_templates(g_feats, g_labels)
    items = [item for q in args.query for item in _images_with_labels(Path(q))]
    queries = embed_images(model, ckpt["model_config"]["image_size"], items, args, device)
    scores = queries @ templates.T                                # cosine similarities
    k = min(args.top_k, len(names))
    top_scores, top_idx = scores.topk(k, dim=1)
    results = []
    for (path, _), s_row, i_row in zip(items, top_scores.tolist(), top_idx.tolist()):
        matches = [{"identity": names[i], "score": round(s, 6)} for s, i in zip(s_row, i_row)]
        known = args.threshold is None or matches[0]["score"] >= args.threshold
        results.append({"query": str(path), "identity": matches[0]["identity"] if known
                        else None, "matches": matches})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            answer = r["identity"] if r["identity"] is not None else "unknown"
            print(f"{r['query']}: {answer}")
            for rank, m in enumerate(r["matches"], 1):
                print(f"  {rank}. {m['identity']}  {m['score']:.4f}")
    return results


def cmd_split(args: argparse.Namespace) -> Dict[str, int]:
    counts = split_identity_folder(Path(args.source), Path(args.out), args.val_fraction,
                                   args.unseen_identities, args.seed, args.copy)
    print(f"wrote {args.out}/train ({counts['train_images']} images) and {args.out}/val "
          f"({counts['val_images']} images, {counts['unseen_identities']} identities unseen "
          "in train/)")
    return counts


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "embed": cmd_embed, "identify": cmd_identify,
            "split": cmd_split}


def main(argv: Optional[Sequence[str]] = None):
    args = parse_args(argv)
    return run_cli(PROG, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    main()
