"""LeNet++ with softmax + λ·center loss on Fashion-MNIST or MNIST (the paper's Figure 3).

    python -m centerloss_ext.train.mnist --out runs/demo            # Fashion-MNIST, 2-D
    python -m centerloss_ext.train.mnist --center-loss-weight 0     # softmax-only twin
    python -m centerloss_ext.train.mnist --feature-dim 128 --epochs 12

Writes to --out: epochs/epoch_NN.png (the test set's features with the centers marked,
one per epoch), features.gif (all of them), curves.png, metrics.json and checkpoint.pt
(--resume continues from it). Evaluation: softmax accuracy, k-NN accuracy (test features
against train features), nearest-center accuracy and the intra/inter-class distance
ratio of the test features.
"""
from __future__ import annotations

from .extras import require as _require_extras

# before the first import of an optional package: a missing one is one line, not a traceback
_require_extras("centerloss-mnist", __name__)

import argparse
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from tqdm import tqdm

from .. import CenterLoss
from ..module import CENTER_UPDATES
from .._machine import environment
from . import loop, mnist_train, plots
from .common import (HelpFormatter, alpha_value, check_output_folder, device_name,
                     non_negative_float, output_folder, positive_float, positive_int,
                     is_interrupt, resolve_device, run_cli, save_checkpoint, seed_everything,
                     write_json)
from .evaluate import (extract_features, intra_inter_ratio, knn_accuracy,
                       nearest_center_accuracy, tensor_batches)
from .idx import DATASETS, ImageSplits, load_mnist_like, to_unit_range
from .mnist_recipe import AMP_CHOICES, LR_SCHEDULES, build, resolve_amp
from .models import LeNetPlusPlus

PROG = "centerloss-mnist"
# options that define a run: resuming with other values would mix two runs
RUN_KEYS = ("dataset", "feature_dim", "center_loss_weight", "alpha", "lr", "weight_decay",
            "batch_size", "seed", "lr_schedule", "augment", "batch_norm", "center_update",
            "center_lr", "amp")
# what a run writes into --out: --overwrite deletes these, and nothing else
OUTPUTS = ("checkpoint.pt", "metrics.json", "curves.png", "features.gif", "epochs/epoch_*.png",
           "*.tmp")
KNN_KS = (1, 5)
EVAL_BATCH = 1000


@dataclass
class MnistOptions:
    """Everything a run takes (the command line's options, same names)."""
    dataset: str = "fashion-mnist"
    data: Optional[str] = None
    download: bool = False
    out: str = "runs/mnist"
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    augment: bool = False
    batch_norm: bool = False
    amp: str = "off"
    center_loss_weight: float = 0.1
    alpha: float = 0.5
    center_update: str = "alpha"
    center_lr: Optional[float] = None
    feature_dim: int = 2
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    limit_train: Optional[int] = None
    no_progress: bool = False
    log_every: int = loop.LOG_EVERY          # not a command-line option; not recorded

    def record(self) -> Dict[str, Any]:
        """The options as metrics.json records them (the command line's keys)."""
        return {k: v for k, v in asdict(self).items() if k != "log_every"}


