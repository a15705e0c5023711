"""Issue 24: generated noise with its truth (noise.json), split/clean decoding every
image once, and `centerloss-faces clean`: its rule on hand-made embeddings, its outputs
and invariants (DIR unchanged, OUT holds exactly the kept images, one row per image)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

from centerloss_ext.train.faces import cli as faces
from centerloss_ext.train.faces.clean import (
    REPORT_COLUMNS,
    angles_to_centers,
    flag,
    otsu_threshold,
    precision_recall,
    robust_centers,
)
from centerloss_ext.train.faces.data import list_images, load_face_folders
from centerloss_ext.train.faces.synthetic import Noise, make_noisy_faces, make_synthetic_faces

TREE = dict(identities=4, train_per_identity=10, val_per_identity=2, unseen=1, image_size=24)
FAST = [
    "--arch",
    "compact",
    "--image-size",
    "24",
    "--feature-dim",
    "16",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--no-progress",
    "--device",
    "cpu",
]


def _digest(root: Path) -> dict:
    """Every file under root (links as their target) and its content's hash."""
    return {
        p.relative_to(root).as_posix(): (
            str(p.readlink()) if p.is_symlink() else hashlib.sha1(p.read_bytes()).hexdigest()
        )
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_noise_json_is_the_truth(tmp_path):
    clean = make_synthetic_faces(tmp_path / "clean", **TREE)
    record = make_noisy_faces(tmp_path / "noisy", Noise(0.2, 0.2, seed=3), **TREE)
    noisy = tmp_path / "noisy"
    assert json.loads((noisy / "noise.json").read_text()) == record
    assert record["train_images"] == 40
    assert record["label_noise_images"] == 8 and record["outlier_images"] == 8  # 2 + 2 of 10
    names = {p.name for p in (noisy / "train").iterdir()}
    before, after = _digest(clean), _digest(noisy)
    changed = {path for path in after if path in before and after[path] != before[path]}
    assert changed == {f["path"] for f in record["files"]}  # exactly the listed files differ
    for f in record["files"]:
        assert f["path"].split("/")[:2] == ["train", f["filed_as"]]
        if f["kind"] == "label_noise":
            assert f["truth"] in names and f["truth"] != f["filed_as"]
        else:
            assert f["kind"] == "outlier" and f["truth"] not in names
            assert f["truth"] not in {p.name for p in (noisy / "val").iterdir()}
    with pytest.raises(ValueError):
        Noise(0.6, 0.4)


def test_the_rule_on_hand_made_embeddings():
    torch.manual_seed(0)
    # 3 identities along the axes; identity 0 has 3 images of identity 1 filed under it
    # and 2 images of nobody (along the 4th axis)
    axes = torch.eye(4)
    feats, labels, truth = [], [], []
    for c in range(3):
        for _ in range(12):
            feats.append(axes[c] + 0.1 * torch.randn(4))
            labels.append(c)
            truth.append(False)
    for source in (1, 1, 1, 3, 3):
        feats.append(axes[source] + 0.1 * torch.randn(4))
        labels.append(0)
        truth.append(True)
    x = torch.nn.functional.normalize(torch.stack(feats), dim=1)
    y = torch.tensor(labels)
    centers = robust_centers(x, y, 3)
    assert torch.allclose(centers[0], axes[0], atol=0.1)  # not pulled toward the others
    plain = torch.nn.functional.normalize(x[y == 0].mean(0), dim=0)
    assert (centers[0] @ axes[0]) > (plain @ axes[0]) + 0.02
    own, nearest, other = angles_to_centers(x, y, centers)
    assert own[-5:].min() > 60 and own[:-5].max() < 30
    assert list(nearest[-5:-2]) == [1, 1, 1] and other[-5:-2].max() < 30
    flagged, threshold = flag(own)
    assert 30 < threshold < 60 and flagged.tolist() == truth
    assert flag(own, 120.0)[0].sum() == 0  # the fixed angle overrides Otsu's cut
    assert precision_recall(flagged, truth) == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "flagged": 5,
    }
    assert precision_recall([True, True, False, False], [True, False, True, False])["f1"] == 0.5
    assert otsu_threshold([1.0, 1.0]) == 1.0


def _break(folder: Path) -> list:
    """A truncated PNG and a text file with an image name in ``folder``."""
    good = sorted(folder.iterdir())[0].read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("not an image\n")
    return ["truncated.png", "notes.jpg"]


