"""centerloss-mnist's training, top to bottom: one epoch of the LeNet++ recipe
(``train_epoch``, on in-memory images: the step that centerloss-mnist, the open-set
protocol and the λ/α sweep (scripts/sweep_lambda_alpha.py) share, so they train the same
way), the test-set measures, and the run (``run``: data, recipe, resume, epochs,
checkpoint.pt, metrics.json and the figures). The command line is ``cli``."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ... import CenterLoss
from ..._machine import environment
from ..core import loop, plots
from ..core.cli import is_interrupt
from ..core.files import output_folder, run_folder, save_checkpoint, write_json
from ..core.metrics import (
    extract_features,
    intra_inter_ratio,
    knn_accuracy,
    nearest_center_accuracy,
    tensor_batches,
)
from ..core.runtime import resolve_device, seed_everything
from .data import ImageSplits, load_mnist_like, to_unit_range
from .model import LeNetPlusPlus
from .recipe import MnistOptions, Recipe, augment_batch, build, lr_at, resolve_amp

PROG = "centerloss-mnist"
# options that define a run: resuming with other values would mix two runs
RUN_KEYS = (
    "dataset",
    "feature_dim",
    "center_loss_weight",
    "alpha",
    "lr",
    "weight_decay",
    "batch_size",
    "seed",
    "lr_schedule",
    "augment",
    "batch_norm",
    "center_update",
    "center_lr",
    "amp",
)
# what a run writes into --out: --overwrite deletes these, and nothing else
OUTPUTS = (
    "checkpoint.pt",
    "metrics.json",
    "curves.png",
    "features.gif",
    "epochs/epoch_*.png",
    "*.tmp",
)
KNN_KS = (1, 5)
EVAL_BATCH = 1000


def train_epoch(
    recipe: Recipe,
    images: torch.Tensor,
    labels: torch.Tensor,
    opts: Any,
    epoch: int,
    device: torch.device,
) -> Dict[str, float]:
    """Sets (0-based) ``epoch``'s learning rate (constant, cosine; onecycle's scheduler
    sets it every step), then makes one pass over ``images`` in an order seeded by
    ``opts.seed`` and ``epoch``. Returns "lr" (the rate at the epoch's start), the epoch
    means (train_loss, train_softmax_loss, train_center_loss, train_acc) and "seconds".
    ``opts``: MnistOptions or anything with its attributes. The statistics stay on
    the device and are read back once per ``opts.log_every`` steps."""
    model, center_loss, optimizer = recipe.model, recipe.center_loss, recipe.optimizers[0]
    lr = lr_at(opts.lr, opts.lr_schedule, epoch, opts.epochs)
    for group in optimizer.param_groups if lr is not None else ():
        group["lr"] = lr
    row = {"lr": optimizer.param_groups[0]["lr"]}
    t0 = time.perf_counter()
    model.train()
    center_loss.train()  # alpha mode: the forward moves the centers
    generator = torch.Generator().manual_seed(opts.seed * 100_003 + epoch)
    order = torch.randperm(len(images), generator=generator)
    flip = opts.dataset == "fashion-mnist"
    steps = range(0, len(images), opts.batch_size)
    stats = loop.RunningStats(device, epoch, len(steps), opts.log_every)
    bar = tqdm(
        steps,
        desc=f"epoch {epoch + 1}/{opts.epochs}",
        unit="batch",
        leave=False,
        disable=opts.no_progress,
        dynamic_ncols=True,
    )
    stepping = [o for o in (*recipe.optimizers, recipe.scheduler) if o is not None]
    for start in bar:
        idx = order[start : start + opts.batch_size]
        x = images[idx]
        if opts.augment:
            x = augment_batch(x, generator, flip)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = labels[idx].to(device, non_blocking=True)
        features, logits = model(x)
        softmax = F.cross_entropy(logits, y)
        center = center_loss(features, y)
        loss = softmax + opts.center_loss_weight * center
        for o in recipe.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in stepping:  # the network's optimizer, the centers', the scheduler
            o.step()
        means = stats.add(loss, softmax, center, logits, y)
        if means is not None:
            bar.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['acc']:.4f}", refresh=False)
    bar.close()
    m = stats.means or stats.sync()
    row.update(
        {
            "train_loss": m["loss"],
            "train_softmax_loss": m["softmax"],
            "train_center_loss": m["center"],
            "train_acc": m["acc"],
            "seconds": time.perf_counter() - t0,
        }
    )
    return row


def features_of(
    model: LeNetPlusPlus, images: torch.Tensor, labels: torch.Tensor, device: torch.device
):
    """Features, labels and predicted classes of in-memory images (eval mode, batches of
    EVAL_BATCH)."""
    model.eval()
    return extract_features(
        model.embed,
        tensor_batches(images, labels, EVAL_BATCH),
        device,
        logits_fn=model.classifier,
        channels_last=True,
    )


def evaluate_test(
    model: LeNetPlusPlus,
    center_loss: CenterLoss,
    data: ImageSplits,
    test_images: torch.Tensor,
    device: torch.device,
):
    """Per-epoch measures on the test set (cheap: no training-set features)."""
    feats, y, pred = features_of(model, test_images, data.test_labels, device)
    spread = intra_inter_ratio(feats, y)
    metrics = {
        "test_softmax_acc": float((pred == y).float().mean()),
        "test_nearest_center_acc": nearest_center_accuracy(feats, y, center_loss.centers.detach()),
        "test_intra": spread["intra"],
        "test_inter": spread["inter"],
        "test_intra_inter_ratio": spread["ratio"],
    }
    return metrics, feats


@dataclass
class Run:
    """What a run's epochs work on: the options, the recipe (network, center loss,
    optimizers, schedule), the data set and its training images (scaled to [-1, 1], the
    first --limit-train of them) and test images, the device, where the run stands, the
    method's name for the plots and the log, and the output folder."""

    opts: MnistOptions
    recipe: Recipe
    data: ImageSplits
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    device: torch.device
    progress: loop.Progress
    tag: str
    out: Path


