"""The popular "distance matrix" center loss, the baseline centerloss_ext replaces.

Many public center-loss implementations compute the squared distance of every sample to
every center through the expansion ‖x‖² + ‖c‖² − 2·x·cᵀ (one B × C matrix multiply), mask
out all but each sample's own class, and learn the centers as an ``nn.Parameter`` with an
optimizer. Written here from that description, with the same loss as the SPEC
(``½‖x_i − c_{y_i}‖²``, mean over the batch) so that results can be checked against
``centerloss_ext.reference``. Time and memory grow with B × C: that is the point of the
comparison.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn


class DistanceMatrixCenterLoss(nn.Module):
    """Center loss over the full B × C distance matrix; ``centers`` is an ``nn.Parameter``.

    The arithmetic runs in the centers' dtype (float32 by default) whatever the features'
    dtype: in 16 bits the expansion ‖x‖² + ‖c‖² − 2·x·c loses most of its digits to
    cancellation once features sit near their centers.
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        device: Optional[Union[torch.device, str]] = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.centers = nn.Parameter(
            torch.zeros(num_classes, feature_dim, device=device, dtype=dtype)
        )

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = features.to(self.centers.dtype)
        # (B, C) squared distances: ‖x_i‖² + ‖c_j‖² − 2 x_i·c_j
        dist = torch.addmm(
            x.square().sum(1, keepdim=True) + self.centers.square().sum(1),
            x,
            self.centers.t(),
            beta=1,
            alpha=-2,
        )
        classes = torch.arange(self.num_classes, device=labels.device)
        mask = labels.unsqueeze(1) == classes  # (B, C): True at each sample's own class
        return 0.5 * (dist * mask).sum() / max(features.shape[0], 1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feature_dim={self.feature_dim}"
