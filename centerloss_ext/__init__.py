"""centerloss_ext: fused C++/CUDA Center Loss (Wen et al., ECCV 2016) for PyTorch.

    from centerloss_ext import CenterLoss
    crit = CenterLoss(num_classes, feature_dim)          # alpha-rule centers
    loss = softmax_loss + lam * crit(features, labels)

The ops are torch.ops.centerloss.*; `centerloss_ext.reference` is the same API in
plain PyTorch. `python -m centerloss_ext` prints how this copy was built.

`centerloss_ext.distributed` (the multi-process center sync) loads on first use: when
CenterLoss first syncs, on `import centerloss_ext.distributed`, or on attribute access
here. A single process never imports it.
"""

from ._loader import load as _load

_load()

from . import reference  # noqa: E402,F401  (centerloss_ext.reference, the same API in PyTorch)
from ._build_info import VERSION as __version__  # noqa: E402
from .module import CenterLoss  # noqa: E402
from .ops import center_loss, center_loss_and_update_, set_cuda_label_check, update_centers_  # noqa: E402

__all__ = [
    "CenterLoss",
    "center_loss",
    "center_loss_and_update_",
    "update_centers_",
    "set_cuda_label_check",
    "__version__",
]


def __getattr__(name: str):
    # centerloss_ext.distributed without an import of its own, as when every import of the
    # package loaded it; importing it makes it an attribute, so this runs once at most
    if name == "distributed":
        import importlib  # (not `from . import`: that asks this function first)

        return importlib.import_module(".distributed", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
