"""Standard verification sets (issue 23): the 10-fold protocol against a hand-computed
example, `verify` on a pairs.txt and on a .bin of the same pairs (identical scores,
recomputable from scores.csv), `train --verify`, hostile pickles refused without running
anything, and one line (exit 2) for each malformed input."""

from __future__ import annotations

import csv
import io
import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from centerloss_ext.train.core.errors import DataError
from centerloss_ext.train.core.metrics import fold_threshold, kfold_verification
from centerloss_ext.train.faces import cli as faces
from centerloss_ext.train.faces.pairs import kfold_index, read_bin, read_pairs_txt
from centerloss_ext.train.faces.synthetic import make_synthetic_faces

FAST = ["--arch", "compact", "--image-size", "32", "--feature-dim", "16"]
RUNTIME = ["--batch-size", "8", "--workers", "0", "--device", "cpu"]
NAMES = [f"person_{k}" for k in range(5)]


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        faces.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_synthetic_faces(
        tmp_path_factory.mktemp("verify"),
        identities=5,
        train_per_identity=4,
        val_per_identity=4,
        unseen=0,
        image_size=32,
        seed=1,
        names=NAMES,
    )


@pytest.fixture(scope="module")
def lfw(tree):
    """LFW's layout from val/: <root>/lfw/<name>/<name>_<i:04d>.png (1-based), a pairs.txt
    of 10 folds of 1 matched + 1 mismatched pair, and a .bin of the same pairs."""
    root = tree / "lfw"
    for name in NAMES:
        (root / name).mkdir(parents=True)
        for i, src in enumerate(sorted((tree / "val" / name).iterdir()), 1):
            shutil.copy(src, root / name / f"{name}_{i:04d}.png")
    lines, bins, issame = ["10\t1"], [], []
    for k in range(10):
        a, b = NAMES[k % 5], NAMES[(k + 1) % 5]
        i, j, n = 1 + k % 4, 1 + (k + 1) % 4, 1 + (k + 2) % 4
        lines += [f"{a}\t{i}\t{j}", f"{a}\t{i}\t{b}\t{n}"]
        for name, number in ((a, i), (a, j), (a, i), (b, n)):
            bins.append((root / name / f"{name}_{number:04d}.png").read_bytes())
        issame += [True, False]
    (tree / "pairs.txt").write_text("\n".join(lines) + "\n")
    with open(tree / "lfw.bin", "wb") as f:
        pickle.dump((bins, issame), f, protocol=2)
    return tree / "pairs.txt", root, tree / "lfw.bin"


@pytest.fixture(scope="module")
def checkpoint(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify_run")
    faces.main(
        ["train", "--input-dir", str(tree), "--out", str(out), "--epochs", "1", "--no-progress"]
        + FAST
        + RUNTIME
    )
    return out / "checkpoint.pt"


def test_fold_threshold_by_hand():
    # candidates -0.9, 0.225, 0.375, 0.6, 1.8: 0.375 alone gets all four right
    assert fold_threshold(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 1, 0, 1])) == 0.375
    # -0.8 and 0.6 both get 2 of 3: the smaller wins
    assert fold_threshold(np.array([0.2, 0.5, 0.7]), np.array([1, 0, 1])) == pytest.approx(-0.8)


def test_kfold_protocol_by_hand():
    scores = [0.9, 0.1, 0.6, 0.5, 0.3, 0.2]
    same = [True, False, True, False, True, False]
    result = kfold_verification(np.array(scores), np.array(same), [0, 0, 1, 1, 2, 2])
    # fold 0: threshold 0.25 from folds 1-2 (first of three at 3/4), both right
    # fold 1: 0.25 from folds 0 and 2 (all right there), 0.5 >= 0.25 is a false accept
    # fold 2: 0.55 from folds 0-1, 0.3 < 0.55 is a false reject
    assert [f["threshold"] for f in result["folds"]] == pytest.approx([0.25, 0.25, 0.55])
    assert [f["accuracy"] for f in result["folds"]] == [1.0, 0.5, 0.5]
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["accuracy_std"] == pytest.approx(np.sqrt(1 / 18))  # population std


def test_kfold_index_is_sklearns_kfold():
    assert kfold_index(23, 10).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] + [
        k for k in range(3, 10) for _ in range(2)
    ]


