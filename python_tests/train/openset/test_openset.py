"""The open-set protocol (centerloss_ext.train.openset) on tiny made-up IDX data: the
splits, what reaches training, metrics.json, roc.png and the command line's errors."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

from centerloss_ext.train.core.errors import TrainingError
from centerloss_ext.train.mnist import train as mnist_train
from centerloss_ext.train.openset import cli as openset
from centerloss_ext.train.openset import protocol as oe
from helpers import idx_folder

EXPLICIT = ("1,3,5,7", "Trouser,Pullover,Sandal,Bag")  # 1,2,5,8


@pytest.fixture(autouse=True, scope="module")
def _keep_sigint():
    """main() installs the command line's Ctrl-C handler (core.cli.run_cli): put Python's
    back for the tests that follow."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """20 training and 30 test images per class; a class is a bright bar at row 2 + 2·y."""
    return idx_folder(tmp_path_factory.mktemp("idx"), train=200, test=300)


def _class_of(images: torch.Tensor) -> torch.Tensor:
    """The made-up images' true class, read from the bar's row."""
    rows = images[:, 0, :, 4:24].mean(2)  # (N, 28)
    return (rows.argmax(1) - 2) // 2


def _args(idx_dir, out, *extra):
    return [
        "--data",
        str(idx_dir),
        "--out",
        str(out),
        "--no-progress",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--feature-dim",
        "8",
        *extra,
    ]


@pytest.fixture(scope="module")
def run(idx_dir, tmp_path_factory):
    """One run over two explicit splits; every training batch's data recorded."""
    out = tmp_path_factory.mktemp("openset") / "out"
    calls = []
    real = mnist_train.train_epoch

    def spy(recipe, images, labels, opts, epoch, device):
        calls.append((images.clone(), labels.clone(), opts.center_loss_weight, opts.seed))
        return real(recipe, images, labels, opts, epoch, device)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mnist_train, "train_epoch", spy)
        record = openset.main(_args(idx_dir, out, "--unseen", EXPLICIT[0], "--unseen", EXPLICIT[1]))
    return out, record, calls


def test_seeded_splits_are_deterministic_and_differ():
    a = oe.choose_splits(10, 4, 3)
    assert a == oe.choose_splits(10, 4, 3)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    assert [held for _, held in a] == [
        sorted(perm[0:4]),
        sorted(perm[4:8]),
        sorted(perm[8:] + perm[:2]),
    ]
    assert set(sum((held for _, held in a), [])) == set(range(10))  # each class held out
    assert [s for s, _ in a] == [0, 0, 0]
    # every way to hold out 2 of 4 classes: repeats are skipped, never returned
    all_six = [held for _, held in oe.choose_splits(4, 2, 6)]
    assert len({tuple(h) for h in all_six}) == 6
    with pytest.raises(TrainingError, match="only 6 different"):
        oe.choose_splits(4, 2, 7)


def test_split_data_remaps_labels_and_keeps_unseen_out():
    train_labels = torch.arange(40) % 5
    train_images = train_labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    test_labels = torch.arange(25) % 5
    test_images = test_labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    sd = oe.split_data(
        train_images,
        train_labels,
        test_images,
        test_labels,
        5,
        [1, 3],
        limit_train=10,
        gallery_per_class=3,
    )
    assert sd.seen == [0, 2, 4]
    assert sd.train_labels.tolist() == [0, 1, 2] * 3 + [0]  # first 10 seen images
    assert torch.equal(sd.train_images[:, 0, 0, 0], torch.tensor([0, 2, 4] * 3 + [0.0]))
    assert sorted(set(sd.seen_test_labels.tolist())) == [0, 1, 2]
    assert torch.equal(
        torch.tensor(sd.seen)[sd.seen_test_labels].float(), sd.seen_test_images[:, 0, 0, 0]
    )
    assert sorted(set(sd.probe_labels.tolist())) == [1, 3] and len(sd.probe_labels) == 10
    assert sd.gallery_labels.tolist() == [1, 1, 1, 3, 3, 3]
    assert torch.equal(sd.gallery_images[:, 0, 0, 0], sd.gallery_labels.float())


