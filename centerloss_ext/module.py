"""CenterLoss, the nn.Module most users want, in its two flavours: on the compiled ops
(``centerloss_ext.CenterLoss``) and on the pure-PyTorch reference
(``centerloss_ext.reference.CenterLoss``)."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from . import distributed as _distributed
from . import reference as _reference
from ._checks import check_alpha, reduction_code
from .distributed import COMPILED, IMPLEMENTATIONS, REFERENCE

CENTER_UPDATES = ("alpha", "optimizer")


class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016): ``½‖x_i − c_{y_i}‖²`` averaged over the batch.

    Use it beside a softmax loss: ``loss = ce(logits, y) + lam * center_loss(feats, y)``.

    Args:
        num_classes: C, the number of classes (centers).
        feature_dim: D, the width of the features.
        alpha: the center learning rate of the paper's update rule (``center_update="alpha"``).
        center_update: ``"alpha"``: ``centers`` is a buffer that every training-mode forward
            moves by the paper's rule (eq. 4), after the loss has used the old centers;
            ``module.eval()`` stops it. ``"optimizer"``: ``centers`` is an ``nn.Parameter``
            that your optimizer learns from its gradient (note: a dense C × D gradient, as
            for ``nn.Embedding``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        device, dtype: of the centers (float32 by default, whatever the features' dtype).
        process_group: the ``torch.distributed`` group whose ranks share the centers
            (alpha mode); None: the default group, when one is initialised.
        sync: alpha mode under ``torch.distributed`` (see below); ``False`` lets each
            rank's centers follow its own batches only.

    Centers start at zero; they are in ``state_dict()`` under ``"centers"`` in both modes.

    Multi-process (alpha mode): when ``torch.distributed`` is initialised (or a
    ``process_group`` is given) and ``sync`` is true, every training-mode forward
    all-gathers the features and labels of all ranks (any batch sizes, 0 included) and
    applies the update to that global batch, deterministically, so the centers stay
    bit-identical on every rank and equal a single process's update on the concatenated
    batch. The forward is then a collective: every rank of the group must call it. The
    loss and its gradients stay local, as ``DistributedDataParallel`` expects. The exchange
    is O(world × B × D) per step, never O(C × D); it traces under
    ``torch.compile(fullgraph=True)`` (a custom op). On the first synced step, and the first
    after ``load_state_dict``, every rank takes the centers of the group's first rank (a
    one-time C × D broadcast, as DDP does with parameters). Leave this module out of DDP's
    wrapped model, or pass ``broadcast_buffers=False``: DDP would otherwise broadcast the
    C × D centers every step for nothing. In optimizer mode ``centers`` is an ordinary
    parameter and DDP keeps it in sync (by all-reducing its C × D gradient).
    """

    # The functions that do the work, by their number in distributed.IMPLEMENTATIONS
    # (ReferenceCenterLoss: plain PyTorch).
    _impl: int = COMPILED

    def __init__(self, num_classes: int, feature_dim: int, alpha: float = 0.5,
                 center_update: str = "alpha", reduction: str = "mean",
                 device: Optional[Union[torch.device, str]] = None,
                 dtype: torch.dtype = torch.float32, *,
                 process_group: Optional["torch.distributed.ProcessGroup"] = None,
                 sync: bool = True) -> None:
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
        self._group_key = _distributed.group_key(process_group)
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
        return _distributed.group_of(self._group_key)

    def syncs_centers(self) -> bool:
        """Whether a training-mode forward exchanges the batch with the other ranks now."""
        return (self.center_update == "alpha" and self.sync
                and (self._group_key != _distributed.DEFAULT_GROUP_KEY
                     or _distributed.is_initialized()))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of ``features`` (B, D) with ``labels`` (B,); in alpha mode and training,
        also the center update."""
        impl = IMPLEMENTATIONS[self._impl]
        if self.center_update == "alpha" and self.training:
            if self.syncs_centers():
                return self._synced_step(features, labels)
            return impl.center_loss_and_update_(features, labels, self.centers, self.alpha,
                                                self.reduction)
        return impl.center_loss(features, labels, self.centers, self.reduction)

    def _synced_step(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self._centers_shared:
            # Ranks may have started apart (centers set from each rank's own data, say):
            # rank 0's win, as DDP does with parameters. C × D once, never per step.
            _distributed.broadcast_op(self.centers, self._group_key)
            self._centers_shared = True
        try:
            # checks the labels, for the update of the gathered batch too
            loss = IMPLEMENTATIONS[self._impl].center_loss(features, labels, self.centers,
                                                           self.reduction)
        except Exception:
            # Bad input here (a label out of range, say): tell the other ranks, which would
            # otherwise wait for this one in the exchange, then raise. (Eager mode only: a
            # compiled graph raises straight through.)
            _distributed.announce_failure(self.centers.device, self.process_group)
            raise
        # After the loss, which uses the centers from before the update.
        _distributed.sync_update_op(self.centers, features.detach(), labels, self.alpha,
                                    self._group_key, self._impl)
        return loss

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
                f"alpha={self.alpha}, center_update={self.center_update!r}, "
                f"reduction={self.reduction!r}" + ("" if self.sync else ", sync=False"))


class ReferenceCenterLoss(CenterLoss):
    """:class:`CenterLoss` computed with plain PyTorch ops (``centerloss_ext.reference``):
    the oracle of the tests and the pure-PyTorch baseline of the benchmark. Also known as
    ``centerloss_ext.reference.CenterLoss``."""

    _impl = REFERENCE


# Published beside the functions it runs on. reference.py itself imports nothing of the
# package but the checks, so the class is built here, above both implementations.
_reference.CenterLoss = ReferenceCenterLoss


def _centers_loaded(module: CenterLoss, incompatible_keys) -> None:
    """load_state_dict post-hook: the next synced step shares rank 0's centers again."""
    module._centers_shared = False
