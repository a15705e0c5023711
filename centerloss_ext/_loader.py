"""Loads the compiled ops (centerloss_ext._C), refusing a torch other than the one
they were built against: a C++ extension's ABI is tied to one torch build, and a
mismatch shows up as an undefined symbol or a crash rather than a clear error."""
from __future__ import annotations

import torch

REBUILD = ("rebuild it against the torch you have: "
           "pip install --no-build-isolation --no-deps --force-reinstall .  "
           "(from the centerloss_ext source folder)")


def load() -> None:
    try:
        from . import _build_info
    except ImportError as e:  # source tree, never built
        raise ImportError("centerloss_ext is not built (no centerloss_ext/_build_info.py): "
                          "run pip install --no-build-isolation .  (or -e . for development)"
                          ) from e
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(f"centerloss_ext was built against torch {_build_info.TORCH_VERSION}, "
                          f"but torch {torch.__version__} is imported; {REBUILD}")
    try:
        from . import _C  # noqa: F401  (registers torch.ops.centerloss.*)
    except ImportError as e:
        raise ImportError(f"centerloss_ext's compiled ops (_C) failed to load: {e}; {REBUILD}"
                          ) from e
