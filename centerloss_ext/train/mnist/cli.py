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

from ..core.cli import require as _require_extras

# before the first import of an optional package: a missing one is one line, not a traceback
_require_extras("centerloss-mnist", __name__)

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ...module import CENTER_UPDATES
from ..core.cli import (
    HelpFormatter,
    alpha_value,
    device_name,
    non_negative_float,
    positive_float,
    positive_int,
    run_cli,
)
from .data import DATASETS
from .recipe import AMP_CHOICES, LR_SCHEDULES, MnistOptions
from .train import PROG, run

DEFAULTS = MnistOptions  # the defaults live in the options


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default=DEFAULTS.dataset)
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="folder with the IDX files (Fashion-MNIST default: "
        "/usr/share/datasets/fashion-mnist), or torchvision's root",
    )
    p.add_argument(
        "--download", action="store_true", help="let torchvision download the data set into --data"
    )
    p.add_argument(
        "--out",
        default=DEFAULTS.out,
        help="output folder: new or empty, unless --resume or --overwrite",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=DEFAULTS.epochs, help="passes over the training set"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="images per step"
    )
    p.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help="Adam learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=DEFAULTS.weight_decay)
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=DEFAULTS.lr_schedule,
        help="cosine: decay to 0 over --epochs (per epoch); onecycle: torch's "
        "OneCycleLR, up to --lr over the first quarter, then down (per step)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="random shifts of up to 2 pixels, and horizontal flips for "
        "Fashion-MNIST (not for digits)",
    )
    p.add_argument(
        "--batch-norm",
        action="store_true",
        help="BatchNorm after each convolution (not in the paper; make demo)",
    )
    p.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default=DEFAULTS.amp,
        help="bf16: the convolutions under bfloat16 autocast (~1.9x faster on "
        "a CPU with AVX-512 BF16; the features, classifier and center loss "
        "stay float32); auto: bf16 where the device has it natively",
    )
    p.add_argument(
        "--center-loss-weight",
        "--lambda",
        dest="center_loss_weight",
        type=non_negative_float,
        default=DEFAULTS.center_loss_weight,
        help="λ; 0 trains the softmax-only baseline (the centers are still "
        "tracked, for evaluation)",
    )
    p.add_argument(
        "--alpha",
        type=alpha_value,
        default=DEFAULTS.alpha,
        help="center learning rate α, in [0, 1]",
    )
    p.add_argument(
        "--center-update",
        choices=CENTER_UPDATES,
        default=DEFAULTS.center_update,
        help="alpha: the paper's rule; optimizer: SGD on their gradient",
    )
    p.add_argument(
        "--center-lr",
        type=positive_float,
        default=None,
        help="optimizer mode: SGD rate (default: moves an average class as far as α would)",
    )
    p.add_argument(
        "--feature-dim",
        type=positive_int,
        default=DEFAULTS.feature_dim,
        help="width of the feature layer (2 as in the paper's plots; wider ones "
        "are plotted on their first two principal components)",
    )
    p.add_argument(
        "--device", type=device_name, default=DEFAULTS.device, help="cpu, cuda, cuda:N or auto"
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="initialisation and batch order")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue from --out/checkpoint.pt up to --epochs"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a non-empty --out, deleting what a previous "
        "run wrote there (and nothing else)",
    )
    p.add_argument(
        "--limit-train",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on the first N training images only (quick trials)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)  # each value is checked by its own type


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    command = PROG if Path(sys.argv[0]).name == PROG else "python -m centerloss_ext.train.mnist"
    return run_cli(PROG, lambda: run(MnistOptions(**vars(args))), argv, command)
