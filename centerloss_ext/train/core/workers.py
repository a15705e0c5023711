"""Data-loading worker processes that survive a Ctrl-C whole.

A terminal's Ctrl-C goes to the whole process group: the DataLoader's worker processes get
SIGINT too. torch's DataLoader then races itself: a worker that dies mid-batch, or a
KeyboardInterrupt landing while the main process starts or joins the workers, can hang the
shutdown or print "Exception ignored" lines after the run's own message. Here the workers
ignore SIGINT (they stop when the main process tells them to, or dies), the main process
holds a Ctrl-C back while it starts or stops them or receives a batch from them (so it
takes effect within one batch's wait; a second Ctrl-C is not held back), and the iterator
shuts its workers down as soon as the loop ends, normally or not, instead of whenever it is
garbage-collected.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, List

from torch.utils.data import DataLoader


@contextlib.contextmanager
def sigint_held_back() -> Iterator[None]:
    """Runs the block with Ctrl-C held back, then delivers it (the previous handler runs:
    KeyboardInterrupt), also when the block ended with another exception: the Ctrl-C wins.
    A second Ctrl-C is not held back (a way out of a block that hangs). A process forked
    inside the block inherits the holding handler. Outside the main thread (no signal
    handlers there) a plain block."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None
    ):  # None: a handler set from C
        yield
        return
    came: List[int] = []

    def hold(signum: int, frame: Any) -> None:
        came.append(signum)
        if len(came) > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if len(came) == 1:  # (a second one has raised in the block)
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


def ignore_sigint(worker_id: int) -> None:
    """worker_init_fn: workers started by spawn or forkserver (not forked from the holding
    handler) ignore Ctrl-C too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class WorkerBatches:
    """A DataLoader's iterator whose workers stop when the loop ends: on exhaustion, on any
    exception out of ``next`` (Ctrl-C included), or on ``close()`` (``with closing(...)``
    for exceptions raised in the loop's body)."""

    def __init__(self, iterator: Any) -> None:
        self._it = iterator
        self._closed = False

    def __iter__(self) -> "WorkerBatches":
        return self

    def __len__(self) -> int:
        return len(self._it)

    def __next__(self) -> Any:
        try:
            # held back while a batch arrives: torch passes its tensors as file descriptors,
            # and a receive cut in half makes the worker print a ConnectionResetError
            with sigint_held_back():
                return next(self._it)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shutdown = getattr(self._it, "_shutdown_workers", None)  # torch's, idempotent
        if shutdown is not None:
            with sigint_held_back():
                shutdown()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit: torch's own __del__ still stops them
            pass


class WorkerSafeLoader(DataLoader):
    """A DataLoader (same arguments) whose workers ignore Ctrl-C and are started and
    stopped with Ctrl-C held back; iterating it gives :class:`WorkerBatches`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("persistent_workers"):
            raise ValueError(
                "WorkerSafeLoader stops its workers after every pass: "
                "persistent_workers=True is not supported"
            )
        if kwargs.get("num_workers", 0) > 0 and kwargs.get("worker_init_fn") is None:
            kwargs["worker_init_fn"] = ignore_sigint
        super().__init__(*args, **kwargs)

    def __iter__(self) -> WorkerBatches:  # type: ignore[override]  # wraps torch's iterator

        with sigint_held_back():
            return WorkerBatches(super().__iter__())