def run(opts: MnistOptions) -> Dict[str, Any]:
    """Trains, evaluates and writes everything to ``opts.out``; returns metrics.json's
    content. A fresh run refuses a non-empty ``out`` (``overwrite``: clears what a
    previous run wrote there); a failed run leaves no empty folder behind."""
    device = resolve_device(opts.device)
    opts = replace(opts, amp=resolve_amp(opts.amp, device))  # recorded as bf16 or off
    out = Path(opts.out)
    # locked for the run: a second run into ``out`` stops at once (files.locked_folder)
    with run_folder(out, OUTPUTS, opts.overwrite, opts.resume), output_folder(out / "epochs"):
        ckpt = (
            loop.load_for_resume(out / "checkpoint.pt", device, ("torch_rng",))
            if opts.resume
            else None
        )
        return _run(opts, device, ckpt)


def _run(opts: MnistOptions, device: torch.device, ckpt: Optional[Dict[str, Any]]):
    seed_everything(opts.seed)
    data = load_mnist_like(opts.dataset, opts.data, opts.download)
    out = Path(opts.out)
    train_images = to_unit_range(data.train_images)
    train_labels = data.train_labels
    if opts.limit_train is not None:
        train_images, train_labels = (
            train_images[: opts.limit_train],
            train_labels[: opts.limit_train],
        )
    test_images = to_unit_range(data.test_images)
    num_classes = len(data.class_names)

    steps = -(-len(train_images) // opts.batch_size)
    recipe = build(opts, num_classes, steps, device)
    model, center_loss = recipe.model, recipe.center_loss

    config = {k: getattr(opts, k) for k in RUN_KEYS}
    run_keys: Tuple[str, ...] = RUN_KEYS
    if opts.lr_schedule != "constant":  # the schedule depends on the total
        config["epochs"] = opts.epochs
        run_keys = RUN_KEYS + ("epochs",)
    ckpt_path = out / "checkpoint.pt"
    states = recipe.states()
    progress = loop.resume(ckpt, ckpt_path, config, run_keys, states, epochs=opts.epochs)
    if ckpt is not None:
        torch.set_rng_state(ckpt["torch_rng"])

    tag = (
        "softmax only"
        if opts.center_loss_weight == 0
        else f"softmax + {opts.center_loss_weight:g}·center loss "
        + (
            f"(α={opts.alpha:g})"
            if opts.center_update == "alpha"
            else f"(centers by SGD, lr {recipe.optimizers[1].param_groups[0]['lr']:.3g})"
        )
    )
    print(
        f"{PROG}: LeNet++ ({opts.feature_dim}-D features), {tag}, {opts.dataset} "
        f"({len(train_images)} train / {len(test_images)} test) on {device}, "
        f"{opts.epochs} epoch{'s' if opts.epochs != 1 else ''} -> {out}"
    )
    history = progress.history
    context = Run(
        opts, recipe, data, train_images, train_labels, test_images, device, progress, tag, out
    )

    def save() -> None:
        save_checkpoint(
            ckpt_path,
            loop.checkpoint_state(
                config,
                progress,
                states,
                torch_rng=torch.get_rng_state(),
                class_names=list(data.class_names),
            ),
        )
        write_json(out / "metrics.json", _metrics(opts, data, device, history, None))

    saved = epoch = progress.epoch
    try:
        for epoch in range(progress.epoch, opts.epochs):
            _epoch(context, epoch)
            save()
            saved = progress.epoch
    except (KeyboardInterrupt, RuntimeError) as e:  # RuntimeError: see is_interrupt
        if not is_interrupt(e):
            raise
        if progress.epoch > saved:  # trained but not saved: a consistent state to keep
            save()
            saved = progress.epoch
        raise loop.interrupted(epoch, saved, ckpt_path) from None

    if "test_softmax_acc" not in history[-1]:  # Ctrl-C came between training and test
        history[-1].update(evaluate_test(model, center_loss, data, test_images, device)[0])
    # Final: k-NN of the test features against the (un-augmented) training features.
    train_feats, _, _ = features_of(model, train_images, train_labels, device)
    test_feats, test_y, _ = features_of(model, test_images, data.test_labels, device)
    knn = knn_accuracy(train_feats, train_labels, test_feats, test_y, KNN_KS)
    final = {**history[-1], **{f"test_knn{k}_acc": v for k, v in knn.items()}}
    metrics = _metrics(opts, data, device, history, final)
    write_json(out / "metrics.json", metrics)
    plots.training_curves(out / "curves.png", history)
    # this run's frames only (a folder may hold older ones only when it is resumed)
    plots.make_gif(
        [out / "epochs" / f"epoch_{h['epoch']:02d}.png" for h in history], out / "features.gif"
    )
    print(
        f"final (epoch {final['epoch']}): softmax acc {final['test_softmax_acc']:.4f}, "
        + ", ".join(f"{k}-NN acc {v:.4f}" for k, v in knn.items())
        + f", nearest-center acc {final['test_nearest_center_acc']:.4f}, intra/inter ratio "
        f"{final['test_intra_inter_ratio']:.4f}; {final['train_seconds']:.0f} s training"
    )
    print(f"wrote {out}/: epochs/*.png, features.gif, curves.png, metrics.json, checkpoint.pt")
    return metrics


def _epoch(run: Run, epoch: int) -> None:
    """One epoch: train, then measure the test set and plot its features; the epoch's row
    joins the history as soon as its training is done."""
    opts, progress, data, out = run.opts, run.progress, run.data, run.out
    model, center_loss = run.recipe.model, run.recipe.center_loss
    row = {
        "epoch": epoch + 1,
        **train_epoch(run.recipe, run.train_images, run.train_labels, opts, epoch, run.device),
    }
    progress.train_seconds += row.pop("seconds")
    elapsed = progress.train_seconds
    row["train_seconds"] = round(elapsed, 1)
    progress.history.append(row)
    progress.epoch = epoch + 1
    test_metrics, test_feats = evaluate_test(model, center_loss, data, run.test_images, run.device)
    row.update(test_metrics)
    plots.feature_scatter(
        out / "epochs" / f"epoch_{epoch + 1:02d}.png",
        test_feats,
        data.test_labels,
        center_loss.centers.detach(),
        data.class_names,
        f"{opts.dataset} test, epoch {epoch + 1}: {run.tag}\n"
        f"nearest-center acc {test_metrics['test_nearest_center_acc']:.3f}"
        f", intra/inter {test_metrics['test_intra_inter_ratio']:.3f}",
    )
    tqdm.write(
        f"epoch {epoch + 1}/{opts.epochs}  loss {row['train_loss']:.4f}  "
        f"train acc {row['train_acc']:.4f}  test softmax acc "
        f"{row['test_softmax_acc']:.4f}  nearest-center {row['test_nearest_center_acc']:.4f}"
        f"  intra/inter {row['test_intra_inter_ratio']:.3f}  ({elapsed:.0f} s)"
    )


def _metrics(
    opts: MnistOptions, data: ImageSplits, device: torch.device, history, final
) -> Dict[str, Any]:
    return loop.run_record(
        opts.record(),
        environment(device),
        history,
        final,
        data={"source": data.source, "classes": list(data.class_names)},
    )
