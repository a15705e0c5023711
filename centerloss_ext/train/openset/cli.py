"""Open-set evaluation on Fashion-MNIST: does center loss help on classes never seen in
training? Each split holds out some classes; LeNet++ trains on the others twice, softmax
only (λ = 0) and softmax + λ·center loss, from the same seed in the same batch order, and
is judged on the held-out classes' test images only:

- verification: cosine similarity of pairs of held-out test images (all pairs, or a
  seeded half-same/half-different sample above --max-pairs): ROC AUC, TAR at FAR 1e-3
  and 1e-2;
- identification: 1-NN of each held-out test image against a gallery of the first
  --gallery-per-class training images of each held-out class (L2-normalised features);
- closed-set on the seen classes' test images: softmax, nearest-center accuracy and the
  intra/inter ratio (and the held-out classes' intra/inter ratio).

    python -m centerloss_ext.train.openset                          # 3 splits, 4 held out
    python -m centerloss_ext.train.openset --unseen 6,7,8,9 --unseen Sandal,Bag,Coat,Dress

Writes to --out metrics.json (options, machine, every split's measures per method, the
mean and standard deviation across splits, center-minus-softmax per split) and roc.png
(one panel per split, both methods' curves). See docs/openset.md.
"""

from __future__ import annotations

from ..core.cli import require as _require_extras

# before the first import of an optional package: a missing one is one line, not a traceback
_require_extras("centerloss-openset", __name__)

import argparse
from typing import Any, Dict, Optional, Sequence

from ..core.cli import (
    HelpFormatter,
    alpha_value,
    device_name,
    non_negative_float,
    positive_float,
    positive_int,
    run_cli,
)
from ..mnist.data import DATASETS
from ..mnist.recipe import AMP_CHOICES, LR_SCHEDULES, MnistOptions
from .protocol import DEFAULT_SPLITS, DEFAULT_UNSEEN, PROG, run

DEFAULTS = MnistOptions


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="folder with the IDX files (Fashion-MNIST default: "
        "/usr/share/datasets/fashion-mnist), or torchvision's root",
    )
    p.add_argument(
        "--out", default="runs/openset", help="output folder: new or empty, unless --overwrite"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous run's metrics.json and roc.png in --out",
    )
    p.add_argument(
        "--splits",
        type=positive_int,
        default=None,
        help=f"class splits (default {DEFAULT_SPLITS}); split k holds out "
        "windows of U classes of a seeded permutation (docs/openset.md)",
    )
    p.add_argument(
        "--unseen-classes",
        type=positive_int,
        default=None,
        metavar="U",
        help=f"classes held out per split (default {DEFAULT_UNSEEN})",
    )
    p.add_argument(
        "--unseen",
        action="append",
        default=None,
        metavar="LIST",
        help="an explicit split instead: held-out class numbers or names, comma-"
        "separated (6,7,8,9 or Sandal,Bag); repeat for more splits",
    )
    p.add_argument(
        "--center-loss-weight",
        "--lambda",
        dest="center_loss_weight",
        type=positive_float,
        default=DEFAULTS.center_loss_weight,
        help="λ of the center-loss method (the other one trains with λ = 0)",
    )
    p.add_argument(
        "--alpha",
        type=alpha_value,
        default=DEFAULTS.alpha,
        help="center learning rate α, in [0, 1]",
    )
    p.add_argument(
        "--feature-dim", type=positive_int, default=128, help="width of LeNet++'s feature layer"
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=3,
        help="passes over the seen classes' training images, per split and method",
    )
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help="Adam learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=DEFAULTS.weight_decay)
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=DEFAULTS.lr_schedule,
        help="as centerloss-mnist's",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="random shifts (and flips for Fashion-MNIST), as centerloss-mnist's",
    )
    p.add_argument(
        "--batch-norm",
        action="store_true",
        help="BatchNorm after each convolution, as centerloss-mnist's",
    )
    p.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default=DEFAULTS.amp,
        help="bf16: the convolutions in bfloat16, as centerloss-mnist's",
    )
    p.add_argument(
        "--max-pairs",
        type=positive_int,
        default=2_000_000,
        help="verification pairs: all of them up to this many, else a seeded "
        "sample of this many, half same-class",
    )
    p.add_argument(
        "--gallery-per-class",
        type=positive_int,
        default=100,
        help="identification gallery: the first N training images of each held-out class",
    )
    p.add_argument(
        "--limit-train",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on the first N seen-class training images only (quick trials)",
    )
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="initialisation and batch order (the same for both methods)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    options = vars(parse_args(argv))
    return run_cli(PROG, lambda: run(options), argv)