def _verify(checkpoint, pairs, out, *extra):
    return faces.main(
        ["verify", "--checkpoint", str(checkpoint), "--pairs", str(pairs), "--out", str(out)]
        + list(extra)
        + RUNTIME
    )


def _scores(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("flip", [False, True])
def test_pairs_txt_and_bin_give_the_same_scores(lfw, checkpoint, tmp_path, flip):
    pairs_txt, images, bin_file = lfw
    extra = ["--flip"] if flip else []
    by_txt = _verify(checkpoint, pairs_txt, tmp_path / "txt", "--images", str(images), *extra)
    by_bin = _verify(checkpoint, bin_file, tmp_path / "bin", *extra)
    rows_txt, rows_bin = (
        _scores(tmp_path / "txt" / "scores.csv"),
        _scores(tmp_path / "bin" / "scores.csv"),
    )
    assert len(rows_txt) == len(rows_bin) == 20
    assert [r["score"] for r in rows_txt] == [r["score"] for r in rows_bin]
    assert [(r["fold"], r["same"]) for r in rows_txt] == [(r["fold"], r["same"]) for r in rows_bin]
    assert rows_txt[1]["left"] == "person_0/person_0_0001.png" and rows_bin[1]["right"] == "3"
    for key in ("accuracy", "accuracy_std", "folds", "roc_auc", "tar_at_far", "pairs"):
        assert by_txt[key] == by_bin[key], key
    assert by_txt["pairs"] == 20 and set(by_txt["tar_at_far"]) == {"0.001", "0.01"}
    assert by_txt["flip"] is flip
    for name in ("scores.csv", "metrics.json", "roc.png"):
        assert (tmp_path / "bin" / name).is_file()

    # anyone can recompute the protocol from scores.csv alone
    rows = rows_bin
    again = kfold_verification(
        np.array([float(r["score"]) for r in rows]),
        np.array([r["same"] == "1" for r in rows]),
        [int(r["fold"]) for r in rows],
    )
    written = json.loads((tmp_path / "bin" / "metrics.json").read_text())
    assert again["folds"] == written["folds"] and again["accuracy"] == written["accuracy"]


def test_verify_after_flip_differs_and_score_is_cosine(lfw, checkpoint, tmp_path):
    import torch

    from centerloss_ext.train.faces.evaluate import checkpoint_extraction
    from centerloss_ext.train.faces.model import Runtime, load_face_model
    from centerloss_ext.train.faces.verify import pair_scores

    pairs = read_bin(lfw[2])
    model, _, ckpt = load_face_model(checkpoint, torch.device("cpu"))
    how = checkpoint_extraction(ckpt, torch.device("cpu"), None, Runtime("cpu", 8, 0, "off"))
    plain, flipped = pair_scores(model, pairs, how), pair_scores(model, pairs, how, flip=True)
    assert plain.shape == (20,) and np.abs(plain).max() <= 1 + 1e-6
    assert not np.allclose(plain, flipped)


def test_train_scores_verify_sets(tree, lfw, tmp_path):
    pairs_txt, images, bin_file = lfw
    result = faces.main(
        [
            "train",
            "--input-dir",
            str(tree),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--no-progress",
            "--verify",
            f"lfwbin={bin_file}",
            "--verify",
            f"lfwtxt={pairs_txt}:{images}",
        ]
        + FAST
        + RUNTIME
    )
    final = result["final"]
    assert final["verify_lfwbin_accuracy"] == final["verify_lfwtxt_accuracy"]
    for key in ("accuracy_std", "roc_auc", "tar@far=0.001", "tar@far=0.01"):
        assert f"verify_lfwbin_{key}" in final
    # the scores of training's evaluation are those `verify` gives for the checkpoint
    again = _verify(tmp_path / "run" / "checkpoint.pt", bin_file, tmp_path / "v")
    assert again["accuracy"] == final["verify_lfwbin_accuracy"]


class _Touch:
    """Unpickling this would create ``marker`` (pathlib.Path.touch): the hostile payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_hostile_pickles_run_nothing(tmp_path, capsys, checkpoint):
    marker = tmp_path / "pwned"
    hostile = {
        "reduce.bin": pickle.dumps(([b"x", b"y"], [_Touch(marker)])),
        "top.bin": pickle.dumps(_Touch(marker)),
        "numpy.bin": pickle.dumps((np.zeros(2, np.uint8), [True])),
        "noise.bin": b"\x00not a pickle at all",
    }
    for name, data in hostile.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=name):
            read_bin(tmp_path / name)
        err = _error(
            capsys,
            ["verify", "--checkpoint", str(checkpoint), "--pairs", str(tmp_path / name)]
            + ["--out", str(tmp_path / "o")]
            + RUNTIME,
        )
        assert name in err
        assert not marker.exists(), name
    with pytest.raises(DataError, match="pathlib"):
        read_bin(tmp_path / "reduce.bin")
    with pytest.raises(DataError, match="numpy"):
        read_bin(tmp_path / "numpy.bin")


def test_python2_bins_load(tmp_path):
    # protocol 2 as Python 2 wrote it: images as str (SHORT_BINSTRING), read as bytes
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(png, format="PNG")
    payload = png.getvalue()[:200]
    import pickletools

    body = (
        b"\x80\x02(]q\x00("
        + b"".join(b"U" + bytes([len(payload)]) + payload for _ in range(20))
        + b"e]q\x01("
        + b"\x88\x89" * 5
        + b"et."
    )
    pickletools.dis(body, out=io.StringIO())  # a well-formed pickle
    path = tmp_path / "py2.bin"
    path.write_bytes(body)
    pairs = read_bin(path)
    assert len(pairs) == 10 and pairs.images[0] == payload
    assert pairs.same.tolist() == [True, False] * 5


def _bin(path, bins, issame):
    path.write_bytes(pickle.dumps((bins, issame)))
    return path


def test_malformed_inputs_get_one_line(lfw, checkpoint, tmp_path, capsys):
    pairs_txt, images, bin_file = lfw
    base = ["verify", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")] + RUNTIME
    good = pairs_txt.read_text().splitlines()

    def txt(lines):
        path = tmp_path / "pairs.txt"
        path.write_text("\n".join(lines) + "\n")
        return _error(capsys, base + ["--pairs", str(path), "--images", str(images)])

    err = txt(good[:3] + ["person_1\t1"] + good[4:])
    assert "pairs.txt line 4" in err and "got 2 fields" in err
    err = txt(good[:2] + ["person_1\t1\tperson_2\ttwo"] + good[3:])
    assert "pairs.txt line 3" in err and "'two' is not an image number" in err
    err = txt(good[:1] + ["person_0\t1\t9"] + good[2:])
    assert "line 2" in err and "person_0_0009.jpg" in err
    assert "header promises" in txt(good[:-1])
    assert "header" in txt(["10"] + good[1:])
    assert "--images" in _error(capsys, base + ["--pairs", str(pairs_txt)])

    broken = tmp_path / "broken"
    shutil.copytree(images, broken)
    (broken / "person_0" / "person_0_0001.png").write_bytes(b"not a png")
    err = _error(capsys, base + ["--pairs", str(pairs_txt), "--images", str(broken)])
    assert "cannot read image" in err and "person_0_0001.png" in err

    bins, issame = pickle.loads(bin_file.read_bytes())
    err = _error(capsys, base + ["--pairs", str(_bin(tmp_path / "odd.bin", bins[:-1], issame))])
    assert "odd.bin" in err and "odd number of images (39)" in err
    err = _error(capsys, base + ["--pairs", str(_bin(tmp_path / "len.bin", bins, issame[:-1]))])
    assert "len.bin" in err and "40 images but 19" in err
    err = _error(
        capsys, base + ["--pairs", str(_bin(tmp_path / "img.bin", [b"junk"] + bins[1:], issame))]
    )
    assert "cannot read image" in err and "img.bin image 0" in err
    err = _error(capsys, base + ["--pairs", str(_bin(tmp_path / "flag.bin", bins, ["y"] * 20))])
    assert "flag.bin" in err and "booleans" in err


def test_read_pairs_txt_accepts_spaces_and_jpg(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in (1, 2):
            Image.new("RGB", (4, 4)).save(tmp_path / name / f"{name}_{i:04d}.jpg")
    lines = ["2 1", "a 1 2", "a 1 b 2", "b 1 2", "b 2 a 1", ""]
    (tmp_path / "p.txt").write_text("\n".join(lines))
    pairs = read_pairs_txt(tmp_path / "p.txt", tmp_path)
    assert pairs.same.tolist() == [True, False, True, False]
    assert pairs.fold.tolist() == [0, 0, 1, 1]
    assert pairs.left == ["a/a_0001.jpg", "a/a_0001.jpg", "b/b_0001.jpg", "b/b_0002.jpg"]
