"""Verification sets as the face literature scores them: LFW's ``pairs.txt`` over a folder
of images, and insightface's ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...).

``pairs.txt``: a header ``<folds> <n>`` (LFW: ``10 300``), then for each fold n matched
lines ``name i j`` and n mismatched lines ``name1 i name2 j`` (tab- or space-separated);
image i of ``name`` is ``<images>/<name>/<name>_<i:04d>.<jpg|jpeg|png>``.

``.bin``: a pickle of ``(bins, issame_list)``: 2N encoded images (JPEG/PNG bytes), pair k
being ``bins[2k]``, ``bins[2k+1]``, and N booleans; the pairs form 10 consecutive folds
(sizes as scikit-learn's KFold makes them, as insightface scores them). It is read with an
unpickler that builds no object of any class: only tuples, lists, dicts, bytes, str,
bool, int, float and None load (bytes also as protocol 2 writes them, through a function
of ours that only turns a str into latin-1 bytes), so nothing in the file runs. Python 2
pickles load (``encoding="bytes"``).

Every malformed input is a DataError of one line naming the file (and the line)."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from ..core.errors import DataError
from .data import open_rgb

BIN_FOLDS = 10
PAIR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")

ImageSource = Union[Path, bytes]


@dataclass
class PairSet:
    """A verification set: ``images`` (paths or encoded bytes) in pair order, pair k being
    images 2k and 2k+1; ``same`` and ``fold`` per pair; ``left``/``right`` name each pair's
    images in scores.csv (paths relative to the images folder, or indexes into the
    ``.bin``)."""

    source: str
    images: List[ImageSource]
    same: np.ndarray
    fold: np.ndarray
    left: List[str]
    right: List[str]

    def __len__(self) -> int:
        return len(self.same)


def _latin1(text: object, encoding: object = "latin1") -> bytes:
    """What ``_codecs.encode`` may do here: Python 3 writes bytes in pickle protocols 0-2
    as ``_codecs.encode(str, "latin1")``; nothing else is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("it calls _codecs.encode other than for bytes")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """What ``builtins.bytes`` may do here: ``bytes()``, an empty bytes in protocols 0-2."""
    if args:
        raise pickle.UnpicklingError("it calls bytes() with arguments")
    return b""


# the only globals admitted, each a function of our own that makes bytes and nothing else
_ADMITTED = {
    ("_codecs", "encode"): _latin1,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}


class _NoObjects(pickle._Unpickler):
    """Refuses every global but the bytes makers of _ADMITTED: no class, function or reduce
    target can be named, so only the pickle's built-in containers and scalars come back."""

    def find_class(self, module: str, name: str):  # noqa: D102
        admitted = _ADMITTED.get((module, name))
        if admitted is None:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is refused")
        return admitted

    def persistent_load(self, pid):  # noqa: D102
        raise pickle.UnpicklingError("it holds a persistent id, which is refused")


