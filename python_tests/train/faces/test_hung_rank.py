"""A rank that hangs under torchrun (issue 26): with --dist-timeout, the other rank stops
within the timeout plus a few seconds, in one line naming the silent rank and where it
was, and the checkpoint of the last finished epoch stays loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from centerloss_ext.train.faces.synthetic import make_synthetic_faces

FAST = [
    *("--arch", "compact", "--image-size", "32", "--feature-dim", "16"),
    *("--batch-size", "4", "--workers", "0", "--no-progress", "--device", "cpu"),
]
TIMEOUT = 8


def _alive(pid: int) -> bool:
    """Whether ``pid`` is still running (a zombie waiting for its parent has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of the worker process of ``rank`` started by the torchrun at ``torchrun_pid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == torchrun_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank's process in /proc")
def test_a_stopped_rank_ends_the_other_within_the_timeout(tmp_path):
    tree = make_synthetic_faces(
        tmp_path / "faces", identities=3, train_per_identity=16, val_per_identity=2, seed=0
    )
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    cmd += ["2", "-m", "centerloss_ext.train.faces", "train", "--input-dir", str(tree)]
    cmd += ["--out", str(out), "--epochs", "50", "--dist-timeout", str(TIMEOUT), *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stopped = None
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").is_file():  # the first epoch is saved
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.2)
        stopped, other = _rank_pid(run.pid, 1), _rank_pid(run.pid, 0)
        assert stopped is not None and other is not None
        os.kill(stopped, signal.SIGSTOP)  # rank 1 hangs, mid-run
        t0 = time.monotonic()
        while _alive(other) and time.monotonic() - t0 < TIMEOUT + 60:
            time.sleep(0.1)
        waited = time.monotonic() - t0  # until rank 0 itself has exited
        os.kill(stopped, signal.SIGKILL)  # rather than wait for torchrun's grace period
        _, err = run.communicate(timeout=120)
    finally:
        if stopped is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(stopped, sig)
                except ProcessLookupError:
                    pass
        if run.poll() is None:
            run.kill()
    lines = [line for line in err.splitlines() if "no answer from" in line]
    assert lines, err
    assert "centerloss-faces: error: rank 0: no answer from rank(s) 1" in lines[0], lines[0]
    assert f"--dist-timeout {TIMEOUT} s at epoch " in lines[0]
    # rank 0 exited within the timeout plus the few seconds it takes to name the silent
    # rank: not torch's 30 minutes
    assert waited < TIMEOUT + 15, waited
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] >= 1
