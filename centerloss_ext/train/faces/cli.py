"""Face identification and verification with softmax + λ·center loss.

    centerloss-faces train    --input-dir DIR --out runs/faces     # DIR/train, DIR/val
    centerloss-faces eval     --checkpoint runs/faces/checkpoint.pt --input-dir DIR
    centerloss-faces embed    --checkpoint CKPT --images FOLDER --out gallery.npz
    centerloss-faces identify --checkpoint CKPT --gallery gallery.npz --query face.jpg
    centerloss-faces verify   --checkpoint CKPT --pairs lfw.bin --out runs/lfw
    centerloss-faces verify   --checkpoint CKPT --pairs pairs.txt --images lfw/ --out runs/lfw
    centerloss-faces split    --source ALL --out DIR     # ALL/<identity>/ -> DIR/{train,val}
    centerloss-faces clean    --checkpoint CKPT --input-dir DIR --out CLEAN  # flag, drop

DIR/train and DIR/val hold one folder per identity (torchvision's ImageFolder layout).
val/ is labelled with train/'s identity numbering; identities only in val/ are used for
verification and reported. Evaluation on val/: k-NN identification (val images against
train images), and verification on same/different-identity pairs of val/ images (cosine
similarity of L2-normalised features: ROC AUC, TAR at FAR=1e-3, best-threshold
accuracy), with a ROC plot. Two or more identities only in val/ get open-set measures of
their own (val_unseen_*: verification on their pairs alone, 1-NN against their first
images).

`verify` scores a standard verification set as the literature does: LFW's pairs.txt
(with --images, the folder of its name folders) or an insightface .bin (lfw.bin,
cfp_fp.bin, agedb_30.bin, ...), 10-fold accuracy with each fold's threshold chosen on the
other nine; `train --verify NAME=FILE` scores such sets at each evaluation. `train
--head cosface|arcface` trains with a margin head (center loss on top unless --lambda 0);
`train --init FILE` starts the backbone from an earlier run or a ResNet-18 state dict.

Run with `python -m centerloss_ext.train.faces` too. `--help` after a command lists its
options.
"""

from __future__ import annotations

from ..core.cli import require as _require_extras

