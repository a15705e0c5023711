"""What a run writes and reads back: its output folder (refused when it holds another
run, cleared by --overwrite of what a previous run wrote there and nothing else, removed
again when a run fails before writing anything), atomic checkpoint and JSON writes, and
loading a checkpoint of these scripts."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import torch

from .errors import TrainingError, first_line


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
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
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


def write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


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
    present = sorted(p.name for p in out.iterdir())
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


_NOTED = ".centerloss_outputs"  # names (relative to the folder) of files jobs wrote there


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
        for folder in created:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
