"""What a run writes and reads back: its output folder (refused when it holds another
run, cleared by --overwrite of what a previous run wrote there and nothing else, removed
again when a run fails before writing anything), atomic checkpoint and JSON writes, and
loading a checkpoint of these scripts. Every file the training commands write goes
through atomic_write; a run holds a lock on its folder (locked_folder, run_folder)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import torch

from .errors import TrainingError, WriteFailed, first_line


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """The one way the training commands write a file: ``write(tmp)`` writes a temporary
    file beside ``path`` (same suffix, so writers that go by it still do), which is synced
    and renamed over ``path``. When anything fails (disk full, I/O error, a kill
    mid-write) ``path`` keeps its previous content, the temporary file is removed, and a
    WriteFailed says so in one line naming the file and the free space left."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        _sync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, TrainingError) or not isinstance(e, Exception):
            raise  # a refusal of the writer's own, or Ctrl-C
        previous = "the previous one is left as it was" if path.exists() else "none was there"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise WriteFailed(
            f"cannot write {path}: {reason} ({free_space(path.parent)} free there); {previous}"
        ) from None
    _sync_folder(path.parent)
    return path


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    try:  # the rename itself on disk; not every file system can sync a folder
        _sync(folder)
    except OSError:
        pass


def free_space(folder: Path) -> str:
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if free < 1024:
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} TiB"


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """torch.save through atomic_write: a failed save leaves the last good checkpoint."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_checkpoint(
    path: Path,
    map_location: Any = "cpu",
    flag: str = "--checkpoint",
    required: Sequence[str] = ("config", "epoch", "history"),
) -> Dict[str, Any]:
    """Loads a checkpoint written by these scripts (tensors and plain Python values only,
    so ``weights_only=True`` loading is safe). A missing, truncated or foreign file, or one
    without the ``required`` entries, is a TrainingError naming ``flag`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{flag} {path}: no such file")
    try:
        ckpt = load_tensors(path, map_location)
    except Exception as e:  # zip reader, unpickler, weights_only refusals: all unreadable
        raise TrainingError(
            f"{flag} {path}: not a readable checkpoint of these scripts "
            f"(truncated, or another kind of file: {first_line(e)})"
        ) from None
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise TrainingError(
            f"{flag} {path}: not a checkpoint of these scripts (no "
            f"{', '.join(missing)}); give the checkpoint.pt that train wrote"
        )
    return ckpt


def load_tensors(path: Path, map_location: Any = "cpu") -> Any:
    """torch.load, bounded: ``weights_only`` (tensors and plain containers, no code run)
    and ``mmap`` (tensor storages are mapped from the file, not read into memory; a
    storage larger than its record in the file is refused), so a crafted file costs at
    most its own size, mapped, plus its pickle's objects."""
    return torch.load(path, map_location=map_location, weights_only=True, mmap=True)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------ output folders


def check_output_folder(
    out: Path, outputs: Sequence[str], overwrite: bool, log: Callable[[str], None] = print
) -> None:
    """Before a fresh run writes to ``out``: a folder holding anything stops it, unless
    ``overwrite``, which deletes what a previous run wrote there (the ``outputs`` glob
    patterns, the files recorded by note_outputs) and nothing else."""
    out = Path(out)
    if not out.is_dir():
        if out.exists():
            raise TrainingError(f"--out {out} is a file: give a folder")
        return
    present = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    if not present:
        return
    if not overwrite:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise TrainingError(
            f"--out {out} is not empty ({shown}): add --resume to continue "
            "the run there, --overwrite to replace it, or choose another --out"
        )
    removed = clear_outputs(out, outputs)
    log(
        f"--overwrite: removed {len(removed)} file{'s' if len(removed) != 1 else ''} of the "
        f"previous run from {out}"
    )


LOCK = ".centerloss.lock"  # a run holds fcntl.flock on it (locked_folder)


@contextmanager
def locked_folder(out: Path) -> Iterator[None]:
    """Holds an advisory lock on ``out`` for the block: fcntl.flock on ``out/LOCK``, which
    holds the pid of the run that has it and is removed when the block ends. A second run
    stops at once in one line naming the folder and that pid; the kernel releases the
    lock of a run that dies, so a killed run's lock file never blocks."""
    out = Path(out)
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise TrainingError(
                f"--out {out} is in use by another run (pid {holder}): wait for it to end, "
                "or choose another --out"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file its holder removed as it ended: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: nobody locks a removed file
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


def _holder(fd: int) -> str:
    for _ in range(20):  # the holder writes its pid just after it took the lock
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.05)
    return "unknown"


@contextmanager
def run_folder(
    out: Path, outputs: Sequence[str], overwrite: bool, resume: bool, log: Callable = print
) -> Iterator[Path]:
    """A training run's --out for the block: created (and removed again, lock file
    included, when the block fails and leaves it empty), locked (locked_folder), and, for
    a fresh run, checked once the lock is held (check_output_folder), so that of two runs
    started together one stops at the lock and never both write."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file: give a folder")
    with output_folder(out), locked_folder(out):
        if not resume:
            check_output_folder(out, outputs, overwrite, log)
        yield out


_NOTED = ".centerloss_outputs"  # names (relative to the folder) of files jobs wrote there


def note_outputs(folder: Path, *names: str) -> None:
    """Records files a job wrote in ``folder`` that --overwrite may later delete, when
    ``folder`` holds a training run (elsewhere there is nothing to overwrite)."""
    if not (Path(folder) / "checkpoint.pt").is_file():
        return
    record = Path(folder) / _NOTED
    known = set(record.read_text().split("\n")) if record.is_file() else set()
    write_text(record, "\n".join(sorted((known | set(names)) - {""})) + "\n")


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
        for folder in created:  # deepest first
            _remove_if_unused(folder)
        raise


def _remove_if_unused(folder: Path) -> None:
    """Removes ``folder`` when it holds nothing but a lock file that no run holds. Of two
    runs started together, both may have created it: the one that lost the lock must not
    remove it (and its lock file) from under the one that holds it and writes there next.
    The lock is held while removing, so a run that starts meanwhile finds it taken."""
    if not folder.is_dir() or any(p.name != LOCK for p in folder.iterdir()):
        return
    try:
        fd = os.open(folder / LOCK, os.O_RDWR)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (folder / LOCK).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:  # held by another run (BlockingIOError), or a file arrived: keep it
        pass
    finally:
        if fd is not None:
            os.close(fd)
