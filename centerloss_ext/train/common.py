"""What both training scripts share: seeding, devices, atomic checkpoint and JSON writes,
the help layout, and the errors that the command lines turn into a one-line message.
The training loop's own pieces (running statistics, resume, the run record) are in
``loop``; the machine facts in ``centerloss_ext._machine``."""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Dict

import torch


class TrainingError(Exception):
    """A problem the user can fix (bad folder, bad option, diverged run): the command lines
    print it as one line instead of a traceback."""


class DataError(TrainingError):
    """The data on disk is missing or malformed."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite: training on would only produce garbage."""


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's generators (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when a GPU is visible; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: no CUDA GPU is visible to torch "
                            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    return device


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Writes atomically (temporary file, then rename): an interrupted save never leaves a
    truncated checkpoint where the last good one was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: Any = "cpu") -> Dict[str, Any]:
    """Loads a checkpoint written by these scripts (tensors and plain Python values only,
    so ``weights_only=True`` loading is safe)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's layout and shows the options' defaults (those that
    are values, not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.help is None:
            return action.help or ""
        return super()._get_help_string(action)


def run_cli(prog: str, fn: Callable[[], Any]) -> Any:
    """Runs ``fn``; a TrainingError becomes ``prog: error: message`` and exit status 1."""
    try:
        return fn()
    except TrainingError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
