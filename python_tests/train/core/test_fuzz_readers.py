"""Fuzzed inputs to the readers of the training commands (issue 26): IDX files,
identity folders, checkpoints, embeddings files, pairs.txt and insightface .bin. Each
gives a correct result or one line (DataError / TrainingError), never another exception.
The `ci` hypothesis profile runs 10x its examples per reader here (a few thousand in all),
`thorough` more; each example is a file of at most a few KiB, mutated from a valid one."""

from __future__ import annotations

import io
import pickle
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from centerloss_ext.train.core.errors import TrainingError
from centerloss_ext.train.core.files import load_checkpoint
from centerloss_ext.train.faces.data import scan_identity_folder
from centerloss_ext.train.faces.enroll import load_embeddings, save_embeddings
from centerloss_ext.train.faces.pairs import read_bin, read_pairs_txt
from centerloss_ext.train.mnist.data import read_idx

MANY = settings(max_examples=settings().max_examples * 10)


def _valid_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"config": {}, "epoch": 1, "history": [], "w": torch.ones(3)}, buf)
    return buf.getvalue()


def _valid_embeddings(suffix: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"e{suffix}"
        save_embeddings(path, torch.eye(2), ["a.png", "b.png"], ["x", "y"], {"k": 1})
        return path.read_bytes()


def _valid_bin() -> bytes:
    return pickle.dumps(([b"\x89PNG"] * 20, [True, False] * 5), protocol=2)


SEEDS = {
    ".idx": struct.pack(">IIII", 0x803, 2, 2, 2) + bytes(8),
    ".pt": _valid_checkpoint(),
    ".npz": _valid_embeddings(".npz"),
    ".ept": _valid_embeddings(".pt"),
    ".bin": _valid_bin(),
    ".txt": b"2 1\na 1 2\na 1 b 1\nb 1 2\nb 1 a 2\n",
}


def _mutated(kind: str):
    """The valid file of ``kind`` with a few bytes changed, cut or inserted, or random
    bytes outright."""
    seed = SEEDS[kind]
    edits = st.lists(
        st.tuples(st.integers(0, max(len(seed) - 1, 0)), st.integers(0, 255), st.integers(0, 2)),
        max_size=8,
    )

    def apply(e) -> bytes:
        data = bytearray(seed)
        for pos, value, how in e:
            pos = min(pos, len(data))
            if how == 0 and pos < len(data):
                data[pos] = value
            elif how == 1:
                data.insert(pos, value)
            else:
                del data[pos : pos + value % 64]
        return bytes(data)

    return st.one_of(edits.map(apply), st.binary(max_size=512), st.just(seed[: len(seed) // 2]))


def _check(read, data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"file{suffix}"
        path.write_bytes(data)
        try:
            read(path)
        except TrainingError as e:  # DataError is one too
            assert "\n" not in str(e).strip(), str(e)


@MANY
@given(_mutated(".idx"), st.sampled_from([1, 3]))
def test_idx(data, ndim):
    def read(path):
        arr = read_idx(path, ndim)
        assert arr.ndim == ndim and arr.size == len(data) - 4 - 4 * ndim

    _check(read, data, "")


@MANY
@given(_mutated(".pt"))
def test_checkpoint(data):
    _check(lambda p: load_checkpoint(p), data, ".pt")


@MANY
@given(_mutated(".npz"))
def test_embeddings_npz(data):
    def read(path):
        features, paths, labels, meta = load_embeddings(path)
        assert features.shape[0] == len(paths) == len(labels) and isinstance(meta, dict)

    _check(read, data, ".npz")


@MANY
@given(_mutated(".ept"))
def test_embeddings_pt(data):
    def read(path):
        features, paths, labels, meta = load_embeddings(path)
        assert features.shape[0] == len(paths) == len(labels) and isinstance(meta, dict)

    _check(read, data, ".pt")


@MANY
@given(_mutated(".bin"))
def test_bin(data):
    def read(path):
        pairs = read_bin(path)
        assert len(pairs.images) == 2 * len(pairs) and all(
            isinstance(b, bytes) for b in pairs.images
        )

    _check(read, data, ".bin")


@MANY
@given(_mutated(".txt"))
def test_pairs_txt(data):
    with tempfile.TemporaryDirectory() as d:
        for name in ("a", "b"):
            (Path(d) / name).mkdir()
            for i in (1, 2):
                (Path(d) / name / f"{name}_{i:04d}.jpg").write_bytes(b"")

        def read(path):
            pairs = read_pairs_txt(path, Path(d))
            assert len(pairs.same) == len(pairs.left) == len(pairs.right) == len(pairs)

        _check(read, data, ".txt")


NAMES = st.text(st.sampled_from("ab.-_ x"), min_size=1, max_size=4)


@settings(max_examples=settings().max_examples * 2)
@given(
    st.lists(
        st.tuples(NAMES, NAMES, st.sampled_from(["file", "png", "dir", "link", "loop"])),
        max_size=6,
    )
)
def test_identity_folders(entries):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "train"
        root.mkdir()
        for ident, name, kind in entries:
            folder = root / ident
            try:
                folder.mkdir(exist_ok=True)
                target = folder / (name + (".png" if kind == "png" else ""))
                if kind == "dir":
                    target.mkdir()
                elif kind == "link":
                    target.symlink_to(root / "a")
                elif kind == "loop":
                    target.symlink_to(folder)
                else:
                    target.write_bytes(b"")
            except (OSError, ValueError):
                continue  # a name the file system refuses, or one used twice
        try:
            split = scan_identity_folder(root)
        except TrainingError as e:
            assert "\n" not in str(e).strip(), str(e)
            return
        assert split.samples and all(p.is_file() for p, _ in split.samples)
