"""The open-set protocol of centerloss-openset (the command line is ``cli``): class
splits, training LeNet++ on the seen classes with centerloss-mnist's training step,
measuring the features of the classes it never saw with the measures the faces pipeline
uses, the summary across splits, and the run that writes metrics.json and roc.png.

A split holds out ``U`` of the ``C`` classes. The network trains on the other classes'
training images (labels remapped to 0..S-1); it is judged on the held-out classes' test
images: verification (cosine similarity of pairs: ROC AUC, TAR at FAR 1e-3 and 1e-2) and
identification (1-NN of each test image against a gallery of the held-out classes'
training images). Closed-set measures on the seen classes' test images come along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..._machine import environment
from ..core import plots
from ..core.errors import TrainingError
from ..core.files import run_folder, write_json
from ..core.metrics import (
    class_means,
    intra_inter_ratio,
    knn_accuracy,
    l2_normalize,
    nearest_center_accuracy,
    pair_similarities,
    same_nearest_share,
    spread_in_span,
    verification_metrics,
    verification_pairs,
)
from ..core.runtime import resolve_device, seed_everything
from ..mnist import train as mnist_train
from ..mnist.data import DIGITS, FASHION_CLASSES, load_mnist_like, to_unit_range
from ..mnist.recipe import MnistOptions, build, resolve_amp

PROG = "centerloss-openset"
OUTPUTS = ("metrics.json", "roc.png", "*.tmp")  # what --overwrite deletes, nothing else
METHODS = ("softmax_only", "center_loss")
DEFAULT_SPLITS, DEFAULT_UNSEEN = 3, 4

FARS = (1e-3, 1e-2)
# (key, label); the summary averages these and every other number of a method's metrics
TABLE = (
    ("unseen_tar@far=0.001", "unseen TAR@FAR=1e-3"),
    ("unseen_tar@far=0.01", "unseen TAR@FAR=1e-2"),
    ("unseen_roc_auc", "unseen ROC AUC"),
    ("unseen_1nn_acc", "unseen 1-NN identification"),
    ("unseen_intra_inter_ratio", "unseen intra/inter ratio"),
    ("unseen_effective_dim", "unseen effective dimension"),
    ("unseen_variance_in_seen_span", "unseen variance in seen span"),
    ("unseen_false_accepts_same_seen_class", "FA@1e-3 on one seen class"),
    ("unseen_impostors_same_seen_class", "impostors on one seen class"),
    ("seen_softmax_acc", "seen softmax acc"),
    ("seen_nearest_center_acc", "seen nearest-center acc"),
    ("seen_intra_inter_ratio", "seen intra/inter ratio"),
    ("train_seconds", "training seconds"),
)
DIFF_KEYS = ("unseen_tar@far=0.001", "unseen_tar@far=0.01", "unseen_roc_auc", "unseen_1nn_acc")


def check_unseen(unseen: Sequence[int], num_classes: int) -> List[int]:
    """A split's held-out classes, sorted; at least 2 held out (verification needs
    different-class pairs) and at least 2 seen (a classifier needs two classes)."""
    if len(set(unseen)) != len(unseen):
        raise TrainingError(f"--unseen {','.join(map(str, unseen))}: a class is named twice")
    if len(unseen) < 2:
        raise TrainingError(
            f"{len(unseen)} unseen class(es): hold out at least 2 (the "
            "verification needs pairs of different unseen classes)"
        )
    if len(unseen) >= num_classes - 1:
        raise TrainingError(
            f"{len(unseen)} unseen classes of {num_classes}: at least 2 must "
            f"stay seen for training; hold out at most {num_classes - 2}"
        )
    return sorted(unseen)


def parse_unseen(text: str, class_names: Sequence[str]) -> List[int]:
    """``6,7,8,9`` (class numbers) or class names (``Sandal,Bag``, any case) -> numbers."""
    lower = [n.lower() for n in class_names]
    out = []
    for item in (t.strip() for t in text.split(",")):
        if item.isdigit() and int(item) < len(class_names):
            out.append(int(item))
        elif item.lower() in lower:
            out.append(lower.index(item.lower()))
        else:
            raise TrainingError(
                f"--unseen {text}: unknown class {item!r}; give class numbers "
                f"0..{len(class_names) - 1} or names ({', '.join(class_names)})"
            )
    return check_unseen(out, len(class_names))


def choose_splits(num_classes: int, unseen: int, splits: int) -> List[Tuple[int, List[int]]]:
    """(seed, held-out classes) of ``splits`` different splits. Consecutive windows of U
    classes of one seeded permutation (randperm(C, seed 0): its classes 0-3, 4-7, 8, 9
    and 0-1, ...), so every class is held out about equally often; when the windows come
    round again the next seed's permutation continues, and a repeat is skipped."""
    check_unseen(list(range(unseen)), num_classes)
    possible = math.comb(num_classes, unseen)
    if splits > possible:
        raise TrainingError(
            f"--splits {splits}: only {possible} different ways to hold out "
            f"{unseen} of {num_classes} classes"
        )
    chosen: List[Tuple[int, List[int]]] = []
    cycle = num_classes * unseen // math.gcd(num_classes, unseen)  # window starts repeat
    seed = 0
    while len(chosen) < splits:
        perm = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))
        for start in range(0, cycle, unseen):
            held = sorted(int(perm[(start + i) % num_classes]) for i in range(unseen))
            if len(chosen) < splits and all(held != c for _, c in chosen):
                chosen.append((seed, held))
        seed += 1
    return chosen


