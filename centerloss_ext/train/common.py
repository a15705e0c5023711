"""What both training scripts share: seeding, devices, atomic checkpoint and JSON writes,
the help layout, and the errors that the command lines turn into a one-line message.
The training loop's own pieces (running statistics, resume, the run record) are in
``loop``; the machine facts in ``centerloss_ext._machine``."""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch


class TrainingError(Exception):
    """A problem the user can fix (bad folder, bad option, diverged run): the command lines
    print it as one line instead of a traceback."""


class DataError(TrainingError):
    """The data on disk is missing or malformed."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite: training on would only produce garbage."""


class Interrupted(TrainingError):
    """Ctrl-C during training. ``resumable``: a checkpoint of a finished epoch is on disk,
    so the command line prints the command that continues the run."""

    def __init__(self, message: str, resumable: bool) -> None:
        super().__init__(message)
        self.resumable = resumable


EXIT_ERROR = 2            # a usage or data problem: the same status as argparse's errors
EXIT_INTERRUPTED = 130    # 128 + SIGINT, what shells and make report for Ctrl-C


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
    truncated checkpoint where the last good one was, nor the temporary file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: Any = "cpu", flag: str = "--checkpoint",
                    required: Sequence[str] = ("config", "epoch", "history")) -> Dict[str, Any]:
    """Loads a checkpoint written by these scripts (tensors and plain Python values only,
    so ``weights_only=True`` loading is safe). A missing, truncated or foreign file, or one
    without the ``required`` entries, is a TrainingError naming ``flag`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{flag} {path}: no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:      # zip reader, unpickler, weights_only refusals: all unreadable
        raise TrainingError(f"{flag} {path}: not a readable checkpoint of these scripts "
                            f"(truncated, or another kind of file: {first_line(e)})") from None
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise TrainingError(f"{flag} {path}: not a checkpoint of these scripts (no "
                            f"{', '.join(missing)}); give the checkpoint.pt that train wrote")
    return ckpt


def first_line(e: BaseException) -> str:
    """An exception's message in one line: a DataLoader worker's wrapped error becomes
    the original error's own message."""
    text = str(e).strip() or type(e).__name__
    if "Original Traceback" in text:            # "Caught X in DataLoader worker process N"
        last = text.splitlines()[-1]
        head, sep, tail = last.partition(": ")
        text = tail if sep and "." in head and " " not in head else last
    return text.splitlines()[0] if text else text


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
        # flags (--no-augment, --resume) have no value to show: their "default" is the
        # stored value when absent, which reads backwards ("--no-augment (default: True)")
        if action.default in (None, False) or action.help is None or action.nargs == 0:
            return action.help or ""
        return super()._get_help_string(action)


_sigint_seen = False