def test_unseen_classes_never_reach_training(run):
    _, record, calls = run
    assert len(calls) == 2 * 2  # 2 splits x 2 methods x 1 epoch
    for k, split in enumerate(record["splits"]):
        seen = torch.tensor(split["seen"])
        for images, labels, _weight, _seed in calls[2 * k : 2 * k + 2]:
            truth = _class_of(images)
            assert not set(truth.tolist()) & set(split["unseen"])
            assert torch.equal(seen[labels], truth)  # labels remapped 0..S-1
            assert sorted(set(labels.tolist())) == list(range(len(seen)))
            assert len(images) == split["train_images"] == 20 * len(seen)
        # same data, same seed for both methods; only λ differs
        (a, _, wa, sa), (b, _, wb, sb) = calls[2 * k : 2 * k + 2]
        assert torch.equal(a, b) and sa == sb and (wa, wb) == (0.0, 0.1)


def test_metrics_file(run):
    out, record, _ = run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["complete"] is True and saved["options"]["unseen"] == list(EXPLICIT)
    assert {"torch", "device"} <= set(saved["environment"])
    assert [s["unseen"] for s in saved["splits"]] == [[1, 3, 5, 7], [1, 2, 5, 8]]
    assert saved["splits"][1]["unseen_names"] == ["Trouser", "Pullover", "Sandal", "Bag"]
    assert saved["splits"][1]["seen_names"][0] == "T-shirt/top"
    keys = {
        "unseen_roc_auc",
        "unseen_tar@far=0.001",
        "unseen_tar@far=0.01",
        "unseen_1nn_acc",
        "unseen_intra_inter_ratio",
        "seen_softmax_acc",
        "seen_nearest_center_acc",
        "seen_intra_inter_ratio",
        "train_seconds",
        "unseen_effective_dim",
        "unseen_variance_in_seen_span",
        "unseen_impostors_same_seen_class",
        "unseen_false_accepts_same_seen_class",
    }
    for split in saved["splits"]:
        assert set(split["methods"]) == {"softmax_only", "center_loss"}
        for m in split["methods"].values():
            assert keys <= set(m)
            assert m["unseen_probes"] == 4 * 30 and m["unseen_gallery"] == 4 * 20
            assert all(m[k] is not None for k in keys)
            assert 1 <= m["unseen_effective_dim"] <= 8  # --feature-dim 8
            assert 0 <= m["unseen_variance_in_seen_span"] <= 1 + 1e-9
    summary = saved["summary"]
    for method in ("softmax_only", "center_loss"):
        for key in keys:
            values = [s["methods"][method][key] for s in saved["splits"]]
            assert summary[method][key]["mean"] == pytest.approx(np.mean(values))
            assert summary[method][key]["std"] == pytest.approx(np.std(values, ddof=1))
    for split, diff in zip(saved["splits"], summary["center_minus_softmax"]):
        m = split["methods"]
        assert diff["unseen_tar@far=0.001"] == pytest.approx(
            m["center_loss"]["unseen_tar@far=0.001"] - m["softmax_only"]["unseen_tar@far=0.001"]
        )


def test_roc_plot_written(run):
    out, _, _ = run
    from PIL import Image

    with Image.open(out / "roc.png") as im:
        assert im.size[0] > im.size[1]  # two panels side by side


def test_refuses_a_non_empty_out_and_overwrites(run, idx_dir, capsys):
    out, _, _ = run
    with pytest.raises(SystemExit) as e:
        openset.main(_args(idx_dir, out))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not empty" in err and "--overwrite" in err
    (out / "notes.txt").write_text("mine")
    from centerloss_ext.train.core.files import check_output_folder

    check_output_folder(out, oe.OUTPUTS, overwrite=True, log=lambda s: None)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only the run's files


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--unseen", "6,7,Sweater"), "unknown class 'Sweater'"),
        (("--unseen", "6,7,10"), "unknown class '10'"),
        (("--unseen", "6"), "at least 2"),
        (("--unseen", "6,6,7"), "named twice"),
        (("--unseen", "6,7", "--unseen", "7,6"), "same split"),
        (("--unseen-classes", "9"), "at most 8"),
        (("--unseen-classes", "1"), "at least 2"),
        (("--unseen", "6,7", "--splits", "2"), "not both"),
    ],
)
def test_bad_splits_are_one_line_errors(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        openset.main(["--out", str(out), *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("centerloss-openset: error:") and "\n" not in err
    assert message in err
    assert not out.exists()


def test_failed_run_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    with pytest.raises(SystemExit) as e:
        openset.main(["--data", str(tmp_path / "nothing"), "--dataset", "mnist", "--out", str(out)])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        openset.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--unseen" in text and "--gallery-per-class" in text and "TAR" in text
