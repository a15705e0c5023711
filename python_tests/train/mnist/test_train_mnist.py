"""The MNIST-style training script (centerloss_ext.train.mnist) on small synthetic IDX
files: outputs, metrics, resume, the softmax-only baseline, and the data errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from centerloss_ext.train.core import loop
from centerloss_ext.train.core.errors import DataError, NonFiniteLossError
from centerloss_ext.train.mnist import cli as mnist
from centerloss_ext.train.mnist import data as tdata
from centerloss_ext.train.mnist import recipe as mnist_recipe
from centerloss_ext.train.mnist import train as mnist_train
from centerloss_ext.train.mnist.model import LeNetPlusPlus
from helpers import bar_images, idx_folder, write_idx


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return idx_folder(tmp_path_factory.mktemp("idx"), train=128, test=60, compress_train=True)


def _run(idx_dir, out, *extra):
    return mnist.main(
        ["--data", str(idx_dir), "--out", str(out), "--no-progress", "--batch-size", "64", *extra]
    )


def test_read_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a, compress=False)
    np.testing.assert_array_equal(tdata.read_idx(tmp_path / "a", 3), a)
    with pytest.raises(DataError, match="magic"):
        tdata.read_idx(tmp_path / "a", 1)
    (tmp_path / "short").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(DataError, match="header says"):
        tdata.read_idx(tmp_path / "short", 3)


def test_load_idx_folder(idx_dir):
    splits = tdata.load_mnist_like("fashion-mnist", str(idx_dir))
    assert splits.train_images.shape == (128, 28, 28)
    assert splits.train_images.dtype == torch.uint8
    assert splits.test_labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert splits.class_names[0] == "T-shirt/top"
    x = tdata.to_unit_range(splits.test_images)
    assert x.shape == (60, 1, 28, 28) and x.min() >= -1 and x.max() <= 1


def test_torchvision_layout(tmp_path):
    """Without IDX files in --data itself, torchvision's MNIST loader reads DIR/MNIST/raw."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", 20), ("t10k", 10)):
        labels = np.arange(n) % 10
        write_idx(raw / f"{split}-images-idx3-ubyte", bar_images(labels, rng), False)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels, False)
    splits = tdata.load_mnist_like("mnist", str(tmp_path))
    assert splits.train_images.shape == (20, 28, 28) and splits.test_labels.shape == (10,)
    assert splits.class_names[3] == "3"


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        mnist.main(
            ["--dataset", "mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
        )
    assert e.value.code == 2
    assert "mnist not found" in capsys.readouterr().err


def test_lenet_plus_plus_shapes():
    model = LeNetPlusPlus(10, 2)
    features, logits = model(torch.zeros(3, 1, 28, 28))
    assert features.shape == (3, 2) and logits.shape == (3, 10)
    assert model.classifier.bias is None  # decision regions are cones from 0


@pytest.fixture(scope="module")
def two_epochs(idx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, _run(idx_dir, out, "--epochs", "2")


def test_train_writes_plots_metrics_checkpoint(two_epochs):
    out, result = two_epochs
    for name in (
        "epochs/epoch_01.png",
        "epochs/epoch_02.png",
        "features.gif",
        "curves.png",
        "metrics.json",
        "checkpoint.pt",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final"] == result["final"]
    final = saved["final"]
    for key in (
        "test_softmax_acc",
        "test_knn1_acc",
        "test_knn5_acc",
        "test_nearest_center_acc",
        "test_intra_inter_ratio",
        "train_loss",
    ):
        assert key in final
    for key in ("test_softmax_acc", "test_knn1_acc", "test_nearest_center_acc"):
        assert 0.0 <= final[key] <= 1.0
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["center_loss"]["centers"].abs().sum() > 0  # the centers moved


def test_resume_continues_the_same_run(idx_dir, two_epochs, tmp_path, capsys):
    straight_out, straight = two_epochs
    _run(idx_dir, tmp_path, "--epochs", "1")
    resumed = _run(idx_dir, tmp_path, "--epochs", "2", "--resume")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a = torch.load(straight_out / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        a["center_loss"]["centers"], b["center_loss"]["centers"], rtol=1e-5, atol=1e-6
    )
    assert resumed["final"]["train_loss"] == pytest.approx(
        straight["final"]["train_loss"], rel=1e-5
    )
    # options that define the run must match the checkpoint's
    with pytest.raises(SystemExit):
        _run(idx_dir, tmp_path, "--epochs", "3", "--resume", "--feature-dim", "3")
    assert "--feature-dim 2 (now 3)" in capsys.readouterr().err


def test_softmax_only_baseline_still_tracks_centers(idx_dir, tmp_path):
    result = _run(
        idx_dir,
        tmp_path / "s",
        "--epochs",
        "1",
        "--center-loss-weight",
        "0",
        "--feature-dim",
        "3",
        "--augment",
    )
    assert result["final"]["train_center_loss"] > 0
    assert (tmp_path / "s" / "epochs" / "epoch_01.png").is_file()  # PCA-projected plot
    ckpt = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)
    assert ckpt["center_loss"]["centers"].shape == (10, 3)
    assert ckpt["center_loss"]["centers"].abs().sum() > 0


def test_augment_batch_shifts_and_flips():
    x = torch.full((64, 1, 28, 28), -1.0)
    x[:, 0, 10:12, 5:9] = 1.0  # a bar left of the middle
    g = torch.Generator().manual_seed(0)
    out = mnist_recipe.augment_batch(x, g, flip=True)
    assert out.shape == x.shape and out.min() == -1 and out.max() == 1
    assert bool(((out == 1).sum(dim=(1, 2, 3)) == 8).all())  # shifted, never cut off
    cols = (out == 1).nonzero()[:, 3]
    assert cols.min() >= 3 and cols.max() <= 24  # left bar, or mirrored right
    assert (cols > 14).any() and (cols < 14).any()  # some flipped, some not
    plain = mnist_recipe.augment_batch(x, torch.Generator().manual_seed(0), flip=False)
    assert ((plain == 1).nonzero()[:, 3] <= 10).all()


def test_running_stats_means_and_the_first_non_finite_step():
    """Epoch means weighted by batch size, returned at log steps only; a NaN is reported
    at the next log step with the step where it first happened and its parts."""
    stats = loop.RunningStats(torch.device("cpu"), epoch=2, steps=10, every=5)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])  # 2 of 3 right
    nan = torch.tensor(float("nan"))
    shown = []
    with pytest.raises(
        NonFiniteLossError, match=r"nan at epoch 3, step 8 \(softmax=0.5, center=nan\)"
    ):
        for step in range(10):
            bad = step in (7, 8)
            loss = nan if bad else torch.tensor(float(step))
            center = nan if bad else torch.tensor(2.0)
            shown.append(stats.add(loss, torch.tensor(0.5), center, logits, labels))
    assert [i for i, m in enumerate(shown) if m is not None] == [4]
    assert shown[4] == {"loss": 2.0, "softmax": 0.5, "center": 2.0, "acc": 2 / 3, "seen": 15}