@dataclass
class SplitData:
    """One split's images: the seen classes' training images with labels 0..S-1, the seen
    classes' test images (remapped too), the unseen test images (probes, original labels)
    and the unseen classes' gallery (training images, original labels)."""

    seen: List[int]
    unseen: List[int]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    seen_test_images: torch.Tensor
    seen_test_labels: torch.Tensor
    probe_images: torch.Tensor
    probe_labels: torch.Tensor
    gallery_images: torch.Tensor
    gallery_labels: torch.Tensor


def split_data(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    unseen: Sequence[int],
    limit_train: Optional[int],
    gallery_per_class: int,
) -> SplitData:
    """``limit_train``: the first N seen-class training images only; the gallery takes
    the first ``gallery_per_class`` training images of each unseen class (file order)."""
    seen = [c for c in range(num_classes) if c not in unseen]
    remap = torch.full((num_classes,), -1, dtype=torch.long)
    remap[seen] = torch.arange(len(seen))
    is_seen_train = remap[train_labels] >= 0
    keep = is_seen_train.nonzero().squeeze(1)[:limit_train]
    is_seen_test = remap[test_labels] >= 0
    gallery = torch.cat(
        [(train_labels == c).nonzero().squeeze(1)[:gallery_per_class] for c in unseen]
    )
    return SplitData(
        seen,
        list(unseen),
        train_images[keep],
        remap[train_labels[keep]],
        test_images[is_seen_test],
        remap[test_labels[is_seen_test]],
        test_images[~is_seen_test],
        test_labels[~is_seen_test],
        train_images[gallery],
        train_labels[gallery],
    )


