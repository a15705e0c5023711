"""Ctrl-C with data-loading worker processes (centerloss_ext/train/core/workers.py): the
workers ignore it, the main process holds it back while it starts or stops them, and the
iterator stops them when the loop ends; a real SIGINT to the process group, landing
anywhere in a loop that starts and stops workers all the time, ends the run with exactly
its one line."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch.utils.data import Dataset

from centerloss_ext.train.core.workers import WorkerBatches, WorkerSafeLoader, sigint_held_back


class Numbers(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor([float(i)])


def test_a_ctrl_c_inside_the_block_comes_after_it():
    before = signal.getsignal(signal.SIGINT)  # run_cli's, after an in-process main()
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt):
        with sigint_held_back():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler that raised would do so here
            reached_the_end = True
    assert reached_the_end
    assert signal.getsignal(signal.SIGINT) is before


def test_a_held_back_ctrl_c_wins_over_the_blocks_own_exception():
    with pytest.raises(KeyboardInterrupt):
        with sigint_held_back():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            raise StopIteration  # the last batch came with the Ctrl-C


def test_a_second_ctrl_c_is_not_held_back():
    before = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_held_back():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached.append(2)  # not reached: the second one raised
    assert reached == [1]
    assert signal.getsignal(signal.SIGINT) is before


def test_a_block_without_ctrl_c_runs_as_usual():
    before = signal.getsignal(signal.SIGINT)
    with sigint_held_back():
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_batches_are_a_plain_loaders_and_the_workers_stop_at_the_end():
    loader = WorkerSafeLoader(Numbers(), batch_size=5, num_workers=2)
    batches = iter(loader)
    assert isinstance(batches, WorkerBatches) and len(batches) == 3
    assert multiprocessing.active_children()
    got = torch.cat(list(batches)).flatten().tolist()
    assert got == [float(i) for i in range(12)]
    assert not multiprocessing.active_children()  # stopped on exhaustion


def test_close_stops_the_workers_of_an_unfinished_loop():
    batches = iter(WorkerSafeLoader(Numbers(), batch_size=2, num_workers=2))
    next(batches)
    assert multiprocessing.active_children()
    batches.close()
    assert not multiprocessing.active_children()


def test_persistent_workers_are_refused():
    with pytest.raises(ValueError, match="persistent_workers"):
        WorkerSafeLoader(Numbers(), num_workers=1, persistent_workers=True)


# A loop shaped like the training loop's (a short pass, so the workers start and stop
# several times a second), under run_cli; "ready" once the first pass began.
CHILD = textwrap.dedent("""
    import sys, time
    import torch
    from torch.utils.data import DataLoader, Dataset
    from centerloss_ext.train.core.cli import run_cli
    from centerloss_ext.train.core.workers import WorkerSafeLoader

    class Slow(Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            time.sleep(0.01)
            return torch.ones(64)

    def train():
        cls = WorkerSafeLoader if sys.argv[1] == "safe" else DataLoader
        loader = cls(Slow(), batch_size=2, num_workers=2)
        first = True
        while True:
            batches = iter(loader)
            try:
                for x in batches:
                    if first:
                        print("ready", flush=True)
                        first = False
                    (x @ x.T).sum()
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()

    run_cli("child", train)
""")


def interrupt_runs(kind: str, delays):
    """Starts one child per delay, sends each a process-group SIGINT that many seconds
    after it is ready; returns (exit status or None if it hung, stderr) per child."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        for _ in delays
    ]
    results = []
    try:
        for proc, delay in zip(procs, delays):
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)
        for proc in procs:
            try:
                _, stderr = proc.communicate(timeout=30)
                results.append((proc.returncode, stderr))
            except subprocess.TimeoutExpired:
                results.append((None, "hung"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return results


def test_a_real_ctrl_c_anywhere_in_the_loop_gives_one_line_and_no_hang():
    """Eight Ctrl-Cs at random moments of a loop that starts and stops its two workers
    about ten times a second. With torch's plain DataLoader in its place, runs of this
    test saw hangs and "Exception ignored" / worker tracebacks in about half the
    children (see the commit that added it)."""
    delays = [0.05 + 0.07 * i for i in range(8)]  # spread over a few passes
    for delay, (status, stderr) in zip(delays, interrupt_runs("safe", delays)):
        assert status == 130 and stderr.strip() == "child: interrupted", (delay, status, stderr)
