"""Faults a long run meets (issue 26; docs/reliability.md lists them with these tests):
a write that fails at each file a run writes (the previous file stays, one line, exit 1,
--resume goes on), two runs into one --out (one stops at the lock), a killed run's lock,
and hostile inputs (IDX headers, decompression bombs, symlink loops, unreadable folders)."""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import pytest
import torch

from centerloss_ext.train.core import files
from centerloss_ext.train.core.errors import DataError, TrainingError, WriteFailed
from centerloss_ext.train.faces import cli as faces
from centerloss_ext.train.faces.data import ImageListDataset, list_images, scan_identity_folder
from centerloss_ext.train.faces.synthetic import make_synthetic_faces
from centerloss_ext.train.mnist.data import read_idx

FAST = [
    *("--arch", "compact", "--image-size", "32", "--feature-dim", "32"),
    *("--batch-size", "16", "--workers", "0", "--no-progress", "--device", "cpu"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_synthetic_faces(
        tmp_path_factory.mktemp("faces"),
        identities=3,
        train_per_identity=8,
        val_per_identity=2,
        unseen=0,
        image_size=32,
        seed=0,
    )


def _train(tree, out, *extra):
    return faces.main(["train", "--input-dir", str(tree), "--out", str(out), *FAST, *extra])


def _disk_full_at(monkeypatch, name, after=0):
    """The writes of a file called ``name`` fail as on a full disk (the writer has
    written part of it) once ``after`` of them succeeded; returns what was kept of it
    just before the first failure (None: there was no such file)."""
    sync = files._sync
    kept = {}

    def failing(tmp):
        if tmp.name.startswith(f".{os.path.splitext(name)[0]}.") and tmp.suffix in name:
            if kept.setdefault("writes", 0) >= after:
                final = tmp.with_name(name)
                kept.setdefault("before", final.read_bytes() if final.exists() else None)
                with open(tmp, "r+b") as f:
                    f.truncate(max(tmp.stat().st_size // 2, 1))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            kept["writes"] += 1
        sync(tmp)

    monkeypatch.setattr(files, "_sync", failing)
    return kept


def _one_line_exit_1(capsys, fn) -> str:
    with pytest.raises(SystemExit) as e:
        fn()
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ failed writes


def test_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"epoch": 1})
    _disk_full_at(monkeypatch, "metrics.json")
    with pytest.raises(WriteFailed) as e:
        files.write_json(path, {"epoch": 2})
    line = str(e.value)
    assert str(path) in line and "No space left on device" in line and "free there" in line
    assert "previous one is left" in line
    assert path.read_text().strip().replace("\n", "").replace(" ", "") == '{"epoch":1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary


@pytest.mark.parametrize(
    "name, after, saved",  # saved: the epoch of the checkpoint left
    [("checkpoint.pt", 1, 1), ("metrics.json", 1, 2), ("curves.png", 0, 2), ("roc.png", 1, 1)],
)
def test_a_failed_write_stops_the_run_and_resume_goes_on(
    tree, tmp_path, monkeypatch, capsys, name, after, saved
):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        kept = _disk_full_at(m, name, after)
        line = _one_line_exit_1(capsys, lambda: _train(tree, out, "--epochs", "2"))
    assert f"cannot write {out / name}: No space left on device" in line, line
    assert "free there" in line, line
    if kept["before"] is None:
        assert not (out / name).exists() and "none was there" in line
    else:  # the previous good file, untouched
        assert (out / name).read_bytes() == kept["before"] and "previous one is left" in line
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == saved
    result = _train(tree, out, "--epochs", "2", "--resume")  # goes on from the checkpoint
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert (out / name).is_file()


def test_embeddings_and_scores_go_through_the_same_path(tree, tmp_path, monkeypatch, capsys):
    from centerloss_ext.train.faces.enroll import save_embeddings

    path = tmp_path / "gallery.npz"
    save_embeddings(path, torch.zeros(2, 3), ["a", "b"], ["x", "y"], {})
    before = path.read_bytes()
    _disk_full_at(monkeypatch, "gallery.npz")
    with pytest.raises(WriteFailed, match="gallery.npz"):
        save_embeddings(path, torch.ones(2, 3), ["a", "b"], ["x", "y"], {})
    assert path.read_bytes() == before


# ------------------------------------------------------------------ the lock on --out


def test_the_run_that_loses_the_lock_leaves_the_folder_to_the_winner(tmp_path):
    """Both runs found --out missing and created it; the loser's clean-up (no empty folder
    after a failure) must not remove the folder, or its lock file, from under the winner
    (in CI the winner's next write failed: 'roc.png: No such file or directory')."""
    out = tmp_path / "run"
    with contextlib.ExitStack() as loser:
        loser.enter_context(files.output_folder(out))  # the loser created it first
        with files.output_folder(out), files.locked_folder(out):  # the winner
            with pytest.raises(TrainingError, match="in use by another run"):
                with loser:
                    loser.enter_context(files.locked_folder(out))
            assert (out / files.LOCK).is_file()
            files.write_text(out / "metrics.json", "{}\n")  # the winner writes on
    assert (out / "metrics.json").is_file()


def test_two_runs_started_together_never_both_write(tree, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "centerloss_ext.train.faces", "train"]
    cmd += ["--input-dir", str(tree), "--out", str(out), "--epochs", "2", *FAST]
    runs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [r.wait(timeout=300) for r in runs]
    errs = [r.stderr.read() if r.stderr else "" for r in runs]
    assert sorted(codes) == [0, 2], (codes, errs)
    loser = errs[codes.index(2)].strip()
    winner = runs[codes.index(0)].pid
    # either it met the lock, or (it came late) the finished run's files
    assert (f"--out {out} is in use by another run (pid {winner})" in loser) or (
        "is not empty" in loser
    ), loser
    assert "\n" not in loser
    assert not (out / files.LOCK).exists()


def test_a_held_lock_stops_a_second_run_and_a_killed_runs_does_not(tmp_path):
    hold = (
        "import sys, time; from centerloss_ext.train.core.files import locked_folder\n"
        "with locked_folder(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match=f"in use by another run \\(pid {holder.pid}\\)"):
            with files.locked_folder(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / files.LOCK).exists()  # left by the killed run, but not locked
    with files.locked_folder(tmp_path):
        assert (tmp_path / files.LOCK).read_text().strip() == str(os.getpid())
    assert not (tmp_path / files.LOCK).exists()


# ------------------------------------------------------------------ hostile inputs


def test_an_idx_header_is_checked_against_the_file_size(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 0x803, 4_000_000_000, 28, 28) + bytes(100))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="more than the 116-byte file can hold"):
        read_idx(path, 3)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match="more than the"):
        read_idx(gz, 3)
    assert time.perf_counter() - t0 < 1.0  # refused from the header, nothing allocated
    path.write_bytes(struct.pack(">IIII", 0x803, 2, 2, 2) + bytes(range(8)))
    assert read_idx(path, 3).tolist() == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]


