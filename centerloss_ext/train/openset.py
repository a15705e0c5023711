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

from .extras import require as _require_extras

# before the first import of an optional package: a missing one is one line, not a traceback
_require_extras("centerloss-openset", __name__)

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .._machine import environment
from . import openset_eval as oe
from . import plots
from .common import (HelpFormatter, TrainingError, alpha_value, check_output_folder,
                     device_name, non_negative_float, output_folder, positive_float,
                     positive_int, resolve_device, run_cli, write_json)
from .idx import DATASETS, DIGITS, FASHION_CLASSES, load_mnist_like, to_unit_range
from .mnist import MnistOptions
from .mnist_recipe import AMP_CHOICES, LR_SCHEDULES, resolve_amp

PROG = "centerloss-openset"
OUTPUTS = ("metrics.json", "roc.png", "*.tmp")     # what --overwrite deletes, nothing else
METHODS = ("softmax_only", "center_loss")
DEFAULT_SPLITS, DEFAULT_UNSEEN = 3, 4
O = MnistOptions


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="folder with the IDX files (Fashion-MNIST default: "
                        "/usr/share/datasets/fashion-mnist), or torchvision's root")
    p.add_argument("--out", default="runs/openset",
                   help="output folder: new or empty, unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run's metrics.json and roc.png in --out")
    p.add_argument("--splits", type=positive_int, default=None,
                   help=f"class splits (default {DEFAULT_SPLITS}); split k holds out "
                        "windows of U classes of a seeded permutation (docs/openset.md)")
    p.add_argument("--unseen-classes", type=positive_int, default=None, metavar="U",
                   help=f"classes held out per split (default {DEFAULT_UNSEEN})")
    p.add_argument("--unseen", action="append", default=None, metavar="LIST",
                   help="an explicit split instead: held-out class numbers or names, comma-"
                        "separated (6,7,8,9 or Sandal,Bag); repeat for more splits")
    p.add_argument("--center-loss-weight", "--lambda", dest="center_loss_weight",
                   type=positive_float, default=O.center_loss_weight,
                   help="λ of the center-loss method (the other one trains with λ = 0)")
    p.add_argument("--alpha", type=alpha_value, default=O.alpha,
                   help="center learning rate α, in [0, 1]")
    p.add_argument("--feature-dim", type=positive_int, default=128,
                   help="width of LeNet++'s feature layer")
    p.add_argument("--epochs", type=positive_int, default=3, help="passes over the seen "
                   "classes' training images, per split and method")
    p.add_argument("--batch-size", type=positive_int, default=O.batch_size)
    p.add_argument("--lr", type=positive_float, default=O.lr, help="Adam learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=O.weight_decay)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=O.lr_schedule,
                   help="as centerloss-mnist's")
    p.add_argument("--augment", action="store_true",
                   help="random shifts (and flips for Fashion-MNIST), as centerloss-mnist's")
    p.add_argument("--batch-norm", action="store_true",
                   help="BatchNorm after each convolution, as centerloss-mnist's")
    p.add_argument("--amp", choices=AMP_CHOICES, default=O.amp,
                   help="bf16: the convolutions in bfloat16, as centerloss-mnist's")
    p.add_argument("--max-pairs", type=positive_int, default=2_000_000,
                   help="verification pairs: all of them up to this many, else a seeded "
                        "sample of this many, half same-class")
    p.add_argument("--gallery-per-class", type=positive_int, default=100,
                   help="identification gallery: the first N training images of each "
                        "held-out class")
    p.add_argument("--limit-train", type=positive_int, default=None, metavar="N",
                   help="train on the first N seen-class training images only (quick trials)")
    p.add_argument("--device", type=device_name, default="cpu",
                   help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0,
                   help="initialisation and batch order (the same for both methods)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def resolve_splits(options: Dict[str, Any], class_names: Sequence[str]) -> List[Dict[str, Any]]:
    """[{"seed": k or None, "unseen": [...]}] from --unseen, or from --splits/--unseen-classes."""
    if options["unseen"]:
        if options["splits"] is not None or options["unseen_classes"] is not None:
            raise TrainingError("give either --unseen (explicit splits) or --splits/"
                                "--unseen-classes (seeded ones), not both")
        chosen = [oe.parse_unseen(text, class_names) for text in options["unseen"]]
        for k, held in enumerate(chosen):
            if held in chosen[:k]:
                raise TrainingError(f"--unseen {options['unseen'][k]}: the same split as an "
                                    "earlier --unseen (splits must differ)")
        return [{"seed": None, "unseen": held} for held in chosen]
    return [{"seed": seed, "unseen": held} for seed, held in oe.choose_splits(
        len(class_names), options["unseen_classes"] or DEFAULT_UNSEEN,
        options["splits"] or DEFAULT_SPLITS)]


def _train_options(options: Dict[str, Any], weight: float) -> MnistOptions:
    keys = ("dataset", "epochs", "batch_size", "lr", "weight_decay", "lr_schedule", "augment",
            "batch_norm", "amp", "alpha", "feature_dim", "device", "seed", "no_progress")
    return MnistOptions(**{k: options[k] for k in keys}, center_loss_weight=weight,
                        out=options["out"])


def run(options: Dict[str, Any]) -> Dict[str, Any]:
    """The whole protocol; ``options``: the command line's values (parse_args' names).
    Returns metrics.json's content."""
    class_names = FASHION_CLASSES if options["dataset"] == "fashion-mnist" else DIGITS
    splits = resolve_splits(options, class_names)           # bad splits fail before data
    device = resolve_device(options["device"])
    options = {**options, "amp": resolve_amp(options["amp"], device)}   # bf16 or off
    out = Path(options["out"])
    check_output_folder(out, OUTPUTS, options["overwrite"])
    with output_folder(out):
        return _run(options, splits, device, out)


def _run(options: Dict[str, Any], splits: List[Dict[str, Any]], device: torch.device,
         out: Path) -> Dict[str, Any]:
    data = load_mnist_like(options["dataset"], options["data"])
    names = list(data.class_names)
    train_images, test_images = to_unit_range(data.train_images), to_unit_range(data.test_images)
    weights = {"softmax_only": 0.0, "center_loss": options["center_loss_weight"]}
    tags = {"softmax_only": "softmax only",
            "center_loss": f"softmax + {options['center_loss_weight']:g}·center loss "
                           f"(α={options['alpha']:g})"}
    print(f"{PROG}: {len(splits)} split(s) of {options['dataset']} ({data.source}), LeNet++ "
          f"({options['feature_dim']}-D), {options['epochs']} epoch(s) per split and method, "
          f"on {device} -> {out}")
    record: Dict[str, Any] = {"options": dict(options), "environment": environment(device),
                              "data": {"source": data.source, "classes": names},
                              "methods": {m: {"center_loss_weight": weights[m],
                                              "alpha": options["alpha"]} for m in METHODS},
                              "complete": False, "splits": []}
    panels = []
    for k, split in enumerate(splits):
        held = split["unseen"]
        sd = oe.split_data(train_images, data.train_labels, test_images, data.test_labels,
                           len(names), held, options["limit_train"],
                           options["gallery_per_class"])
        entry = {"seed": split["seed"], "unseen": held, "seen": sd.seen,
                 "unseen_names": [names[c] for c in held],
                 "seen_names": [names[c] for c in sd.seen],
                 "train_images": len(sd.train_images), "methods": {}}
        print(f"split {k + 1}/{len(splits)}: unseen {', '.join(entry['unseen_names'])}; "
              f"seen {', '.join(entry['seen_names'])} ({len(sd.train_images)} training "
              f"images, {len(sd.probe_images)} unseen test images)")
        curves = {}
        for m in METHODS:
            recipe, stats, seconds = oe.train(_train_options(options, weights[m]), sd, device)
            metrics, roc = oe.evaluate(recipe, sd, device, options["max_pairs"],
                                       options["seed"])
            metrics.update({"train_seconds": round(seconds, 1), **stats})
            entry["methods"][m] = metrics
            curves[tags[m]] = (roc["fpr"], roc["tpr"])
            print(f"  {tags[m]:<34} " + _line(metrics))
        record["splits"].append(entry)
        panels.append((f"split {k + 1}: unseen {', '.join(entry['unseen_names'])}", curves))
        write_json(out / "metrics.json", record)          # the splits so far
    record["summary"] = oe.summarize(record["splits"], METHODS)
    record["complete"] = True
    write_json(out / "metrics.json", record)
    plots.roc_comparison(out / "roc.png", panels, oe.FARS)
    print(f"\nmean ± std over {len(splits)} split(s) (unseen = held-out classes' test images)")
    print(oe.table(record["summary"], METHODS, [tags[m] for m in METHODS]))
    diffs = [d["unseen_tar@far=0.001"] for d in record["summary"]["center_minus_softmax"]]
    print("center minus softmax, unseen TAR@FAR=1e-3 per split: "
          + ", ".join("n/a" if d is None else f"{d:+.4f}" for d in diffs))
    print(f"wrote {out}/: metrics.json, roc.png")
    return record


def _line(m: Dict[str, Any]) -> str:
    def f(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.4f}"
    return (f"TAR@FAR=1e-3 {f(m['unseen_tar@far=0.001'])}, TAR@FAR=1e-2 "
            f"{f(m['unseen_tar@far=0.01'])}, AUC {f(m['unseen_roc_auc'])}, 1-NN "
            f"{f(m['unseen_1nn_acc'])}; seen: softmax {f(m['seen_softmax_acc'])}, "
            f"nearest-center {f(m['seen_nearest_center_acc'])}; {m['train_seconds']:.0f} s")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    options = vars(parse_args(argv))
    return run_cli(PROG, lambda: run(options), argv)


if __name__ == "__main__":
    main()
