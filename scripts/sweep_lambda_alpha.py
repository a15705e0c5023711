"""Choosing λ and α: a grid of centerloss-mnist runs on 2-D Fashion-MNIST features, both
center-update modes, measured on the test set; writes sweep.json (one row per run, saved
after each run: --resume skips the rows already there) and heatmaps.png.

    python scripts/sweep_lambda_alpha.py --out runs/sweep          # the grid in docs/
    python scripts/sweep_lambda_alpha.py --lambdas 0.1 --alphas 0.5 --modes alpha

Each run is the centerloss-mnist training step (mnist.train.train_epoch, the recipe of
mnist.recipe.build) with the options below; optimizer mode learns the centers by SGD at
the rate that moves a class of average count as far as α would (mnist.recipe.center_lr),
so α means the same step size in both modes. A softmax-only run (λ = 0) is the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from centerloss_ext.train.core.files import write_json
from centerloss_ext.train.core.runtime import seed_everything
from centerloss_ext.train.mnist import train as mnist_train
from centerloss_ext.train.mnist.data import load_mnist_like, to_unit_range
from centerloss_ext.train.mnist.recipe import MnistOptions, build


def floats(text: str):
    return [float(v) for v in text.split(",")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: Debian's)")
    p.add_argument("--lambdas", type=floats, default=[0.01, 0.1, 1.0])
    p.add_argument("--alphas", type=floats, default=[0.1, 0.5, 0.9])
    p.add_argument("--modes", default="alpha,optimizer")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument(
        "--limit-train",
        type=int,
        default=30_000,
        help="training images per run (the first N; 0: all 60,000)",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-schedule", default="onecycle")
    p.add_argument("--no-batch-norm", action="store_true")
    p.add_argument("--feature-dim", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="keep the rows sweep.json has")
    p.add_argument("--plot-only", action="store_true", help="redraw heatmaps.png")
    return p.parse_args(argv)


def one_run(args, data, images, labels, test_images, lam, alpha, mode):
    opts = MnistOptions(
        feature_dim=args.feature_dim,
        epochs=args.epochs,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        batch_norm=not args.no_batch_norm,
        center_loss_weight=lam,
        alpha=alpha,
        center_update=mode,
        seed=args.seed,
        no_progress=True,
    )
    seed_everything(args.seed)
    device = torch.device("cpu")
    steps = -(-len(images) // opts.batch_size)
    recipe = build(opts, len(data.class_names), steps, device)
    seconds = 0.0
    for epoch in range(opts.epochs):
        train = mnist_train.train_epoch(recipe, images, labels, opts, epoch, device)
        seconds += train.pop("seconds")
    test, _ = mnist_train.evaluate_test(recipe.model, recipe.center_loss, data, test_images, device)
    return {
        "lambda": lam,
        "alpha": alpha,
        "mode": mode,
        "train_seconds": round(seconds, 1),
        "train_loss": train["train_loss"],
        **test,
    }


def heatmaps(rows, path: Path, args) -> None:
    from matplotlib.figure import Figure

    modes = [m for m in args.modes.split(",")]
    lams, alphas = (
        sorted({r["lambda"] for r in rows if r["lambda"] > 0}),
        sorted({r["alpha"] for r in rows if r["lambda"] > 0}),
    )
    base = next((r for r in rows if r["lambda"] == 0), None)
    metrics = (
        ("test_nearest_center_acc", "nearest-center accuracy", "viridis", "{:.3f}"),
        ("test_intra_inter_ratio", "intra/inter ratio (lower is tighter)", "viridis_r", "{:.3f}"),
    )
    fig = Figure(figsize=(5.2 * len(modes), 4.2 * len(metrics)), dpi=90)
    for i, (key, name, cmap, fmt) in enumerate(metrics):
        values = [r[key] for r in rows if r["lambda"] > 0]
        lo, hi = (min(values), max(values)) if values else (0, 1)
        for j, mode in enumerate(modes):
            ax = fig.add_subplot(len(metrics), len(modes), i * len(modes) + j + 1)
            grid = np.full((len(alphas), len(lams)), np.nan)
            for r in rows:
                if r["mode"] == mode and r["lambda"] > 0:
                    grid[alphas.index(r["alpha"]), lams.index(r["lambda"])] = r[key]
            im = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, origin="lower", aspect="auto")
            for (a, lam), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    r, g, b, _ = im.cmap(im.norm(v))  # dark cell: white text
                    ax.text(
                        lam,
                        a,
                        fmt.format(v),
                        ha="center",
                        va="center",
                        fontsize=9,
                        color="white" if 0.3 * r + 0.6 * g + 0.1 * b < 0.5 else "black",
                    )
            ax.set_xticks(range(len(lams)), [f"{v:g}" for v in lams])
            ax.set_yticks(range(len(alphas)), [f"{v:g}" for v in alphas])
            ax.set_xlabel("λ (center loss weight)")
            ax.set_ylabel("α" if mode == "alpha" else "α (SGD rate: mnist_recipe.center_lr)")
            ref = f"; softmax only: {fmt.format(base[key])}" if base else ""
            ax.set_title(f"{name}\n{mode} mode{ref}", fontsize=10)
            fig.colorbar(im, ax=ax)
    fig.suptitle(
        f"2-D Fashion-MNIST features, {args.limit_train or 60000} training images "
        f"x {args.epochs} epoch(s), test set",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "sweep.json"
    rows = (
        json.loads(record.read_text())["rows"]
        if (args.resume or args.plot_only) and record.is_file()
        else []
    )
    if not args.plot_only:
        data = load_mnist_like("fashion-mnist", args.data, False)
        images = to_unit_range(data.train_images)
        labels = data.train_labels
        if args.limit_train:
            images, labels = images[: args.limit_train], labels[: args.limit_train]
        test_images = to_unit_range(data.test_images)
        cells = [(0.0, 0.5, "alpha")] + [
            (lam, a, m) for m in args.modes.split(",") for a in args.alphas for lam in args.lambdas
        ]
        done = {(r["lambda"], r["alpha"], r["mode"]) for r in rows}
        for n, cell in enumerate(cells, 1):
            if cell in done:
                continue
            row = one_run(args, data, images, labels, test_images, *cell)
            rows.append(row)
            print(
                f"[{n}/{len(cells)}] λ={cell[0]:g} α={cell[1]:g} {cell[2]}: nearest-center "
                f"{row['test_nearest_center_acc']:.4f}, intra/inter "
                f"{row['test_intra_inter_ratio']:.4f}, softmax "
                f"{row['test_softmax_acc']:.4f} ({row['train_seconds']:.0f} s)",
                flush=True,
            )
            write_json(
                record,
                {
                    "options": {
                        k: v for k, v in vars(args).items() if k not in ("resume", "plot_only")
                    },
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "rows": rows,
                },
            )
    heatmaps(rows, out / "heatmaps.png", args)
    print(f"wrote {record} and {out / 'heatmaps.png'}")


if __name__ == "__main__":
    sys.exit(main())
