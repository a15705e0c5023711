"""Loads the compiled ops (centerloss_ext._C), refusing a torch other than the one
they were built against: a C++ extension's ABI is tied to one torch build, and a
mismatch shows up as an undefined symbol or a crash rather than a clear error."""

from __future__ import annotations

import os
import sys
from typing import Optional

import torch

REBUILD = (
    "rebuild it against the torch you have: "
    "pip install --no-deps --force-reinstall .  "
    "(from the centerloss_ext source folder)"
)
HERE = os.path.dirname(os.path.abspath(__file__))


def installed_copy() -> Optional[str]:
    """A built centerloss_ext elsewhere on sys.path than this (unbuilt) folder: the
    installed copy that the current folder (first on the path) shadows."""
    for entry in sys.path:
        folder = os.path.join(os.path.abspath(entry or os.curdir), "centerloss_ext")
        if os.path.realpath(folder) != os.path.realpath(HERE) and os.path.isfile(
            os.path.join(folder, "_build_info.py")
        ):
            return folder
    return None


def not_built_message() -> str:
    installed = installed_copy()
    if installed is None:
        return (
            f"centerloss_ext is not built: {HERE} is its source, and no built copy is "
            "installed. Install torch, then pip install .  (or pip install -e .  to work "
            "on the source) from the centerloss_ext source folder."
        )
    return (
        f"centerloss_ext is imported from {HERE}, an unbuilt source folder that comes "
        "first on Python's path (the current folder does), not from the installed copy "
        f"in {installed}. Either run from another folder to use the installed copy, or "
        "build this source in place: pip install -e .  (or make build) in "
        f"{os.path.dirname(HERE)}."
    )


def load() -> None:
    try:
        from . import _build_info
    except ImportError as e:  # source tree, never built
        raise ImportError(not_built_message()) from e
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"centerloss_ext was built against torch {_build_info.TORCH_VERSION}, "
            f"but torch {torch.__version__} is imported; {REBUILD}"
        )
    try:
        from . import _C  # noqa: F401  (registers torch.ops.centerloss.*)
    except ImportError as e:
        raise ImportError(
            f"centerloss_ext's compiled ops (_C) failed to load: {e}; {REBUILD}"
        ) from e