def train(opts: MnistOptions, data: SplitData, device: torch.device):
    """LeNet++ trained on the seen classes with mnist's training step (seeded the same way
    for every method: same initial network, same batch order); returns the recipe, the
    last epoch's training statistics and the training seconds."""
    seed_everything(opts.seed)
    steps = -(-len(data.train_images) // opts.batch_size)
    recipe = build(opts, len(data.seen), steps, device)
    stats: Dict[str, float] = {}
    seconds = 0.0
    for epoch in range(opts.epochs):
        stats = mnist_train.train_epoch(
            recipe, data.train_images, data.train_labels, opts, epoch, device
        )
        seconds += stats.pop("seconds")
    return recipe, stats, seconds


def evaluate(
    recipe, data: SplitData, device: torch.device, max_pairs: int, seed: int
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The split's measures and the unseen classes' ROC curve (fpr, tpr)."""
    model, centers = recipe.model, recipe.center_loss.centers.detach()
    seen_f, seen_y, seen_pred = mnist_train.features_of(
        model, data.seen_test_images, data.seen_test_labels, device
    )
    probe_f, probe_y, _ = mnist_train.features_of(
        model, data.probe_images, data.probe_labels, device
    )
    gal_f, gal_y, _ = mnist_train.features_of(
        model, data.gallery_images, data.gallery_labels, device
    )
    i, j = verification_pairs(probe_y, max_pairs, seed)
    scores, same = pair_similarities(probe_f, i, j), probe_y[i] == probe_y[j]
    ver = verification_metrics(scores, same, FARS)
    roc = ver.pop("roc")
    # why: do the held-out classes spread beyond the seen classes' directions, and are the
    # false accepts pairs that land on the same seen class? (docs/openset.md)
    _, seen_means = class_means(seen_f, seen_y)
    spread = spread_in_span(probe_f, seen_means)
    near = (l2_normalize(probe_f) @ l2_normalize(seen_means.float()).T).argmax(1)
    share = same_nearest_share(scores, same, near[i], near[j], FARS[0])
    knn = knn_accuracy(l2_normalize(gal_f), gal_y, l2_normalize(probe_f), probe_y, (1,))
    metrics = {f"unseen_{k}": v for k, v in ver.items()}
    metrics.update(
        {
            "unseen_1nn_acc": knn[1],
            "unseen_intra_inter_ratio": intra_inter_ratio(probe_f, probe_y)["ratio"],
            "unseen_effective_dim": spread["effective_dim"],
            "unseen_variance_in_seen_span": spread["in_span"],
            "unseen_impostors_same_seen_class": share["all"],
            "unseen_false_accepts_same_seen_class": share["false_accepts"],
            "unseen_probes": len(probe_y),
            "unseen_gallery": len(gal_y),
            "seen_softmax_acc": float((seen_pred == seen_y).float().mean()),
            "seen_nearest_center_acc": nearest_center_accuracy(seen_f, seen_y, centers),
            "seen_intra_inter_ratio": intra_inter_ratio(seen_f, seen_y)["ratio"],
        }
    )
    return metrics, roc


def _mean_std(values: List[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean and sample standard deviation (None: a split without the value, or one split
    for the deviation)."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None}
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else None}


def summarize(splits: List[Dict[str, Any]], methods: Sequence[str]) -> Dict[str, Any]:
    """Per method, the mean and deviation across splits of every number in its metrics;
    per split, center loss minus softmax-only of the open-set measures."""
    out: Dict[str, Any] = {"splits": len(splits)}
    for m in methods:
        keys = [
            k
            for k, v in splits[0]["methods"][m].items()
            if v is None or isinstance(v, (int, float))
        ]
        out[m] = {k: _mean_std([s["methods"][m][k] for s in splits]) for k in keys}
    diffs = []
    for s in splits:
        a, b = s["methods"][methods[1]], s["methods"][methods[0]]
        diffs.append({k: None if a[k] is None or b[k] is None else a[k] - b[k] for k in DIFF_KEYS})
    out["center_minus_softmax"] = diffs
    tar = [d["unseen_tar@far=0.001"] for d in diffs]
    out["center_above_softmax_tar@far=0.001_on_every_split"] = (
        None if any(t is None for t in tar) else all(t is not None and t > 0 for t in tar)
    )
    return out


def table(summary: Dict[str, Any], methods: Sequence[str], labels: Sequence[str]) -> str:
    """The summary as a text table: mean ± std per method."""

    def cell(ms: Dict[str, Optional[float]]) -> str:
        if ms["mean"] is None:
            return "n/a"
        fmt = ".1f" if abs(ms["mean"]) >= 10 else ".4f"
        return format(ms["mean"], fmt) + (
            "" if ms["std"] is None else " ± " + format(ms["std"], fmt)
        )

    rows = [("", *labels)] + [
        (label, *(cell(summary[m][key]) for m in methods))
        for key, label in TABLE
        if key in summary[methods[0]]
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join(
        "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
        for r in rows
    )


# ------------------------------------------------------------------ the run


def resolve_splits(options: Dict[str, Any], class_names: Sequence[str]) -> List[Dict[str, Any]]:
    """[{"seed": k or None, "unseen": [...]}] from --unseen, or from --splits/--unseen-classes."""
    if options["unseen"]:
        if options["splits"] is not None or options["unseen_classes"] is not None:
            raise TrainingError(
                "give either --unseen (explicit splits) or --splits/"
                "--unseen-classes (seeded ones), not both"
            )
        chosen = [parse_unseen(text, class_names) for text in options["unseen"]]
        for k, held in enumerate(chosen):
            if held in chosen[:k]:
                raise TrainingError(
                    f"--unseen {options['unseen'][k]}: the same split as an "
                    "earlier --unseen (splits must differ)"
                )
        return [{"seed": None, "unseen": held} for held in chosen]
    return [
        {"seed": seed, "unseen": held}
        for seed, held in choose_splits(
            len(class_names),
            options["unseen_classes"] or DEFAULT_UNSEEN,
            options["splits"] or DEFAULT_SPLITS,
        )
    ]


def _train_options(options: Dict[str, Any], weight: float) -> MnistOptions:
    keys = (
        "dataset",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "lr_schedule",
        "augment",
        "batch_norm",
        "amp",
        "alpha",
        "feature_dim",
        "device",
        "seed",
        "no_progress",
    )
    return MnistOptions(
        **{k: options[k] for k in keys}, center_loss_weight=weight, out=options["out"]
    )


def run(options: Dict[str, Any]) -> Dict[str, Any]:
    """The whole protocol; ``options``: the command line's values (parse_args' names).
    Returns metrics.json's content."""
    class_names = FASHION_CLASSES if options["dataset"] == "fashion-mnist" else DIGITS
    splits = resolve_splits(options, class_names)  # bad splits fail before data
    device = resolve_device(options["device"])
    options = {**options, "amp": resolve_amp(options["amp"], device)}  # bf16 or off
    out = Path(options["out"])
    with run_folder(out, OUTPUTS, options["overwrite"], False):  # locked for the run
        return _run(options, splits, device, out)


def _run(
    options: Dict[str, Any], splits: List[Dict[str, Any]], device: torch.device, out: Path
) -> Dict[str, Any]:
    data = load_mnist_like(options["dataset"], options["data"])
    names = list(data.class_names)
    train_images, test_images = to_unit_range(data.train_images), to_unit_range(data.test_images)
    weights = {"softmax_only": 0.0, "center_loss": options["center_loss_weight"]}
    tags = {
        "softmax_only": "softmax only",
        "center_loss": f"softmax + {options['center_loss_weight']:g}·center loss "
        f"(α={options['alpha']:g})",
    }
    print(
        f"{PROG}: {len(splits)} split(s) of {options['dataset']} ({data.source}), LeNet++ "
        f"({options['feature_dim']}-D), {options['epochs']} epoch(s) per split and method, "
        f"on {device} -> {out}"
    )
    record: Dict[str, Any] = {
        "options": dict(options),
        "environment": environment(device),
        "data": {"source": data.source, "classes": names},
        "methods": {
            m: {"center_loss_weight": weights[m], "alpha": options["alpha"]} for m in METHODS
        },
        "complete": False,
        "splits": [],
    }
    panels = []
    for k, split in enumerate(splits):
        held = split["unseen"]
        sd = split_data(
            train_images,
            data.train_labels,
            test_images,
            data.test_labels,
            len(names),
            held,
            options["limit_train"],
            options["gallery_per_class"],
        )
        entry = {
            "seed": split["seed"],
            "unseen": held,
            "seen": sd.seen,
            "unseen_names": [names[c] for c in held],
            "seen_names": [names[c] for c in sd.seen],
            "train_images": len(sd.train_images),
            "methods": {},
        }
        print(
            f"split {k + 1}/{len(splits)}: unseen {', '.join(entry['unseen_names'])}; "
            f"seen {', '.join(entry['seen_names'])} ({len(sd.train_images)} training "
            f"images, {len(sd.probe_images)} unseen test images)"
        )
        curves = {}
        for m in METHODS:
            recipe, stats, seconds = train(_train_options(options, weights[m]), sd, device)
            metrics, roc = evaluate(recipe, sd, device, options["max_pairs"], options["seed"])
            metrics.update({"train_seconds": round(seconds, 1), **stats})
            entry["methods"][m] = metrics
            curves[tags[m]] = (roc["fpr"], roc["tpr"])
            print(f"  {tags[m]:<34} " + _line(metrics))
        record["splits"].append(entry)
        panels.append((f"split {k + 1}: unseen {', '.join(entry['unseen_names'])}", curves))
        write_json(out / "metrics.json", record)  # the splits so far
    record["summary"] = summarize(record["splits"], METHODS)
    record["complete"] = True
    write_json(out / "metrics.json", record)
    plots.roc_comparison(out / "roc.png", panels, FARS)
    print(f"\nmean ± std over {len(splits)} split(s) (unseen = held-out classes' test images)")
    print(table(record["summary"], METHODS, [tags[m] for m in METHODS]))
    diffs = [d["unseen_tar@far=0.001"] for d in record["summary"]["center_minus_softmax"]]
    print(
        "center minus softmax, unseen TAR@FAR=1e-3 per split: "
        + ", ".join("n/a" if d is None else f"{d:+.4f}" for d in diffs)
    )
    print(f"wrote {out}/: metrics.json, roc.png")
    return record


def _line(m: Dict[str, Any]) -> str:
    def f(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    return (
        f"TAR@FAR=1e-3 {f(m['unseen_tar@far=0.001'])}, TAR@FAR=1e-2 "
        f"{f(m['unseen_tar@far=0.01'])}, AUC {f(m['unseen_roc_auc'])}, 1-NN "
        f"{f(m['unseen_1nn_acc'])}; seen: softmax {f(m['seen_softmax_acc'])}, "
        f"nearest-center {f(m['seen_nearest_center_acc'])}; {m['train_seconds']:.0f} s"
    )
