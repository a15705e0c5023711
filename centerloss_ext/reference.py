"""The same API in plain PyTorch ops: the oracle of the tests and the "pure-PyTorch
version" of the benchmarks.

O(B × D) memory and time like the compiled ops: it gathers the B center rows it needs
(index_select) and scatters per-class sums into the classes present (unique +
index_add), never forming a B × C distance matrix or a C × D buffer per step.

Also ``CenterLoss`` (``ReferenceCenterLoss``): the nn.Module of ``centerloss_ext`` on these
functions, its code shared with the compiled one through ``_module_base.CenterLossBase``.
This file depends on torch, the shared checks and that base only: never on the compiled
ops, which it is the oracle of.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from ._checks import (
    acc_dtype,
    check_alpha,
    check_inputs,
    check_label_range,
    loss_dtype,
    reduction_code,
)
from ._module_base import REFERENCE, CenterLossBase

__all__ = [
    "CenterLoss",
    "ReferenceCenterLoss",
    "center_loss",
    "center_loss_and_update_",
    "update_centers_",
    "update_checked_centers_",
]


def _check(features, labels, centers) -> None:
    check_inputs(features, labels, centers)
    # Reading label values is a graph break under torch.compile; there index_select's
    # own bounds check stands in.
    if not torch.compiler.is_compiling():
        check_label_range(labels, centers.shape[0])


def _diff(features, labels, centers) -> torch.Tensor:
    return _diff_rows(features, centers.index_select(0, labels))


def _diff_rows(features, center_rows) -> torch.Tensor:
    acc = acc_dtype(features.dtype, center_rows.dtype)
    return features.to(acc) - center_rows.to(acc)


@torch.compiler.disable
def _rows_outside_graph(centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Under torch.compile the loss graph may save its cheapest inputs for backward and
    # recompute from them; were the centers among them, the in-place update that follows
    # would invalidate them ("modified by an inplace operation"). Gathered here, in eager
    # mode, the rows are the graph's input instead, and the update never touches them.
    return centers.index_select(0, labels)


def _loss(features, center_rows, reduction: str) -> torch.Tensor:
    red = reduction_code(reduction)
    per_sample = 0.5 * _diff_rows(features, center_rows).square().sum(1)
    out_dtype = loss_dtype(features.dtype)
    if red == 0:
        return per_sample.to(out_dtype)
    total = per_sample.sum()
    if red == 1:
        total = total / max(features.shape[0], 1)
    return total.to(out_dtype)


def center_loss(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """See :func:`centerloss_ext.center_loss`."""
    _check(features, labels, centers)
    return _loss(features, centers.index_select(0, labels), reduction)


@contextlib.contextmanager
def _deterministic_algorithms(on: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms(True) for the block, when ``on`` and not already."""
    if not on or torch.are_deterministic_algorithms_enabled() or torch.compiler.is_compiling():
        yield
        return
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False, warn_only=warn_only)


@torch.no_grad()
def update_centers_(
    centers: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    *,
    deterministic: Optional[bool] = None,
) -> torch.Tensor:
    """See :func:`centerloss_ext.update_centers_`. index_add follows
    torch.use_deterministic_algorithms; ``deterministic=True`` turns that on for the call
    (it matters on CUDA only: on the CPU index_add sums in index order)."""
    check_alpha(alpha)
    _check(features, labels, centers)
    return update_checked_centers_(centers, features, labels, alpha, deterministic=deterministic)


@torch.no_grad()
def update_checked_centers_(
    centers: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    *,
    deterministic: Optional[bool] = None,
) -> torch.Tensor:
    """:func:`update_centers_` on inputs already checked: reads no label values first (on
    CUDA, no host sync). For the synced step, whose gathered labels every rank's loss
    checked. A label out of range still raises (index_select's own check), only with a
    terser message."""
    if features.shape[0] == 0:
        return centers
    with _deterministic_algorithms(bool(deterministic) and centers.is_cuda):
        return _update(centers, features, labels, alpha)


def _update(
    centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, alpha: float
) -> torch.Tensor:
    diff = _diff(features, labels, centers)
    finite = torch.isfinite(diff).all(1)
    classes, slot = torch.unique(labels, return_inverse=True)
    sums = diff.new_zeros(classes.shape[0], diff.shape[1]).index_add_(
        0, slot, torch.where(finite[:, None], diff, 0)
    )
    counts = diff.new_zeros(classes.shape[0]).index_add_(0, slot, finite.to(diff.dtype))
    new = centers.index_select(0, classes).to(diff.dtype) + alpha * sums / (1 + counts)[:, None]
    centers.index_copy_(0, classes.long(), new.to(centers.dtype))
    return centers


def center_loss_and_update_(
    features: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    alpha: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """See :func:`centerloss_ext.center_loss_and_update_` (here: two passes)."""
    if centers.requires_grad:
        raise ValueError(
            "centers must not require grad when updated by the alpha rule; "
            "use center_update='optimizer' to learn them by gradient"
        )
    check_alpha(alpha)
    _check(features, labels, centers)
    loss = _loss(features, _rows_outside_graph(centers, labels), reduction)
    update_checked_centers_(centers, features.detach(), labels, alpha)
    return loss


class ReferenceCenterLoss(CenterLossBase):
    """:class:`centerloss_ext.CenterLoss` computed with the plain PyTorch functions above:
    the oracle of the tests and the pure-PyTorch baseline of the benchmark. Also known as
    ``centerloss_ext.reference.CenterLoss``."""

    # the number of its implementation (implementations.IMPLEMENTATIONS), for the synced op
    _impl = REFERENCE
    _center_loss = staticmethod(center_loss)
    _center_loss_and_update_ = staticmethod(center_loss_and_update_)


CenterLoss = ReferenceCenterLoss
