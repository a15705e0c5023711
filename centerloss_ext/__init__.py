"""centerloss_ext: fused C++/CUDA Center Loss (Wen et al., ECCV 2016) for PyTorch.

    from centerloss_ext import CenterLoss
    crit = CenterLoss(num_classes, feature_dim)          # alpha-rule centers
    loss = softmax_loss + lam * crit(features, labels)

The ops are torch.ops.centerloss.*; `centerloss_ext.reference` is the same API in
plain PyTorch. `python -m centerloss_ext` prints how this copy was built.
"""
from ._loader import load as _load

_load()

from ._build_info import VERSION as __version__  # noqa: E402
from .module import CenterLoss  # noqa: E402
from .ops import (center_loss, center_loss_and_update_, set_cuda_label_check,  # noqa: E402
                  update_centers_)

__all__ = ["CenterLoss", "center_loss", "center_loss_and_update_", "update_centers_",
           "set_cuda_label_check", "__version__"]