def _on_sigint(signum, frame) -> None:
    global _sigint_seen
    _sigint_seen = True
    raise KeyboardInterrupt


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, or a data-loading worker it killed before it reached this process (a
    terminal's Ctrl-C goes to the whole process group): DataLoader then reports the
    worker's death first, as a RuntimeError."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if not (isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc)):
        return False
    if not _sigint_seen:
        try:
            time.sleep(1.0)  # the same Ctrl-C, if it is one, is on its way here
        except KeyboardInterrupt:
            return True
    return _sigint_seen


def run_cli(prog: str, fn: Callable[[], Any], argv: Optional[Sequence[str]] = None,
            command: Optional[str] = None) -> Any:
    """Runs ``fn``. A TrainingError becomes one line, ``prog: error: message``, and exit
    status 2 (a DataLoader worker's wrapped one too); Ctrl-C becomes one line and exit
    status 130, with the command that resumes the run when a checkpoint was saved
    (``command``: how the script was started, ``argv``: its arguments)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)  # remembers that Ctrl-C came (is_interrupt)
    try:
        return fn()
    except Interrupted as e:
        print(f"{prog}: interrupted: {e}", file=sys.stderr)
        if e.resumable:
            print(f"{prog}: continue with: {resume_command(command or prog, argv)}",
                  file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except TrainingError as e:
        print(f"{prog}: error: {first_line(e)}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None


def resume_command(command: str, argv: Optional[Sequence[str]]) -> str:
    """``command argv`` with --resume added (and --overwrite, which excludes it, left out)."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return " ".join([command, shlex.join(args)])


# ------------------------------------------------------------------ command-line values

def bounded(kind: type, low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, high_open: bool = False) -> Callable[[str], Any]:
    """An argparse ``type`` for a finite number in a range: a value outside it is refused
    as ``argument --flag: must be ...`` under the (sub)command's usage, exit status 2."""
    if low is not None and high is not None:
        rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rule = f"{'>' if low_open else '>='} {low:g}"
    else:
        rule = f"{'<' if high_open else '<='} {high:g}"
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun} {rule}; got {text!r}") from None
        if not math.isfinite(value) or (
                low is not None and (value <= low if low_open else value < low)) or (
                high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"must be {noun} {rule}; got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {rule}"
    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
positive_float = bounded(float, 0, low_open=True)
non_negative_float = bounded(float, 0)
alpha_value = bounded(float, 0, 1)             # CenterLoss's alpha rule: [0, 1]


def device_name(text: str) -> str:
    """An argparse ``type`` for --device: auto, or a device torch knows (cpu, cuda,
    cuda:N, ...)."""
    if text == "auto":
        return text
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}: use cpu, cuda, cuda:N or auto") from None
    return text


# ------------------------------------------------------------------ output folders

def check_output_folder(out: Path, outputs: Sequence[str], overwrite: bool,
                        log: Callable[[str], None] = print) -> None:
    """Before a fresh run writes to ``out``: a folder holding anything stops it, unless
    ``overwrite``, which deletes what a previous run wrote there (the ``outputs`` glob
    patterns, the files recorded by note_outputs) and nothing else."""
    out = Path(out)
    if not out.is_dir():
        if out.exists():
            raise TrainingError(f"--out {out} is a file: give a folder")
        return
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    if not overwrite:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise TrainingError(f"--out {out} is not empty ({shown}): add --resume to continue "
                            "the run there, --overwrite to replace it, or choose another --out")
    removed = clear_outputs(out, outputs)
    log(f"--overwrite: removed {len(removed)} file{'s' if len(removed) != 1 else ''} of the "
        f"previous run from {out}")


_NOTED = ".centerloss_outputs"     # names (relative to the folder) of files jobs wrote there


def note_outputs(folder: Path, *names: str) -> None:
    """Records files a job wrote in ``folder`` that --overwrite may later delete, when
    ``folder`` holds a training run (elsewhere there is nothing to overwrite)."""
    if not (Path(folder) / "checkpoint.pt").is_file():
        return
    record = Path(folder) / _NOTED
    known = set(record.read_text().split("\n")) if record.is_file() else set()
    record.write_text("\n".join(sorted((known | set(names)) - {""})) + "\n")


def clear_outputs(folder: Path, patterns: Sequence[str]) -> List[Path]:
    """Deletes the files of ``folder`` matching ``patterns`` or recorded by note_outputs
    (and subfolders left empty by that); returns what was deleted."""
    folder = Path(folder)
    record = folder / _NOTED
    noted = record.read_text().split("\n") if record.is_file() else []
    targets = {p for pattern in patterns for p in folder.glob(pattern) if p.is_file()}
    targets |= {folder / n for n in noted if n and (folder / n).is_file()}
    for p in sorted(targets):
        p.unlink()
    record.unlink(missing_ok=True)
    for sub in sorted({p.parent for p in targets} - {folder}, reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    return sorted(targets)


@contextmanager
def output_folder(path: Path) -> Iterator[Path]:
    """Creates ``path`` (and missing parents); when the block fails, removes again the
    folders it created that are still empty, so a failed run leaves no empty folder."""
    path = Path(path)
    created = []
    p = path
    while not p.exists():
        created.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:                       # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