# before the first import of an optional package: a missing one is one line, not a traceback
_require_extras("centerloss-faces", __name__)

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core.cli import (
    HelpFormatter,
    alpha_value,
    bounded,
    device_name,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from .clean import CleanOptions, clean
from .enroll import embed_folder, identify, print_identities
from .evaluate import EvalOptions, eval_checkpoint
from .model import DEFAULT_MARGIN, FACE_ARCHS, HEADS, PROG, Runtime
from .split import split_identity_folder
from .train import TrainOptions, train
from .verify import VerifyInputs, verify_checkpoint

T, R, E = TrainOptions, Runtime, EvalOptions  # the defaults live in the jobs' options


def _common_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_name, default=R.device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--batch-size", type=positive_int, default=R.batch_size, help="images per step")
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=R.workers,
        help="data-loading processes (0: load in the main process)",
    )
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default=R.amp,
        help="mixed precision: auto = bf16 (fp16 on GPUs without bf16) on CUDA, off on the CPU",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gallery-per-class",
        type=non_negative_int,
        default=E.gallery_per_class,
        metavar="N",
        help="k-NN gallery: up to N train/ images per identity (0: all)",
    )
    p.add_argument(
        "--max-pairs",
        type=positive_int,
        default=E.max_pairs,
        help="verification: every val/ pair up to this many, else a sample",
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    t = command("train", "train on DIR/train, evaluate on DIR/val")
    t.add_argument("--input-dir", required=True, help="folder with train/ and val/")
    t.add_argument(
        "--out", default=T.out, help="output folder: new or empty, unless --resume or --overwrite"
    )
    t.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="checked against the identities in train/ (inferred when absent)",
    )
    t.add_argument(
        "--arch",
        choices=FACE_ARCHS,
        default=T.arch,
        help="resnet18: torchvision's ResNet-18 with a face-sized stem "
        "(default); compact: a small 8-layer CNN for CPUs and small data",
    )
    t.add_argument(
        "--feature-dim", type=positive_int, default=T.feature_dim, help="width of the embedding"
    )
    t.add_argument(
        "--image-size",
        type=bounded(int, 16),
        default=T.image_size,
        help="images are resized to this square size (at least 16)",
    )
    t.add_argument(
        "--dropout",
        type=bounded(float, 0, 1, high_open=True),
        default=T.dropout,
        help="before the embedding layer",
    )
    t.add_argument(
        "--head",
        choices=HEADS,
        default=T.head,
        help="softmax: a linear classifier (the paper's); cosface / arcface: the scaled "
        "cosine with an additive cosine / angular margin for the true class",
    )
    t.add_argument(
        "--margin",
        type=non_negative_float,
        default=None,
        help=f"the margin head's m (default: cosface {DEFAULT_MARGIN['cosface']}, "
        f"arcface {DEFAULT_MARGIN['arcface']})",
    )
    t.add_argument(
        "--scale", type=positive_float, default=T.scale, help="the margin head's scale s"
    )
    t.add_argument(
        "--init",
        default=None,
        metavar="FILE",
        help="start the backbone from an earlier run's checkpoint.pt (any identities; same "
        "--arch, --feature-dim, --image-size) or a torchvision ResNet-18 state dict "
        "(--arch resnet18: its layers, not its 7x7 stem); head and centers start new",
    )
    t.add_argument(
        "--verify",
        action="append",
        default=[],
        metavar="NAME=FILE[:IMAGES]",
        help="a verification set scored at each evaluation (10-fold accuracy, TAR@FAR in "
        "metrics.json and curves.png): an insightface .bin, or a pairs.txt and the folder "
        "of its images after a colon; repeatable",
    )
    t.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="no random crop/flip/colour jitter",
    )
    t.add_argument("--epochs", type=positive_int, default=T.epochs, help="passes over train/")
    t.add_argument("--optimizer", choices=("sgd", "adamw"), default=T.optimizer)
    t.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="peak learning rate (default: 0.1 for sgd, 1e-3 for adamw)",
    )
    t.add_argument(
        "--momentum", type=bounded(float, 0, 1, high_open=True), default=T.momentum, help="sgd only"
    )
    t.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=None,
        help="default: 5e-4 for sgd, 0.05 for adamw",
    )
    t.add_argument(
        "--scheduler",
        choices=("cosine", "step"),
        default=T.scheduler,
        help="after warm-up: cosine decay to 0, or ×0.1 at each --milestones epoch",
    )
    t.add_argument(
        "--milestones",
        type=positive_int,
        nargs="*",
        default=None,
        help="step scheduler epochs (default: 50%% and 75%% of --epochs)",
    )
    t.add_argument(
        "--warmup-epochs",
        type=non_negative_float,
        default=T.warmup_epochs,
        help="linear learning-rate warm-up from 0",
    )
    t.add_argument(
        "--clip-grad-norm",
        type=non_negative_float,
        default=T.clip_grad_norm,
        help="clip the gradients' global norm (0: off)",
    )
    t.add_argument(
        "--center-loss-weight",
        "--lambda",
        dest="center_loss_weight",
        type=non_negative_float,
        default=T.center_loss_weight,
        help="λ (caffe-face used 0.008)",
    )
    t.add_argument(
        "--alpha", type=alpha_value, default=T.alpha, help="center learning rate α, in [0, 1]"
    )
    t.add_argument(
        "--eval-every",
        type=positive_int,
        default=T.eval_every,
        metavar="N",
        help="evaluate on val/ every N epochs and after the last",
    )
    t.add_argument("--seed", type=int, default=T.seed, help="initialisation, order, augmentation")
    t.add_argument(
        "--dist-timeout",
        type=positive_float,
        default=T.dist_timeout,
        metavar="SECONDS",
        help="under torchrun: a rank that gets no answer from another for this long "
        "(a hung or stopped rank, a lost node) stops, naming it; the last epoch's "
        "checkpoint stays",
    )
    t.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=T.max_image_pixels,
        metavar="N",
        help="refuse larger training images (decompression bombs) in one line; PIL "
        "itself refuses more than twice its default",
    )
    again = t.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue from --out/checkpoint.pt up to --epochs"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a non-empty --out, deleting what a previous "
        "run wrote there (and nothing else)",
    )
    _common_runtime(t)
    _eval_options(t)

    e = command("eval", "evaluate a checkpoint on DIR/val (gallery: DIR/train)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--input-dir", required=True)
    e.add_argument(
        "--out",
        default=None,
        help="where to write eval_metrics.json and roc.png (default: the checkpoint's folder)",
    )
    e.add_argument("--seed", type=int, default=0, help="for sampling verification pairs")
    _common_runtime(e)
    _eval_options(e)

    m = command("embed", "write the L2-normalised features of a folder of images")
    m.add_argument("--checkpoint", required=True)
    m.add_argument(
        "--images",
        required=True,
        help="folder of images; an image in FOLDER/<name>/ is labelled <name>",
    )
    m.add_argument("--out", required=True, help="output file: .npz or .pt")
    _common_runtime(m)

    q = command("identify", "the nearest enrolled identities of query images")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--gallery", required=True, help="features written by `embed` (labelled)")
    q.add_argument("--query", required=True, nargs="+", help="image file(s) or folder(s)")
    q.add_argument("--top-k", type=positive_int, default=5, help="identities to list per query")
    unknown = q.add_mutually_exclusive_group()
    unknown.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="below this cosine similarity the answer is 'unknown'",
    )
    unknown.add_argument(
        "--far",
        type=bounded(float, 0, 1, low_open=True, high_open=True),
        default=None,
        metavar="RATE",
        help="answer 'unknown' below the threshold whose false-accept rate "
        "on the gallery (its images against the other identities) is "
        "at most RATE, e.g. 1e-3; the threshold is printed",
    )
    q.add_argument("--json", action="store_true", help="print the results as JSON")
    _common_runtime(q)

    v = command("verify", "10-fold verification on a pairs.txt or an insightface .bin")
    v.add_argument("--checkpoint", required=True)
    v.add_argument(
        "--pairs",
        required=True,
        metavar="FILE",
        help="LFW's pairs.txt (with --images) or a .bin (lfw.bin, cfp_fp.bin, agedb_30.bin)",
    )
    v.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="a pairs.txt's images: DIR/<name>/<name>_<i:04d>.jpg (or .jpeg, .png)",
    )
    v.add_argument("--out", required=True, help="where scores.csv, metrics.json, roc.png go")
    v.add_argument(
        "--flip",
        action="store_true",
        help="add the embedding of the horizontally flipped image before normalising",
    )
    _common_runtime(v)

    s = command("split", "split one folder per identity into train/ and val/ (by image)")
    s.add_argument("--source", required=True, help="folder with one subfolder per identity")
    s.add_argument("--out", required=True, help="where train/ and val/ are made")
    s.add_argument(
        "--val-fraction",
        type=bounded(float, 0, 1, high_open=True),
        default=0.1,
        help="share of each identity's images for val/ (at least one, never its last)",
    )
    s.add_argument(
        "--unseen-identities",
        type=non_negative_int,
        default=0,
        help="identities put in val/ whole, never trained on",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--copy", action="store_true", help="copy the images (default: symlinks)")
    s.add_argument(
        "--strict",
        action="store_true",
        help="stop at an image that does not decode (default: leave it out, list it in "
        "OUT/split_report.json)",
    )

    c = command("clean", "flag DIR/train images far from their identity's center; write the rest")
    c.add_argument("--checkpoint", required=True, help="a `train` checkpoint.pt trained on DIR")
    c.add_argument("--input-dir", required=True, help="folder with train/ and val/ (never changed)")
    c.add_argument(
        "--out",
        required=True,
        help="new or empty folder: report.csv, summary.json, angles.png, train/ (kept "
        "images), val/; a ready --input-dir",
    )
    c.add_argument(
        "--threshold-deg",
        type=bounded(float, 0, 180),
        default=None,
        help="flag images more than this angle from their identity's center (default: "
        "Otsu's cut of the angles' histogram)",
    )
    c.add_argument(
        "--centers",
        choices=("robust", "trained"),
        default="robust",
        help="robust: trimmed means of each identity's embeddings; trained: the checkpoint's",
    )
    c.add_argument("--copy", action="store_true", help="copy the kept images (default: symlinks)")
    c.add_argument("--strict", action="store_true", help="stop at an image that does not decode")
    _common_runtime(c)

    # each value is checked by its own type: a bad one is refused under the command's usage
    return p.parse_args(argv)


def _runtime(args: argparse.Namespace) -> Runtime:
    return Runtime(args.device, args.batch_size, args.workers, args.amp)


def run(args: argparse.Namespace) -> Any:
    """Runs the parsed command: the only place that turns the command line into the jobs'
    parameters."""
    if args.command == "train":
        return train(TrainOptions(**{k: v for k, v in vars(args).items() if k != "command"}))
    if args.command == "eval":
        return eval_checkpoint(
            args.checkpoint,
            args.input_dir,
            args.out,
            _runtime(args),
            EvalOptions(args.gallery_per_class, args.max_pairs, args.seed),
        )
    if args.command == "verify":
        return verify_checkpoint(
            VerifyInputs(args.checkpoint, args.pairs, args.images, args.flip),
            args.out,
            _runtime(args),
        )
    if args.command == "embed":
        return embed_folder(args.checkpoint, args.images, args.out, _runtime(args))
    if args.command == "identify":
        results = identify(
            args.checkpoint,
            args.gallery,
            args.query,
            args.top_k,
            args.threshold,
            _runtime(args),
            far=args.far,
        )
        print_identities(results, args.json)
        return results
    if args.command == "clean":
        return clean(
            CleanOptions(
                args.checkpoint,
                args.input_dir,
                args.out,
                args.threshold_deg,
                args.centers,
                args.copy,
                args.strict,
            ),
            _runtime(args),
        )
    counts = split_identity_folder(
        args.source,
        args.out,
        args.val_fraction,
        args.unseen_identities,
        args.seed,
        args.copy,
        args.strict,
    )
    print(
        f"wrote {args.out}/train ({counts['train_images']} images) and {args.out}/val "
        f"({counts['val_images']} images, {counts['unseen_identities']} identities unseen "
        "in train/)"
    )
    if counts["unreadable"]:
        print(
            f"left out {counts['unreadable']} image(s) that do not decode: listed in "
            f"{args.out}/split_report.json"
        )
    return counts


def main(argv: Optional[Sequence[str]] = None) -> Any:
    args = parse_args(argv)
    return run_cli(PROG, lambda: run(args), argv, command=_COMMAND)


# how the resume hint after Ctrl-C spells the command: the console script when run as one
_COMMAND = PROG if Path(sys.argv[0]).name == PROG else "python -m centerloss_ext.train.faces"