O = MnistOptions                            # the defaults live in the options


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default=O.dataset)
    p.add_argument("--data", metavar="DIR", default=None,
                   help="folder with the IDX files (Fashion-MNIST default: "
                        "/usr/share/datasets/fashion-mnist), or torchvision's root")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download the data set into --data")
    p.add_argument("--out", default=O.out,
                   help="output folder: new or empty, unless --resume or --overwrite")
    p.add_argument("--epochs", type=positive_int, default=O.epochs,
                   help="passes over the training set")
    p.add_argument("--batch-size", type=positive_int, default=O.batch_size,
                   help="images per step")
    p.add_argument("--lr", type=positive_float, default=O.lr, help="Adam learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=O.weight_decay)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=O.lr_schedule,
                   help="cosine: decay to 0 over --epochs (per epoch); onecycle: torch's "
                        "OneCycleLR, up to --lr over the first quarter, then down (per step)")
    p.add_argument("--augment", action="store_true",
                   help="random shifts of up to 2 pixels, and horizontal flips for "
                        "Fashion-MNIST (not for digits)")
    p.add_argument("--batch-norm", action="store_true",
                   help="BatchNorm after each convolution (not in the paper; make demo)")
    p.add_argument("--amp", choices=AMP_CHOICES, default=O.amp,
                   help="bf16: the convolutions under bfloat16 autocast (~1.9x faster on "
                        "a CPU with AVX-512 BF16; the features, classifier and center loss "
                        "stay float32); auto: bf16 where the device has it natively")
    p.add_argument("--center-loss-weight", "--lambda", dest="center_loss_weight",
                   type=non_negative_float,
                   default=O.center_loss_weight,
                   help="λ; 0 trains the softmax-only baseline (the centers are still "
                        "tracked, for evaluation)")
    p.add_argument("--alpha", type=alpha_value, default=O.alpha,
                   help="center learning rate α, in [0, 1]")
    p.add_argument("--center-update", choices=CENTER_UPDATES, default=O.center_update,
                   help="alpha: the paper's rule; optimizer: SGD on their gradient")
    p.add_argument("--center-lr", type=positive_float, default=None, help="optimizer "
                   "mode: SGD rate (default: moves an average class as far as α would)")
    p.add_argument("--feature-dim", type=positive_int, default=O.feature_dim,
                   help="width of the feature layer (2 as in the paper's plots; wider ones "
                        "are plotted on their first two principal components)")
    p.add_argument("--device", type=device_name, default=O.device,
                   help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=O.seed, help="initialisation and batch order")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from --out/checkpoint.pt up to --epochs")
    again.add_argument("--overwrite", action="store_true",
                       help="start afresh in a non-empty --out, deleting what a previous "
                            "run wrote there (and nothing else)")
    p.add_argument("--limit-train", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images only (quick trials)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)      # each value is checked by its own type


def features_of(model: LeNetPlusPlus, images: torch.Tensor, labels: torch.Tensor,
                device: torch.device):
    model.eval()
    return extract_features(model.embed, tensor_batches(images, labels, EVAL_BATCH), device,
                            logits_fn=model.classifier, channels_last=True)


def evaluate_test(model: LeNetPlusPlus, center_loss: CenterLoss, data: ImageSplits,
                  test_images: torch.Tensor, device: torch.device):
    """Per-epoch measures on the test set (cheap: no training-set features)."""
    feats, y, pred = features_of(model, test_images, data.test_labels, device)
    spread = intra_inter_ratio(feats, y)
    metrics = {
        "test_softmax_acc": float((pred == y).float().mean()),
        "test_nearest_center_acc": nearest_center_accuracy(feats, y, center_loss.centers.detach()),
        "test_intra": spread["intra"], "test_inter": spread["inter"],
        "test_intra_inter_ratio": spread["ratio"],
    }
    return metrics, feats


def run(opts: MnistOptions) -> Dict[str, Any]:
    """Trains, evaluates and writes everything to ``opts.out``; returns metrics.json's
    content. A fresh run refuses a non-empty ``out`` (``overwrite``: clears what a
    previous run wrote there); a failed run leaves no empty folder behind."""
    device = resolve_device(opts.device)
    opts = replace(opts, amp=resolve_amp(opts.amp, device))     # recorded as bf16 or off
    out = Path(opts.out)
    ckpt = loop.load_for_resume(out / "checkpoint.pt", device, ("torch_rng",)) \
        if opts.resume else None
    if ckpt is None:
        check_output_folder(out, OUTPUTS, opts.overwrite)
    with output_folder(out / "epochs"):
        return _run(opts, device, ckpt)


