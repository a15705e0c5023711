"""CenterLoss: the nn.Module most users want."""
from __future__ import annotations

from types import ModuleType
from typing import Optional, Union

import torch
from torch import nn

from . import ops as _compiled_ops
from ._checks import check_alpha, reduction_code

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

    Centers start at zero; they are in ``state_dict()`` under ``"centers"`` in both modes.
    """

    # The functions that do the work; centerloss_ext.reference swaps in plain PyTorch.
    _ops: ModuleType = _compiled_ops

    def __init__(self, num_classes: int, feature_dim: int, alpha: float = 0.5,
                 center_update: str = "alpha", reduction: str = "mean",
                 device: Optional[Union[torch.device, str]] = None,
                 dtype: torch.dtype = torch.float32) -> None:
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
        centers = torch.zeros(num_classes, feature_dim, device=device, dtype=dtype)
        if center_update == "alpha":
            self.register_buffer("centers", centers)
        else:
            self.centers = nn.Parameter(centers)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Puts every center back at zero."""
        self.centers.zero_()

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of ``features`` (B, D) with ``labels`` (B,); in alpha mode and training,
        also the center update."""
        if self.center_update == "alpha" and self.training:
            return self._ops.center_loss_and_update_(features, labels, self.centers,
                                                     self.alpha, self.reduction)
        return self._ops.center_loss(features, labels, self.centers, self.reduction)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
                f"alpha={self.alpha}, center_update={self.center_update!r}, "
                f"reduction={self.reduction!r}")
