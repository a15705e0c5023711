"""Issue 24, training through noise: `train --drop-suspects-after`'s bookkeeping (the
counts per epoch in metrics.json, none before the warm-up), the flagged rows really kept
out of the center update (and, with --drop-suspects-from all, out of the softmax loss),
and the option's errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from centerloss_ext import CenterLoss
from centerloss_ext.train.core.errors import TrainingError
from centerloss_ext.train.faces import cli as faces
from centerloss_ext.train.faces import train as faces_train
from centerloss_ext.train.faces.suspects import kept_rows
from centerloss_ext.train.faces.synthetic import Noise, make_noisy_faces

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
    "--eval-every",
    "3",
]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """4 identities x 10 train/ images, 3 of each filed under the wrong identity."""
    root = tmp_path_factory.mktemp("noisy")
    tree = dict(identities=4, train_per_identity=10, val_per_identity=2, unseen=2, image_size=24)
    make_noisy_faces(root, Noise(label_noise=0.3, seed=1), **tree)
    return root


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        faces.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip()


def test_counts_per_epoch_in_metrics(noisy, tmp_path):
    base = ["train", "--input-dir", str(noisy), "--epochs", "3", *FAST]
    plain = faces.main([*base, "--out", str(tmp_path / "plain")])
    result = faces.main([*base, "--out", str(tmp_path / "drop"), "--drop-suspects-after", "2"])
    on_disk = json.loads((tmp_path / "drop" / "metrics.json").read_text())
    assert on_disk["history"] == json.loads(json.dumps(result["history"]))
    rows = on_disk["history"]
    for row in rows[:2]:  # the warm-up: nothing checked, nothing flagged
        assert row["suspects_checked"] == row["suspects_flagged"] == 0
        assert row["suspects_threshold_deg"] is None
    assert rows[2]["suspects_checked"] == 40  # every train/ image
    assert 0 < rows[2]["suspects_flagged"] < 40
    assert 0 < rows[2]["suspects_threshold_deg"] < 180
    assert on_disk["config"]["drop_suspects_after"] == 2
    assert on_disk["config"]["drop_suspects_from"] == "center"  # the default
    # the warm-up is the plain run's, step for step; a run without the option has no counts
    for a, b in zip(plain["history"][:2], rows[:2]):
        assert a["train_loss"] == b["train_loss"]
    assert all("suspects_checked" not in row for row in plain["history"])


def test_flagged_rows_stay_out_of_the_center_update():
    """_losses on a hand-made batch: the flagged row (the only one of class 2) leaves its
    center where it was, and the others move the centers exactly as without it."""
    torch.manual_seed(0)
    features = torch.randn(4, 3, requires_grad=True)
    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 0, 2])
    flagged = torch.tensor([False, False, False, True])
    reference = CenterLoss(3, 3, alpha=0.5)
    expected_center = reference(features[:3].float(), y[:3])

    def losses(drop_from, rows):
        center_loss = CenterLoss(3, 3, alpha=0.5)
        run = SimpleNamespace(
            opts=SimpleNamespace(drop_suspects_after=1, drop_suspects_from=drop_from),
            center_loss=center_loss,
            net=SimpleNamespace(classifier=SimpleNamespace(with_margin=lambda z, t: z)),
        )
        softmax, center = faces_train._losses(run, features, logits, y, rows)
        return softmax, center, center_loss.centers

    softmax, center, centers = losses("center", flagged)
    assert torch.equal(centers[2], torch.zeros(3))  # class 2: its only row was flagged
    torch.testing.assert_close(centers, reference.centers)
    torch.testing.assert_close(center, expected_center)
    torch.testing.assert_close(softmax, F.cross_entropy(logits, y))  # every row

    softmax, _, _ = losses("all", flagged)
    torch.testing.assert_close(softmax, F.cross_entropy(logits[:3], y[:3]))

    softmax, center, centers = losses("all", torch.ones(4, dtype=torch.bool))
    assert softmax.item() == center.item() == 0.0 and not centers.any()
    (softmax + center).backward()  # still a graph: the step goes on
    assert kept_rows(torch.zeros(4, dtype=torch.bool), torch.device("cpu")) is None


def test_all_flagged_leaves_the_centers_where_the_warm_up_left_them(noisy, tmp_path, monkeypatch):
    """--suspect-threshold-deg 0 flags every image: after the warm-up epoch no row reaches
    the center loss, so the centers stop moving and its part of the loss is 0."""
    centers = []
    real = faces_train.train_one_epoch

    def recorded(run, epoch):
        out = real(run, epoch)
        centers.append(run.center_loss.centers.detach().clone())
        return out

    monkeypatch.setattr(faces_train, "train_one_epoch", recorded)
    result = faces.main(
        [
            "train",
            "--input-dir",
            str(noisy),
            "--out",
            str(tmp_path / "all"),
            "--epochs",
            "3",
            *FAST,
            "--drop-suspects-after",
            "1",
            "--suspect-threshold-deg",
            "0",
        ]
    )
    rows = result["history"]
    assert [r["suspects_flagged"] for r in rows] == [0, 40, 40]
    assert [r["suspects_threshold_deg"] for r in rows] == [None, 0.0, 0.0]
    assert rows[0]["train_center_loss"] > 0 and rows[1]["train_center_loss"] == 0
    assert centers[0].any() and torch.equal(centers[0], centers[1])
    assert torch.equal(centers[1], centers[2])


def test_the_options_errors(noisy, tmp_path, capsys):
    base = ["train", "--input-dir", str(noisy), "--out", str(tmp_path / "x"), *FAST]
    err = _error(capsys, [*base, "--epochs", "3", "--drop-suspects-from", "all"])
    assert "--drop-suspects-from needs --drop-suspects-after EPOCHS" in err
    assert len(err.splitlines()) == 1
    err = _error(capsys, [*base, "--epochs", "3", "--suspect-threshold-deg", "40"])
    assert "--suspect-threshold-deg needs --drop-suspects-after EPOCHS" in err
    err = _error(capsys, [*base, "--epochs", "3", "--drop-suspects-after", "3"])
    assert "--drop-suspects-after 3: give a warm-up of 1 to 2 epochs" in err
    assert len(err.splitlines()) == 1
    # refused by the parser, under train's usage
    assert "--drop-suspects-after" in _error(capsys, [*base, "--drop-suspects-after", "0"])
    assert "invalid choice" in _error(
        capsys, [*base, "--drop-suspects-after", "1", "--drop-suspects-from", "softmax"]
    )
    assert "--suspect-threshold-deg" in _error(
        capsys, [*base, "--drop-suspects-after", "1", "--suspect-threshold-deg", "200"]
    )
    assert not (tmp_path / "x").exists()  # refused before any work
    with pytest.raises(TrainingError, match="--drop-suspects-from sideways: give center or all"):
        faces_train.TrainOptions(
            input_dir="d", epochs=3, drop_suspects_after=1, drop_suspects_from="sideways"
        )
    with pytest.raises(TrainingError, match="--suspect-threshold-deg -1"):
        faces_train.TrainOptions(
            input_dir="d", epochs=3, drop_suspects_after=1, suspect_threshold_deg=-1
        )


def test_resume_recomputes_the_same_flags(noisy, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the warm-up; the resumed run flags from the saved weights and ends
    where a straight run does, counts included."""
    args = ["--input-dir", str(noisy), "--epochs", "3", *FAST, "--drop-suspects-after", "1"]
    straight = faces.main(["train", "--out", str(tmp_path / "a"), *args])
    real = faces_train.train_one_epoch

    def interrupted(run, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(run, epoch)

    monkeypatch.setattr(faces_train, "train_one_epoch", interrupted)
    with pytest.raises(SystemExit) as e:
        faces.main(["train", "--out", str(tmp_path / "b"), *args])
    assert e.value.code == 130
    monkeypatch.setattr(faces_train, "train_one_epoch", real)
    resumed = faces.main(["train", "--out", str(tmp_path / "b"), "--resume", *args])
    keys = ("suspects_checked", "suspects_flagged", "suspects_threshold_deg")
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert [a[k] for k in keys] == [b[k] for k in keys]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    torch.testing.assert_close(a["center_loss"]["centers"], b["center_loss"]["centers"])
    # another warm-up is another run: refused on resume
    with pytest.raises(SystemExit):
        faces.main(["train", "--out", str(tmp_path / "b"), "--resume", *args[:-1], "2"])
    assert "--drop-suspects-after 1 (now 2)" in capsys.readouterr().err


@pytest.mark.slow
def test_drop_suspects_under_torchrun_two_ranks(noisy, tmp_path):
    """torchrun, 2 ranks (gloo): rank 0 flags, both ranks train with its flags (the
    script checks every epoch that the ranks' centers agree)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "centerloss_ext.train.faces",
        "train",
        "--input-dir",
        str(noisy),
        "--out",
        str(out),
        "--epochs",
        "2",
        *FAST,
        "--drop-suspects-after",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads((out / "metrics.json").read_text())["history"]
    assert rows[1]["suspects_checked"] == 40 and rows[1]["suspects_flagged"] > 0