def _run(opts: MnistOptions, device: torch.device, ckpt: Optional[Dict[str, Any]]):
    seed_everything(opts.seed)
    data = load_mnist_like(opts.dataset, opts.data, opts.download)
    out = Path(opts.out)
    train_images = to_unit_range(data.train_images)
    train_labels = data.train_labels
    if opts.limit_train is not None:
        train_images, train_labels = train_images[:opts.limit_train], train_labels[:opts.limit_train]
    test_images = to_unit_range(data.test_images)
    num_classes = len(data.class_names)

    steps = -(-len(train_images) // opts.batch_size)
    recipe = build(opts, num_classes, steps, device)
    model, center_loss = recipe.model, recipe.center_loss

    config = {k: getattr(opts, k) for k in RUN_KEYS}
    run_keys = RUN_KEYS
    if opts.lr_schedule != "constant":         # the schedule depends on the total
        config["epochs"] = opts.epochs
        run_keys = RUN_KEYS + ("epochs",)
    ckpt_path = out / "checkpoint.pt"
    states = recipe.states()
    progress = loop.resume(ckpt, ckpt_path, config, run_keys, states, epochs=opts.epochs)
    if ckpt is not None:
        torch.set_rng_state(ckpt["torch_rng"])

    tag = "softmax only" if opts.center_loss_weight == 0 else \
        f"softmax + {opts.center_loss_weight:g}·center loss " + (
            f"(α={opts.alpha:g})" if opts.center_update == "alpha" else
            f"(centers by SGD, lr {recipe.optimizers[1].param_groups[0]['lr']:.3g})")
    print(f"{PROG}: LeNet++ ({opts.feature_dim}-D features), {tag}, {opts.dataset} "
          f"({len(train_images)} train / {len(test_images)} test) on {device}, "
          f"{opts.epochs} epoch{'s' if opts.epochs != 1 else ''} -> {out}")
    history = progress.history

    def save() -> None:
        save_checkpoint(ckpt_path, loop.checkpoint_state(
            config, progress, states, torch_rng=torch.get_rng_state(),
            class_names=list(data.class_names)))
        write_json(out / "metrics.json", _metrics(opts, data, device, history, None))

    saved = epoch = progress.epoch
    try:
        for epoch in range(progress.epoch, opts.epochs):
            _epoch(opts, epoch, recipe, train_images, train_labels, test_images, data,
                   device, progress, tag, out)
            save()
            saved = progress.epoch
    except (KeyboardInterrupt, RuntimeError) as e:  # RuntimeError: see is_interrupt
        if not is_interrupt(e):
            raise
        if progress.epoch > saved:      # trained but not saved: a consistent state to keep
            save()
            saved = progress.epoch
        raise loop.interrupted(epoch, saved, ckpt_path) from None

    if "test_softmax_acc" not in history[-1]:     # Ctrl-C came between training and test
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
    plots.make_gif([out / "epochs" / f"epoch_{h['epoch']:02d}.png" for h in history],
                   out / "features.gif")
    print(f"final (epoch {final['epoch']}): softmax acc {final['test_softmax_acc']:.4f}, "
          + ", ".join(f"{k}-NN acc {v:.4f}" for k, v in knn.items())
          + f", nearest-center acc {final['test_nearest_center_acc']:.4f}, intra/inter ratio "
          f"{final['test_intra_inter_ratio']:.4f}; {final['train_seconds']:.0f} s training")
    print(f"wrote {out}/: epochs/*.png, features.gif, curves.png, metrics.json, checkpoint.pt")
    return metrics


def _epoch(opts: MnistOptions, epoch: int, recipe, train_images: torch.Tensor,
           train_labels: torch.Tensor, test_images: torch.Tensor, data: ImageSplits,
           device: torch.device, progress: loop.Progress, tag: str, out: Path) -> None:
    """One epoch: train, then measure the test set and plot its features; the epoch's row
    joins the history as soon as its training is done."""
    model, center_loss = recipe.model, recipe.center_loss
    row = {"epoch": epoch + 1, **mnist_train.train_epoch(recipe, train_images, train_labels,
                                                         opts, epoch, device)}
    progress.train_seconds += row.pop("seconds")
    elapsed = progress.train_seconds
    row["train_seconds"] = round(elapsed, 1)
    progress.history.append(row)
    progress.epoch = epoch + 1
    test_metrics, test_feats = evaluate_test(model, center_loss, data, test_images, device)
    row.update(test_metrics)
    plots.feature_scatter(out / "epochs" / f"epoch_{epoch + 1:02d}.png", test_feats,
                          data.test_labels, center_loss.centers.detach(), data.class_names,
                          f"{opts.dataset} test, epoch {epoch + 1}: {tag}\n"
                          f"nearest-center acc {test_metrics['test_nearest_center_acc']:.3f}"
                          f", intra/inter {test_metrics['test_intra_inter_ratio']:.3f}")
    tqdm.write(f"epoch {epoch + 1}/{opts.epochs}  loss {row['train_loss']:.4f}  "
               f"train acc {row['train_acc']:.4f}  test softmax acc "
               f"{row['test_softmax_acc']:.4f}  nearest-center {row['test_nearest_center_acc']:.4f}"
               f"  intra/inter {row['test_intra_inter_ratio']:.3f}  ({elapsed:.0f} s)")


def _metrics(opts: MnistOptions, data: ImageSplits, device: torch.device, history,
             final) -> Dict[str, Any]:
    return loop.run_record(opts.record(), environment(device), history, final,
                           data={"source": data.source, "classes": list(data.class_names)})


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    command = PROG if Path(sys.argv[0]).name == PROG else "python -m centerloss_ext.train.mnist"
    return run_cli(PROG, lambda: run(MnistOptions(**vars(args))), argv, command)


if __name__ == "__main__":
    main()
