"""What both training scripts share: seeding, devices, checkpoints, the non-finite-loss
guard, and the errors that the command lines turn into a one-line message."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

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


def check_finite(loss: torch.Tensor, epoch: int, step: int,
                 parts: Optional[Mapping[str, torch.Tensor]] = None,
                 hint: str = "") -> float:
    """Returns ``loss.item()``, or raises NonFiniteLossError naming where it happened and
    which part of the loss went bad. One sync per step; the progress bar needs it anyway."""
    value = loss.item()
    if math.isfinite(value):
        return value
    detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in (parts or {}).items())
    raise NonFiniteLossError(
        f"the loss became {value} at epoch {epoch + 1}, step {step + 1}"
        + (f" ({detail})" if detail else "")
        + "; training stopped rather than go on with garbage weights. "
        + (hint or "Lower the learning rate or the center-loss weight, and check the input data."))


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


def check_same_config(saved: Mapping[str, Any], current: Mapping[str, Any],
                      keys: Sequence[str], path: Path) -> None:
    """Resuming with different run-defining options would silently mix two runs."""
    diffs = [f"--{k.replace('_', '-')} {saved.get(k)!r} (now {current.get(k)!r})"
             for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise TrainingError(f"{path} was trained with " + ", ".join(diffs)
                            + ": pass the same options to resume, or use another --out")


def write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the record of a run."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> Dict[str, Any]:
    """Where a run ran, for metrics.json."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu: {cpu_name()}, {os.cpu_count()} cores"),
        "cpu_threads": torch.get_num_threads(),
    }


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
