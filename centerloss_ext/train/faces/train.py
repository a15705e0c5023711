"""`centerloss-faces train`: softmax (or a CosFace / ArcFace head) + λ·center loss on
``DIR/train``, evaluated on ``DIR/val`` and on the ``--verify`` sets (pairs.txt / .bin,
the 10-fold protocol), one checkpoint and metrics.json per epoch (``resume`` continues
exactly); ``--init`` starts the backbone from an earlier run or a ResNet-18 state dict.
Under torchrun every rank trains on its share of train/ (DDP for the model, CenterLoss
syncing the centers); rank 0 logs, evaluates and saves.

Top to bottom: TrainOptions, build_training, Run (what the epochs work on),
train_one_epoch, train (the job), the epoch (train, then evaluate on val/ when due)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ... import CenterLoss
from ..._machine import environment
from ..core import ddp, loop, plots
from ..core.cli import is_interrupt
from ..core.errors import RanksLost, TrainingError
from ..core.files import run_folder, save_checkpoint, write_json
from ..core.runtime import seed_everything
from .data import (
    MAX_IMAGE_PIXELS,
    FaceFolders,
    ImageListDataset,
    face_transforms,
    load_face_folders,
    make_loader,
)
from .evaluate import EvalOptions, Extraction, evaluate, summary
from .model import (
    CHECKPOINT_KIND,
    DEFAULT_MARGIN,
    DEFAULT_SCALE,
    DEFAULT_WORKERS,
    MODEL_KEYS,
    PROG,
    FaceNet,
    amp_dtype,
    build_model,
    init_backbone,
)
from .pairs import PairSet, parse_named_sets, read_pair_set
from .verify import set_metrics

# options that define a run: resuming with other values would mix two runs
RUN_KEYS = MODEL_KEYS + (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "scheduler",
    "milestones",
    "warmup_epochs",
    "batch_size",
    "center_loss_weight",
    "alpha",
    "clip_grad_norm",
    "seed",
    "augment",
)
# what a run writes into --out (and `eval` beside the checkpoint): --overwrite deletes these
OUTPUTS = (
    "checkpoint.pt",
    "metrics.json",
    "curves.png",
    "roc.png",
    "eval_metrics.json",
    "eval_roc.png",
    "*.tmp",
)
NAN_HINT = (
    "Lower --lr or --center-loss-weight, keep --clip-grad-norm and the warm-up on, "
    "and check the images."
)


@dataclass
class TrainOptions:
    """Everything `train` takes (the command line's options, same names). ``lr``,
    ``weight_decay`` and ``milestones`` left as None get the optimizer's and the epochs'
    defaults; ``margin`` left as None gets the head's (CosFace 0.35, ArcFace 0.5)."""

    input_dir: str
    out: str = "runs/faces"
    num_classes: Optional[int] = None
    arch: str = "resnet18"
    feature_dim: int = 512
    image_size: int = 112
    dropout: float = 0.2
    head: str = "softmax"
    margin: Optional[float] = None
    scale: float = DEFAULT_SCALE
    init: Optional[str] = None
    verify: List[str] = field(default_factory=list)
    augment: bool = True
    epochs: int = 20
    optimizer: str = "sgd"
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    scheduler: str = "cosine"
    milestones: Optional[List[int]] = None
    warmup_epochs: float = 1.0
    clip_grad_norm: float = 5.0
    center_loss_weight: float = 0.005
    alpha: float = 0.5
    eval_every: int = 1
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    batch_size: int = 128
    workers: int = DEFAULT_WORKERS
    max_image_pixels: int = MAX_IMAGE_PIXELS
    dist_timeout: float = ddp.DEFAULT_TIMEOUT_S
    amp: str = "auto"
    no_progress: bool = False
    gallery_per_class: int = 10
    max_pairs: int = 2_000_000
    log_every: int = loop.LOG_EVERY  # not a command-line option; not recorded

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = 0.1 if self.optimizer == "sgd" else 1e-3
        if self.weight_decay is None:
            self.weight_decay = 5e-4 if self.optimizer == "sgd" else 0.05
        if self.milestones is None:
            self.milestones = [max(1, self.epochs // 2), max(1, (3 * self.epochs) // 4)]
        if self.head == "softmax" and self.margin:
            raise TrainingError("--margin is for --head cosface or arcface")
        if self.margin is None:
            self.margin = DEFAULT_MARGIN[self.head]

    def record(self) -> Dict[str, Any]:
        """The options as metrics.json records them (the command line's keys)."""
        return {"command": "train", **{k: v for k, v in asdict(self).items() if k != "log_every"}}


def build_training(
    opts: TrainOptions, num_classes: int, steps_per_epoch: int, device: torch.device
):
    """Model, center loss, optimizer and per-step scheduler, built in one place."""
    model = build_model({k: getattr(opts, k) for k in MODEL_KEYS}, num_classes, device)
    center_loss = CenterLoss(num_classes, opts.feature_dim, alpha=opts.alpha, device=device)
    lr, weight_decay, milestone_epochs = opts.lr, opts.weight_decay, opts.milestones
    assert lr is not None and weight_decay is not None and milestone_epochs is not None  # post_init
    optimizer: torch.optim.Optimizer
    if opts.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=opts.momentum, weight_decay=weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = opts.epochs * steps_per_epoch
    warmup = int(round(opts.warmup_epochs * steps_per_epoch))
    milestones = [m * steps_per_epoch for m in milestone_epochs]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if opts.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 0.1 ** sum(step >= m for m in milestones)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return model, center_loss, optimizer, scheduler


@dataclass
class Run:
    """What a `train` run's epochs work on: the options; ``model``, the network as it
    trains (under DDP with torchrun) and ``net``, the bare network that is saved and
    evaluated; the center loss, optimizer, per-step scheduler and gradient scaler; the
    training loader with its sampler (torchrun) and generator (order, augmentations); the
    folders; the device, autocast dtype and ranks; where the run stands; the output
    folder; the --verify sets by name."""

    opts: TrainOptions
    model: torch.nn.Module
    net: FaceNet
    center_loss: CenterLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loader: DataLoader
    sampler: Optional[DistributedSampler]
    generator: torch.Generator
    folders: FaceFolders
    device: torch.device
    autocast: Optional[torch.dtype]
    ranks: ddp.Ranks
    progress: loop.Progress
    out: Path
    verify_sets: List[Tuple[str, PairSet]]

    def extraction(self) -> Extraction:
        """How evaluation embeds the val/ and gallery images."""
        return Extraction(
            self.opts.image_size,
            self.device,
            self.autocast,
            self.opts.batch_size,
            self.opts.workers,
        )

    def eval_options(self) -> EvalOptions:
        return EvalOptions(self.opts.gallery_per_class, self.opts.max_pairs, self.opts.seed)


def train_one_epoch(run: Run, epoch: int) -> Dict[str, float]:
    """One pass over the run's loader in (0-based) ``epoch``; returns epoch means (over
    every rank's share under torchrun). The statistics stay on the device and are read
    back once per ``log_every`` steps, which is also when a non-finite loss stops the run
    (on every rank at once), naming the step where it first happened."""
    opts, device, autocast = run.opts, run.device, run.autocast
    model, center_loss, optimizer, scaler = run.model, run.center_loss, run.optimizer, run.scaler
    loader = run.loader
    model.train()
    center_loss.train()  # alpha mode: the forward moves the centers
    stats = loop.RunningStats(device, epoch, len(loader), opts.log_every, run.ranks, NAN_HINT)
    batches = iter(loader)  # WorkerBatches: see core/workers.py
    bar = tqdm(
        batches,
        total=len(loader),
        desc=f"epoch {epoch + 1}/{opts.epochs}",
        unit="batch",
        leave=False,
        disable=not (run.ranks.main and not opts.no_progress),
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    try:
        for step, (x, y) in enumerate(bar, 1):
            run.progress.step = step  # where a hung rank's error says this one was
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast(
                device.type, dtype=autocast or torch.float32, enabled=autocast is not None
            ):
                features, logits = model(x)
            # the margin heads' logits get the margin here; accuracy counts without it
            softmax = F.cross_entropy(run.net.classifier.with_margin(logits, y), y)
            center = center_loss(features.float(), y)
            loss = softmax + opts.center_loss_weight * center
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if opts.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            run.scheduler.step()
            means = stats.add(loss, softmax, center, logits, y)
            if means is not None:
                bar.set_postfix(
                    loss=f"{means['loss']:.4f}",
                    acc=f"{means['acc']:.4f}",
                    lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                    refresh=False,
                )
    finally:
        close = getattr(batches, "close", None)  # the workers stop now, also after a
        if close is not None:  # Ctrl-C in the loop body
            close()
    bar.close()
    m = stats.means or stats.sync()
    return {
        "train_loss": m["loss"],
        "train_softmax_loss": m["softmax"],
        "train_center_loss": m["center"],
        "train_acc": m["acc"],
        "images_per_second": m["seen"] / (time.perf_counter() - t0),
    }


def train(opts: TrainOptions) -> Dict[str, Any]:
    """The `train` job; returns metrics.json's content (empty on ranks other than 0)."""
    ranks, device = ddp.setup(opts.device, opts.dist_timeout)
    lost = False
    try:
        if not ranks.main:
            return _train(opts, ranks, device)
        # before any work: lock --out (a second run stops at once), refuse or clear it;
        # a failed run leaves no empty folder behind
        with run_folder(Path(opts.out), OUTPUTS, opts.overwrite, opts.resume):
            return _train(opts, ranks, device)
    except RanksLost:
        lost = True
        raise
    finally:
        ddp.cleanup(ranks, lost)


def _train(opts: TrainOptions, ranks: ddp.Ranks, device: torch.device) -> Dict[str, Any]:
    log = print if ranks.main else (lambda *a, **k: None)
    autocast = amp_dtype(opts.amp, device)
    seed_everything(opts.seed)
    out = Path(opts.out)
    ckpt_path = out / "checkpoint.pt"
    ckpt = loop.load_for_resume(ckpt_path, device, ("class_names",)) if opts.resume else None
    folders = load_face_folders(
        Path(opts.input_dir), opts.num_classes, class_names=ckpt["class_names"] if ckpt else None
    )
    verify_sets = (
        [
            (name, read_pair_set(Path(f), Path(i) if i else None))
            for name, f, i in parse_named_sets(opts.verify)
        ]
        if ranks.main
        else []
    )
    unseen = folders.val.unseen
    if unseen:
        log(
            f"val/: {len(unseen)} {'identity' if len(unseen) == 1 else 'identities'} not in "
            f"train/ ({', '.join(unseen[:5])}{', ...' if len(unseen) > 5 else ''})"
            ": used for verification only"
        )
    train_set = ImageListDataset(
        folders.train.samples,
        face_transforms(opts.image_size, train=True, augment=opts.augment),
        opts.max_image_pixels,
    )
    generator = torch.Generator()
    sampler: Optional[DistributedSampler] = (
        DistributedSampler(train_set, ranks.world, ranks.rank, shuffle=True, seed=opts.seed)
        if ranks.distributed
        else None
    )
    share = len(sampler) if sampler else len(train_set)
    # drop_last: a last batch of one would break BatchNorm's batch statistics
    loader = make_loader(
        train_set,
        opts.batch_size,
        True,
        opts.workers,
        device,
        generator,
        drop_last=share > opts.batch_size,
        sampler=sampler,
    )
    net, center_loss, optimizer, scheduler = build_training(
        opts, folders.num_classes, len(loader), device
    )
    if opts.init and ckpt is None:  # on resume the checkpoint holds the backbone
        log(f"--init: {init_backbone(net, Path(opts.init), opts.arch)}")
    model = ddp.wrap(net, ranks, device)  # `net` is the bare model: saved, evaluated
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)
    config = {k: getattr(opts, k) for k in RUN_KEYS}
    if ckpt is not None and "head" not in ckpt["config"]:  # from before the margin heads
        ckpt["config"].update(head="softmax", margin=0.0, scale=DEFAULT_SCALE)
    config["epochs"] = opts.epochs
    config["world_size"] = ranks.world  # --batch-size is per rank
    states = {
        "model": net,
        "center_loss": center_loss,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
    }
    progress = loop.resume(
        ckpt,
        ckpt_path,
        config,
        RUN_KEYS + ("epochs", "world_size"),
        states,
        log,
        epochs=opts.epochs,
    )
    log(
        f"{PROG}: {opts.arch} ({opts.image_size}px, {opts.feature_dim}-D), "
        f"{folders.num_classes} identities, {len(train_set)} train / "
        f"{len(folders.val.samples)} val images, {opts.head} head"
        f"{f' (m={opts.margin:g}, s={opts.scale:g})' if opts.head != 'softmax' else ''}, "
        f"λ={opts.center_loss_weight:g}, "
        f"{opts.optimizer} lr {opts.lr:g}, on {device}"
        f"{f' x {ranks.world} ranks' if ranks.distributed else ''}"
        f"{f' with {autocast}'.replace('torch.', '') if autocast else ''} -> {out}"
    )
    run = Run(
        opts,
        model,
        net,
        center_loss,
        optimizer,
        scheduler,
        scaler,
        loader,
        sampler,
        generator,
        folders,
        device,
        autocast,
        ranks,
        progress,
        out,
        verify_sets,
    )

    def save() -> None:
        save_checkpoint(
            ckpt_path,
            loop.checkpoint_state(
                config,
                progress,
                states,
                kind=CHECKPOINT_KIND,
                model_config={k: getattr(opts, k) for k in MODEL_KEYS},
                class_names=folders.class_names,
            ),
        )
        write_json(out / "metrics.json", _record(run))

    saved = epoch = progress.epoch
    try:
        for epoch in range(progress.epoch, opts.epochs):
            _epoch(run, epoch)
            if ranks.main:
                save()
                saved = progress.epoch
            ddp.barrier(ranks)
    except (KeyboardInterrupt, RuntimeError) as e:  # RuntimeError: see is_interrupt
        where = f"epoch {epoch + 1}, step {progress.step}"
        lost = ddp.lost_ranks(e, ranks, where, opts.dist_timeout)
        if lost is not None:  # a hung rank: stop now, the saved checkpoint stays
            raise lost from None
        if not is_interrupt(e):
            raise
        # the epoch's training finished but its save did not: its state is consistent
        if ranks.main and progress.epoch > saved:
            save()
            saved = progress.epoch
        raise loop.interrupted(epoch, saved, ckpt_path) from None
    if not ranks.main:
        return {}
    plots.training_curves(
        out / "curves.png",
        progress.history,
        accuracy_keys=(
            "train_acc",
            "val_knn1_acc",
            "val_softmax_acc",
            "val_roc_auc",
            *(f"verify_{name}_accuracy" for name, _ in run.verify_sets),
        ),
    )
    result = _record(run)
    write_json(out / "metrics.json", result)
    print(f"wrote {out}/: checkpoint.pt, metrics.json, curves.png, roc.png")
    return result


def _epoch(run: Run, epoch: int) -> None:
    """One epoch: train, then on rank 0 evaluate when due; the epoch's row joins the
    history as soon as its training is done (so a checkpoint saved then is consistent)."""
    opts, ranks, progress = run.opts, run.ranks, run.progress
    epoch_seed = opts.seed * 100_003 + epoch  # same order and augmentations on resume
    torch.manual_seed(epoch_seed + ranks.rank)  # each rank its own augmentations
    run.generator.manual_seed(epoch_seed)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    t0 = time.perf_counter()
    row: Dict[str, Any] = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}
    row.update(train_one_epoch(run, epoch))
    ddp.check_same_centers(run.center_loss.centers, ranks)
    progress.train_seconds += time.perf_counter() - t0
    row["train_seconds"] = round(progress.train_seconds, 1)
    progress.history.append(row)
    progress.epoch = epoch + 1
    if not ranks.main:  # rank 0 evaluates and saves
        return
    if (epoch + 1) % opts.eval_every == 0 or epoch + 1 == opts.epochs:
        metrics, roc = evaluate(
            run.net, run.center_loss, run.folders, run.extraction(), run.eval_options()
        )
        row.update(metrics)
        if roc is not None:
            plots.roc_plot(
                run.out / "roc.png",
                roc["fpr"],
                roc["tpr"],
                f"val/ verification, epoch {epoch + 1}: AUC {metrics['val_roc_auc']:.4f}",
            )
        for name, pairs in run.verify_sets:
            row.update(set_metrics(name, run.net, pairs, run.extraction()))
    tqdm.write(
        f"epoch {epoch + 1}/{opts.epochs}  loss {row['train_loss']:.4f}  train acc "
        f"{row['train_acc']:.4f}  {summary(row)}"
        + "".join(
            f", {name} {row[f'verify_{name}_accuracy']:.4f}"
            for name, _ in run.verify_sets
            if f"verify_{name}_accuracy" in row
        )
        + f"  ({progress.train_seconds:.0f} s)"
    )


def _record(run: Run) -> Dict[str, Any]:
    """metrics.json: the options, where it ran, the last evaluated row and every row."""
    history = run.progress.history
    evaluated = [h for h in history if "val_images" in h]
    return loop.run_record(
        run.opts.record(),
        {**environment(run.device), "world_size": run.ranks.world},
        history,
        evaluated[-1] if evaluated else None,
        identities=run.folders.num_classes,
        unseen_val_identities=run.folders.val.unseen,
    )