def _png_claiming(width, height) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\0\0\0\0")
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )


@pytest.mark.parametrize("side", [12_000, 20_000])  # 144 MP (ours), 400 MP (PIL's own)
def test_a_decompression_bomb_is_one_line(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(side, side))
    with pytest.raises(DataError) as e:
        ImageListDataset([(path, 0)])[0]
    assert f"image {path}" in str(e.value) and "\n" not in str(e.value)


def test_max_image_pixels_sets_the_limit(tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _train(tree, tmp_path / "run", "--epochs", "1", "--max-image-pixels", "100")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "32x32 pixels, more than the limit of 100" in err and "--max-image-pixels" in err


def test_a_symlink_loop_is_refused(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.png").write_bytes(b"")
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a")
    with pytest.raises(DataError, match="reached twice through symlinks"):
        list_images(tmp_path / "a")
    with pytest.raises(DataError, match="reached twice through symlinks"):
        scan_identity_folder(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder_is_refused(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b").chmod(0)
    try:
        with pytest.raises(DataError, match="cannot read folder"):
            list_images(tmp_path / "a")
    finally:
        (tmp_path / "a" / "b").chmod(0o755)


def test_an_unreadable_folder_is_refused_also_as_root(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)

    def walk(top, onerror=None, followlinks=False):
        onerror(PermissionError(errno.EACCES, "Permission denied", str(top)))
        return iter(())

    monkeypatch.setattr(os, "walk", walk)
    with pytest.raises(DataError, match=f"cannot read folder {tmp_path / 'a'}: Permission"):
        list_images(tmp_path / "a")