def test_non_finite_error_message():
    err = loop.non_finite_error(float("nan"), 2, 7, {"center": float("nan")})
    assert isinstance(err, NonFiniteLossError)
    assert str(err).startswith(
        "the loss became nan at epoch 3, step 8 (center=nan); training stopped"
    )


def test_output_folder_holds_one_run(idx_dir, two_epochs, tmp_path, capsys):
    """Issue 13 item 5: a non-empty --out is refused without --resume; --overwrite
    clears the previous run's files (its later epochs' frames too), so the plots and the
    GIF come from this run alone; --resume with fewer epochs than done stops."""
    import shutil

    from PIL import Image

    out = shutil.copytree(two_epochs[0], tmp_path / "run")
    (out / "mine.txt").write_text("kept\n")
    with pytest.raises(SystemExit) as e:
        _run(idx_dir, out, "--epochs", "1")
    assert e.value.code == 2
    assert f"--out {out} is not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _run(idx_dir, out, "--epochs", "1", "--resume")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--resume --epochs 1:" in err and "has already finished 2 epochs" in err
    assert "final (epoch" not in err
    _run(idx_dir, out, "--epochs", "1", "--overwrite")
    assert sorted(p.name for p in (out / "epochs").iterdir()) == ["epoch_01.png"]
    assert (out / "mine.txt").read_text() == "kept\n"
    with Image.open(out / "features.gif") as gif:
        assert gif.n_frames == 1
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1]


def interrupt_second_epoch(monkeypatch):
    """Ctrl-C at the start of the second epoch's training; returns the real function."""
    real = mnist_train.train_epoch

    def interrupted(*a, **k):
        if a[4] == 1:  # the second epoch
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mnist_train, "train_epoch", interrupted)
    return real


def test_ctrl_c_prints_the_resume_command(idx_dir, tmp_path, capsys, monkeypatch):
    real = interrupt_second_epoch(monkeypatch)
    argv = [
        "--data",
        str(idx_dir),
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--batch-size",
        "64",
        "--epochs",
        "2",
    ]
    with pytest.raises(SystemExit) as e:
        mnist.main(argv)
    assert e.value.code == 130
    assert capsys.readouterr().err.splitlines() == [
        f"centerloss-mnist: interrupted: during epoch 2; {tmp_path / 'r' / 'checkpoint.pt'} "
        "holds the 1 finished epoch",
        "centerloss-mnist: continue with: python -m centerloss_ext.train.mnist "
        + " ".join(argv)
        + " --resume",
    ]
    monkeypatch.setattr(mnist_train, "train_epoch", real)
    assert [h["epoch"] for h in mnist.main(argv + ["--resume"])["history"]] == [1, 2]