def read_bin(path: Path) -> PairSet:
    """An insightface ``.bin`` verification set (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        # read whole, unpickled from memory by the pure-Python unpickler: a length in the
        # pickle (bytes, frame) never reads or allocates beyond the file's size, and its
        # memo is a dict (the C unpickler sizes an array by a memo index the file names)
        loaded = _NoObjects(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as e:  # refused globals, truncation, not a pickle at all
        raise DataError(
            f"{path}: not a verification .bin of (images, issame) ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'unreadable'})"
        ) from None
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise DataError(f"{path}: expected a pickled pair (images, issame_list)")
    bins, issame = loaded
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise DataError(f"{path}: expected lists of images and of booleans")
    if len(bins) % 2:
        raise DataError(f"{path}: an odd number of images ({len(bins)}); pairs need two each")
    if len(bins) != 2 * len(issame):
        raise DataError(
            f"{path}: {len(bins)} images but {len(issame)} same/different flags "
            f"(expected {2 * len(issame)} images)"
        )
    bad = next((k for k, b in enumerate(bins) if not isinstance(b, (bytes, bytearray))), None)
    if bad is not None:
        raise DataError(f"{path}: image {bad} is a {type(bins[bad]).__name__}, not encoded bytes")
    flags = [v for v in issame if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1))]
    if len(flags) != len(issame):
        raise DataError(f"{path}: the same/different flags must be booleans")
    n = len(issame)
    if n < BIN_FOLDS:
        raise DataError(f"{path}: {n} pairs, fewer than the protocol's {BIN_FOLDS} folds")
    return PairSet(
        str(path),
        [bytes(b) for b in bins],
        np.array(flags, dtype=bool),
        kfold_index(n, BIN_FOLDS),
        [str(2 * k) for k in range(n)],
        [str(2 * k + 1) for k in range(n)],
    )


def kfold_index(n: int, folds: int) -> np.ndarray:
    """The fold of each of n items in consecutive folds, the first ``n % folds`` one item
    larger (scikit-learn's KFold without shuffling)."""
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    return np.repeat(np.arange(folds), sizes)


def _image_path(images: Path, name: str, number: int, where: str) -> Path:
    stem = images / name / f"{name}_{number:04d}"
    for ext in PAIR_IMAGE_EXTENSIONS:
        for suffix in (ext, ext.upper()):
            if stem.with_name(f"{stem.name}.{suffix}").is_file():
                return stem.with_name(f"{stem.name}.{suffix}")
    raise DataError(f"{where}: no image {stem}.jpg (nor .jpeg, .png)")


def _number(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not an image number") from None
    if value < 0:
        raise DataError(f"{where}: {text!r} is not an image number")
    return value


def read_pairs_txt(path: Path, images: Optional[Path]) -> PairSet:
    """LFW's ``pairs.txt`` over ``images`` (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if images is None:
        raise DataError(f"{path}: a pairs.txt needs --images, the folder of its name folders")
    images = Path(images)
    if not images.is_dir():
        raise DataError(f"--images {images}: not a folder")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    numbered = [(k + 1, line.split()) for k, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise DataError(f"{path}: empty")
    line_no, header = numbered[0]
    where = f"{path} line {line_no}"
    if len(header) != 2:
        raise DataError(f"{where}: the header must be '<folds> <pairs per kind per fold>'")
    folds, per = (_number(v, where) for v in header)
    if folds < 2 or per < 1:
        raise DataError(f"{where}: need at least 2 folds of at least 1 pair each")
    body = numbered[1:]
    if len(body) != 2 * folds * per:
        raise DataError(
            f"{path}: {len(body)} pair lines, but the header promises {folds} folds of "
            f"{per} matched + {per} mismatched = {2 * folds * per}"
        )
    sources: List[ImageSource] = []
    same: List[bool] = []
    fold: List[int] = []
    left: List[str] = []
    right: List[str] = []
    for k, (line_no, fields) in enumerate(body):
        where = f"{path} line {line_no}"
        matched = (k % (2 * per)) < per
        if matched and len(fields) != 3:
            raise DataError(f"{where}: a matched pair is 'name i j'; got {len(fields)} fields")
        if not matched and len(fields) != 4:
            raise DataError(
                f"{where}: a mismatched pair is 'name1 i name2 j'; got {len(fields)} fields"
            )
        if matched:
            a, b = (fields[0], _number(fields[1], where)), (fields[0], _number(fields[2], where))
        else:
            a, b = (fields[0], _number(fields[1], where)), (fields[2], _number(fields[3], where))
        for (name, number), names in ((a, left), (b, right)):
            p = _image_path(images, name, number, where)
            sources.append(p)
            names.append(p.relative_to(images).as_posix())
        same.append(matched)
        fold.append(k // (2 * per))
    return PairSet(str(path), sources, np.array(same, dtype=bool), np.array(fold), left, right)


def read_pair_set(path: Path, images: Optional[Path] = None) -> PairSet:
    """A ``.bin`` (by its extension) or a ``pairs.txt`` with its images folder."""
    if Path(path).suffix.lower() == ".bin":
        if images is not None:
            raise DataError(f"{path}: a .bin holds its images; drop --images")
        return read_bin(Path(path))
    return read_pairs_txt(Path(path), images)


class PairImages(Dataset):
    """The images of a PairSet as (image, index): files or encoded bytes, decoded as RGB;
    an unreadable one is a DataError naming it."""

    def __init__(self, pairs: PairSet, transform) -> None:
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs.images)

    def __getitem__(self, index: int) -> Tuple[object, int]:
        source = self.pairs.images[index]
        name = source if isinstance(source, Path) else f"{self.pairs.source} image {index}"
        image = open_rgb(io.BytesIO(source) if isinstance(source, bytes) else source, name)
        return self.transform(image), index


def parse_named_sets(specs: Sequence[str]) -> List[Tuple[str, str, Optional[str]]]:
    """``NAME=FILE`` or ``NAME=FILE:IMAGES`` (a pairs.txt and its images folder) as
    (name, file, images); a FILE that exists whole is taken whole, colon and all."""
    out = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise DataError(f"--verify {spec}: expected NAME=FILE or NAME=PAIRS.txt:IMAGES")
        if not name.replace("_", "").replace("-", "").isalnum():
            raise DataError(f"--verify {spec}: NAME takes letters, digits, - and _ only")
        file, images = rest, None
        if not Path(rest).exists() and ":" in rest:
            file, _, images = rest.rpartition(":")
        out.append((name, file, images))
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise DataError(f"--verify: a name given twice ({', '.join(names)})")
    return out
