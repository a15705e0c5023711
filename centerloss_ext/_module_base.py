"""The nn.Module code that both CenterLoss classes share: arguments, centers, the training
step and the synced step.

It has a module of its own so that each class can sit beside the functions it runs on:
``centerloss_ext.CenterLoss`` in module.py (the compiled ops) and
``centerloss_ext.reference.CenterLoss`` in reference.py (plain PyTorch). Both import
this file; it imports neither, so the oracle never loads the compiled ops.

Also here: the plain values a class hands to the synced update op in place of a module
or a process group (an op's arguments are tensors and plain values): its implementation's
number (the index into ``implementations.IMPLEMENTATIONS``) and the default group's key.

``centerloss_ext.distributed`` (the multi-process sync) is imported on first use only:
when a step syncs or a process group is given. A single process never loads it.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from ._checks import check_alpha, reduction_code

CENTER_UPDATES = ("alpha", "optimizer")

# The implementations by number: the compiled ops and the pure-PyTorch reference.
COMPILED, REFERENCE = 0, 1
# Process groups are passed to the ops by key (see distributed.group_key); 0: the default
# group, looked up at call time.
DEFAULT_GROUP_KEY = 0


def _distributed():
    """centerloss_ext.distributed, imported when first needed."""
    from . import distributed

    return distributed


def _default_group_is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


class CenterLossBase(nn.Module):
    """The code of :class:`centerloss_ext.CenterLoss` (whose docstring documents it) and
    ``centerloss_ext.reference.CenterLoss``. A subclass names its implementation: its
    number ``_impl`` and its functional API's ``center_loss`` and
    ``center_loss_and_update_`` (as static methods)."""

    _impl: int
    _center_loss: Callable[..., torch.Tensor]
    _center_loss_and_update_: Callable[..., torch.Tensor]

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        alpha: float = 0.5,
        center_update: str = "alpha",
        reduction: str = "mean",
        device: Optional[Union[torch.device, str]] = None,
        dtype: torch.dtype = torch.float32,
        *,
        process_group: Optional["torch.distributed.ProcessGroup"] = None,
        sync: bool = True,
    ) -> None:
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
        if not (isinstance(feature_dim, int) and feature_dim > 0):
            raise ValueError(f"feature_dim must be a positive int; got {feature_dim!r}")
        if center_update not in CENTER_UPDATES:
            raise ValueError(f"center_update must be 'alpha' or 'optimizer'; got {center_update!r}")
        check_alpha(alpha)
        reduction_code(reduction)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.alpha = float(alpha)
        self.center_update = center_update
        self.reduction = reduction
        self.sync = bool(sync)
        self._group_key = (
            DEFAULT_GROUP_KEY if process_group is None else _distributed().group_key(process_group)
        )
        self._centers_shared = False  # every rank holds rank 0's centers (see forward)
        self.register_load_state_dict_post_hook(_centers_loaded)
        centers = torch.zeros(num_classes, feature_dim, device=device, dtype=dtype)
        if center_update == "alpha":
            self.register_buffer("centers", centers)
        else:
            self.centers = nn.Parameter(centers)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Puts every center back at zero."""
        self.centers.zero_()

    @property
    def process_group(self) -> Optional["torch.distributed.ProcessGroup"]:
        """The group whose ranks share the centers; None: the default group."""
        if self._group_key == DEFAULT_GROUP_KEY:
            return None
        return _distributed().group_of(self._group_key)

    def syncs_centers(self) -> bool:
        """Whether a training-mode forward exchanges the batch with the other ranks now."""
        return (
            self.center_update == "alpha"
            and self.sync
            and (self._group_key != DEFAULT_GROUP_KEY or _default_group_is_initialized())
        )

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of ``features`` (B, D) with ``labels`` (B,); in alpha mode and training,
        also the center update."""
        if self.center_update == "alpha" and self.training:
            if self.syncs_centers():
                return self._synced_step(features, labels)
            return self._center_loss_and_update_(
                features, labels, self.centers, self.alpha, self.reduction
            )
        return self._center_loss(features, labels, self.centers, self.reduction)

    def _synced_step(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        distributed = _distributed()
        if not self._centers_shared:
            # Ranks may have started apart (centers set from each rank's own data, say):
            # rank 0's win, as DDP does with parameters. C × D once, never per step.
            distributed.broadcast_op(self.centers, self._group_key)
            self._centers_shared = True
        try:
            # checks the labels, for the update of the gathered batch too
            loss = self._center_loss(features, labels, self.centers, self.reduction)
        except Exception:
            # Bad input here (a label out of range, say): tell the other ranks, which would
            # otherwise wait for this one in the exchange, then raise. (Eager mode only: a
            # compiled graph raises straight through.)
            distributed.announce_failure(self.centers.device, self.process_group)
            raise
        # After the loss, which uses the centers from before the update.
        distributed.sync_update_op(
            self.centers, features.detach(), labels, self.alpha, self._group_key, self._impl
        )
        return loss

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
            f"alpha={self.alpha}, center_update={self.center_update!r}, "
            f"reduction={self.reduction!r}" + ("" if self.sync else ", sync=False")
        )


def _centers_loaded(module: CenterLossBase, incompatible_keys) -> None:
    """load_state_dict post-hook: the next synced step shares rank 0's centers again."""
    module._centers_shared = False
