"""The errors of the training command lines: a TrainingError is a problem the user can
fix, which the command lines print as one line (``cli.run_cli``) with exit status 2;
Ctrl-C is ``Interrupted``, exit status 130; a file that cannot be written is
``WriteFailed``, one line and exit status 1."""

from __future__ import annotations


class TrainingError(Exception):
    """A problem the user can fix (bad folder, bad option, diverged run): the command lines
    print it as one line instead of a traceback."""


class DataError(TrainingError):
    """The data on disk is missing or malformed."""


class WriteFailed(TrainingError):
    """A file could not be written (disk full, I/O error, a file-size limit): the previous
    file is left in place and the command stops with exit status 1 (``EXIT_FAILED``)."""


class RanksLost(TrainingError):
    """Under torchrun, another rank did not answer a collective within --dist-timeout (it
    hung, stopped or lost its node): this rank stops with exit status 1 (``EXIT_FAILED``);
    the last finished epoch's checkpoint stays as it was."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite: training on would only produce garbage."""


class Interrupted(TrainingError):
    """Ctrl-C during training. ``resumable``: a checkpoint of a finished epoch is on disk,
    so the command line prints the command that continues the run."""

    def __init__(self, message: str, resumable: bool) -> None:
        super().__init__(message)
        self.resumable = resumable


EXIT_FAILED = 1  # the run could not go on (a file it must write could not be written)
EXIT_ERROR = 2  # a usage or data problem: the same status as argparse's errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells and make report for Ctrl-C


def first_line(e: BaseException) -> str:
    """An exception's message in one line: a DataLoader worker's wrapped error becomes
    the original error's own message."""
    text = str(e).strip() or type(e).__name__
    if "Original Traceback" in text:  # "Caught X in DataLoader worker process N"
        last = text.splitlines()[-1]
        head, sep, tail = last.partition(": ")
        text = tail if sep and "." in head and " " not in head else last
    return text.splitlines()[0] if text else text
