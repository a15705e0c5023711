"""What the training command lines share: the check for the optional packages of the
"train" group (``require``, before anything imports them, so a missing one is one line
naming the group), the help layout, the argparse value types, and ``run_cli``, which
turns a TrainingError into one line and exit status 2, and Ctrl-C into one line, exit
status 130 and the command that resumes the run."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import threading
import time
from importlib.util import find_spec
from typing import Any, Callable, Optional, Sequence

import torch

from .errors import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    Interrupted,
    RanksLost,
    TrainingError,
    WriteFailed,
    first_line,
)

# ------------------------------------------------------------------ optional packages

# import name -> package name on PyPI
TRAIN = {
    "torchvision": "torchvision",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "sklearn": "scikit-learn",
    "tqdm": "tqdm",
    "PIL": "pillow",
}


def missing() -> list:
    return [pkg for mod, pkg in TRAIN.items() if find_spec(mod) is None]


def require(prog: str, module_name: str) -> None:
    """Run as a command (`python -m`, or the console script `prog`): print one line and
    exit with status 2 when a package is missing; imported as a library: raise
    ImportError with the same line."""
    absent = missing()
    if not absent:
        return
    msg = (
        f'{prog}: {", ".join(absent)} missing, from the optional "train" group: '
        f'pip install ".[train]" in the centerloss_ext source folder, or '
        f"pip install {' '.join(absent)}"
    )
    if module_name == "__main__" or os.path.basename(sys.argv[0]) == prog:
        print(msg, file=sys.stderr)
        sys.exit(2)
    raise ImportError(msg)


# ------------------------------------------------------------------ running a command line


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's layout and shows the options' defaults (those that
    are values, not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # flags (--no-augment, --resume) have no value to show: their "default" is the
        # stored value when absent, which reads backwards ("--no-augment (default: True)")
        if action.default in (None, False) or action.help is None or action.nargs == 0:
            return action.help or ""
        return super()._get_help_string(action) or ""


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


def run_cli(
    prog: str,
    fn: Callable[[], Any],
    argv: Optional[Sequence[str]] = None,
    command: Optional[str] = None,
) -> Any:
    """Runs ``fn``. A TrainingError becomes one line, ``prog: error: message``, and exit
    status 2 (a DataLoader worker's wrapped one too), a file that cannot be written
    (WriteFailed) or a rank that stopped answering (RanksLost) one line and exit status
    1; Ctrl-C becomes one line and exit status 130, with the command that resumes the
    run when a checkpoint was saved (``command``: how the script was started, ``argv``:
    its arguments)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)  # remembers that Ctrl-C came (is_interrupt)
    try:
        return fn()
    except Interrupted as e:
        print(f"{prog}: interrupted: {e}", file=sys.stderr)
        if e.resumable:
            print(
                f"{prog}: continue with: {resume_command(command or prog, argv)}", file=sys.stderr
            )
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except (WriteFailed, RanksLost) as e:
        print(f"{prog}: error: {first_line(e)}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
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


def bounded(
    kind: type,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], Any]:
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
        if (
            not math.isfinite(value)
            or (low is not None and (value <= low if low_open else value < low))
            or (high is not None and (value >= high if high_open else value > high))
        ):
            raise argparse.ArgumentTypeError(f"must be {noun} {rule}; got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {rule}"
    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
positive_float = bounded(float, 0, low_open=True)
non_negative_float = bounded(float, 0)
alpha_value = bounded(float, 0, 1)  # CenterLoss's alpha rule: [0, 1]


def device_name(text: str) -> str:
    """An argparse ``type`` for --device: auto, or a device torch knows (cpu, cuda,
    cuda:N, ...)."""
    if text == "auto":
        return text
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}: use cpu, cuda, cuda:N or auto"
        ) from None
    return text
