"""Plots, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display
and no global backend switch, so importing this never disturbs a notebook's matplotlib).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .files import atomic_write

# 10 well-separated colours, then matplotlib's tab20 for more classes
_TAB10 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _colours(n: int) -> List:
    if n <= 10:
        return list(_TAB10[:n])
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if n <= 20 else colormaps["hsv"]
    return [cmap(i / max(n - 1, 1) if n > 20 else i) for i in range(n)]


def project_2d(features: torch.Tensor, centers: Optional[torch.Tensor] = None):
    """2-D features as they are; wider ones projected on their first two principal
    components (fitted on ``features``; ``centers`` go through the same projection)."""
    f = features.float().cpu().numpy()
    c = None if centers is None else centers.float().cpu().numpy()
    if f.shape[1] == 2:
        return f, c, ("feature 1", "feature 2")
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(f)
    return (
        pca.transform(f),
        None if c is None else pca.transform(c),
        ("principal component 1", "principal component 2"),
    )


def feature_scatter(
    path: Path,
    features: torch.Tensor,
    labels: torch.Tensor,
    centers: Optional[torch.Tensor],
    class_names: Sequence[str],
    title: str,
    max_points: int = 10_000,
    seed: int = 0,
) -> Path:
    """Scatter of the features coloured by class, the centers as black-edged crosses."""
    xy, cxy, axis_names = project_2d(features, centers)
    y = labels.cpu().numpy()
    if len(xy) > max_points:  # a fixed subsample, same every epoch
        keep = np.random.default_rng(seed).choice(len(xy), max_points, replace=False)
        xy, y = xy[keep], y[keep]
    colours = _colours(len(class_names))
    fig = Figure(figsize=(6.4, 5.6), dpi=90)
    ax = fig.add_subplot()
    for k, name in enumerate(class_names):
        pts = xy[y == k]
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=2,
            color=colours[k],
            alpha=0.5,
            linewidths=0,
            label=name,
            rasterized=True,
        )
    if cxy is not None:
        ax.scatter(
            cxy[:, 0],
            cxy[:, 1],
            s=110,
            marker="X",
            c=colours[: len(cxy)],
            edgecolors="black",
            linewidths=1.2,
            zorder=3,
        )
        # legend proxy: one neutral cross rather than the first class's colour
        ax.scatter(
            [], [], s=60, marker="X", c="white", edgecolors="black", linewidths=1.2, label="centers"
        )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    legend = ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    # legend_handles since matplotlib 3.7, legendHandles before
    handles = getattr(legend, "legend_handles", None) or getattr(legend, "legendHandles", [])
    for handle in handles[: len(class_names)]:  # visible class dots, not 2-pt specks
        handle.set_sizes([25])
        handle.set_alpha(1.0)
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    return Path(path)


def training_curves(
    path: Path,
    history: Sequence[Dict[str, float]],
    accuracy_keys: Sequence[str] = ("train_acc", "test_softmax_acc", "test_nearest_center_acc"),
) -> Path:
    """Loss (total, softmax, center) and accuracies per epoch."""
    fig = curves_figure(history, accuracy_keys)
    atomic_write(path, fig.savefig)
    return Path(path)


def curves_figure(
    history: Sequence[Dict[str, float]],
    accuracy_keys: Sequence[str] = ("train_acc", "test_softmax_acc", "test_nearest_center_acc"),
) -> Figure:
    """training_curves' figure. The loss axis is logarithmic and spans whole decades, so
    its top and bottom carry labelled ticks (a span inside 10^-2..1.5 would otherwise
    leave every value above 10^0 without a label)."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=90)
    ax_loss, ax_acc = fig.subplots(1, 2)
    losses = []
    for key, label in (
        ("train_loss", "total"),
        ("train_softmax_loss", "softmax"),
        ("train_center_loss", "center (unweighted)"),
    ):
        if any(key in h for h in history):
            values = [h.get(key, np.nan) for h in history]
            losses += values
            ax_loss.plot(epochs, values, marker="o", label=label)
    ax_loss.set_yscale("log")
    positive = [v for v in losses if np.isfinite(v) and v > 0]
    if positive:
        ax_loss.set_ylim(
            10.0 ** np.floor(np.log10(min(positive))),
            10.0 ** np.ceil(np.log10(max(positive) * 1.0001)),
        )
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training loss (epoch mean)", fontsize=10)
    ax_loss.legend(fontsize=8)
    for key in accuracy_keys:
        if any(h.get(key) is not None for h in history):
            values = [np.nan if h.get(key) is None else h[key] for h in history]
            ax_acc.plot(epochs, values, marker="o", label=key)
    ax_acc.set_xlabel("epoch")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_title("accuracy", fontsize=10)
    ax_acc.legend(fontsize=8)
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def make_gif(frames: Sequence[Path], path: Path, duration_ms: int = 700) -> Optional[Path]:
    """An animated GIF of PNG frames (the last one held longer); None without frames."""
    from PIL import Image

    frames = [Path(f) for f in frames if Path(f).is_file()]
    if not frames:
        return None
    images = [Image.open(f).convert("RGB") for f in frames]
    size = images[0].size
    images = [im if im.size == size else im.resize(size) for im in images]
    durations = [duration_ms] * (len(images) - 1) + [duration_ms * 3]
    atomic_write(
        path,
        lambda tmp: images[0].save(
            tmp, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=True
        ),
    )
    return Path(path)


def roc_plot(path: Path, fpr: np.ndarray, tpr: np.ndarray, title: str) -> Path:
    """ROC curve with a logarithmic false-accept axis (where face verification lives)."""
    fig = Figure(figsize=(5, 4.5), dpi=90)
    ax = fig.add_subplot()
    # log axis: fpr = 0 (no false accept yet) is drawn at the left edge
    positive = fpr > 0
    left = max(min(fpr[positive].min() if positive.any() else 1.0, 1e-3), 1e-6)
    ax.plot(np.maximum(fpr, left), tpr, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(left, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    return Path(path)


def roc_comparison(
    path: Path, panels: Sequence[tuple], fars: Sequence[float] = (1e-3, 1e-2), left: float = 1e-4
) -> Path:
    """ROC curves side by side: one panel per (title, {label: (fpr, tpr)}), every label's
    curve in each, on a logarithmic false-accept axis from ``left`` to 1 (fpr below it,
    0 included, drawn at the left edge) with the ``fars`` marked."""
    n = max(len(panels), 1)
    fig = Figure(figsize=(4.6 * n, 4.4), dpi=90)
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    for ax, (title, curves) in zip(axes, panels):
        for k, (label, (fpr, tpr)) in enumerate(curves.items()):
            ax.plot(np.maximum(np.asarray(fpr), left), tpr, lw=1.5, color=_TAB10[k], label=label)
        for far in fars:
            ax.axvline(far, color="grey", lw=0.8, ls="--")
            ax.text(
                far,
                0.98,
                f"FAR={far:g} ",
                rotation=90,
                fontsize=7,
                color="grey",
                va="top",
                ha="right",
            )
        ax.set_xscale("log")
        ax.set_xlim(left, 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel("false accept rate")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("true accept rate")
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    return Path(path)