def test_split_leaves_out_images_that_do_not_decode(tmp_path, capsys):
    source = make_synthetic_faces(tmp_path / "all", **TREE) / "train"
    bad = _break(source / "id_001")
    counts = faces.main(["split", "--source", str(source), "--out", str(tmp_path / "s")])
    assert counts["unreadable"] == 2 and counts["train_images"] + counts["val_images"] == 40
    report = json.loads((tmp_path / "s" / "split_report.json").read_text())
    assert report["checked"] == 42
    assert sorted(f["path"] for f in report["unreadable_files"]) == sorted(
        f"id_001/{name}" for name in bad
    )
    assert not any(p.name in bad for p in list_images(tmp_path / "s"))
    assert "do not decode" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        faces.main(["split", "--source", str(source), "--out", str(tmp_path / "t"), "--strict"])
    assert e.value.code != 0 and "cannot read image" in capsys.readouterr().err


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy")
    record = make_noisy_faces(root / "tree", Noise(0.2, 0.1, seed=1), **TREE)
    run = root / "run"
    faces.main(
        ["train", "--input-dir", str(root / "tree"), "--out", str(run), "--epochs", "2", *FAST]
    )
    return root / "tree", run / "checkpoint.pt", record


def test_clean_outputs_and_invariants(noisy_run, tmp_path, capsys):
    tree, ckpt, record = noisy_run
    _break(tree / "train" / "id_002")
    try:
        before = _digest(tree)
        out = tmp_path / "clean"
        base = ["clean", "--checkpoint", str(ckpt), "--input-dir", str(tree), "--device", "cpu"]
        summary = faces.main([*base, "--out", str(out), "--workers", "0"])
        assert _digest(tree) == before  # DIR never changes
        with open(out / "report.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == REPORT_COLUMNS
        readable = [p for p in list_images(tree / "train") if p.parent.name and "." in p.name]
        readable = [p for p in readable if p.name not in ("truncated.png", "notes.jpg")]
        assert sorted(r["path"] for r in rows) == sorted(
            p.relative_to(tree).as_posix() for p in readable
        )  # one row per readable image of train/
        scores = [float(r["score"]) for r in rows]
        assert scores == sorted(scores, reverse=True)  # worst first
        kept = {r["path"] for r in rows if r["flagged"] == "0"}
        assert {p.relative_to(out).as_posix() for p in list_images(out / "train")} == kept
        assert len(list_images(out / "val")) == len(list_images(tree / "val"))
        assert summary["images"] == len(rows) and summary["kept"] == len(kept)
        assert summary["flagged"] == sum(r["flagged"] == "1" for r in rows)
        assert sorted(u["path"] for u in summary["unreadable"]) == [
            "train/id_002/notes.jpg",
            "train/id_002/truncated.png",
        ]
        assert json.loads((out / "summary.json").read_text()) == summary
        assert (out / "angles.png").stat().st_size > 0
        assert record["files"]  # the truth is there to measure against (docs/cleaning.md)
        load_face_folders(out)  # a ready --input-dir
        with pytest.raises(SystemExit):  # a non-empty --out is refused
            faces.main([*base, "--out", str(out)])
        # everything flagged: every identity keeps fewer than 2 images, and says so
        every = faces.main([*base, "--out", str(tmp_path / "all"), "--threshold-deg", "0"])
        assert every["kept"] == 0 and len(every["identities_under_2"]) == 4
        assert "fewer than 2 images" in capsys.readouterr().out
        with pytest.raises(SystemExit):
            faces.main([*base, "--out", str(tmp_path / "s"), "--strict"])
        assert "cannot read image" in capsys.readouterr().err
        assert _digest(tree) == before
    finally:
        for name in ("truncated.png", "notes.jpg"):
            (tree / "train" / "id_002" / name).unlink()


def test_cleaned_output_trains_as_it_is(noisy_run, tmp_path):
    tree, ckpt, _ = noisy_run
    out = tmp_path / "clean"
    faces.main(
        ["clean", "--checkpoint", str(ckpt), "--input-dir", str(tree), "--out", str(out)]
        + ["--device", "cpu", "--workers", "0", "--copy"]
    )
    assert not any(p.is_symlink() for p in out.rglob("*"))
    result = faces.main(
        ["train", "--input-dir", str(out), "--out", str(tmp_path / "r"), "--epochs", "1", *FAST]
    )
    assert result["identities"] == len(list((out / "train").iterdir()))
