"""The faces pipeline (centerloss_ext.train.faces) on a tiny generated identity-folder
tree: train -> eval -> embed -> identify end to end on the CPU, the label mapping of val/,
and the refusals (malformed folders, --num-classes mismatch, a non-finite loss)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from centerloss_ext.train.core.errors import DataError
from centerloss_ext.train.faces import cli as faces
from centerloss_ext.train.faces import train as faces_train
from centerloss_ext.train.faces.data import load_face_folders
from centerloss_ext.train.faces.enroll import load_embeddings
from centerloss_ext.train.faces.model import FaceNet
from centerloss_ext.train.faces.synthetic import make_synthetic_faces

FAST = [
    "--arch",
    "compact",
    "--image-size",
    "32",
    "--feature-dim",
    "32",
    "--batch-size",
    "16",
    "--workers",
    "0",
    "--no-progress",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """6 training identities (12 images each), val/ with 4 of each plus 1 unseen one."""
    return make_synthetic_faces(
        tmp_path_factory.mktemp("faces"),
        identities=6,
        train_per_identity=12,
        val_per_identity=4,
        unseen=1,
        image_size=32,
        seed=0,
    )


# enough steps for the compact network to learn the generated identities' geometry
LEARN = ["--epochs", "8", "--batch-size", "8", "--lr", "0.01"]


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("faces_run")
    result = faces.main(["train", "--input-dir", str(tree), "--out", str(out), *FAST, *LEARN])
    return out, result


def _copy(tree, tmp_path):
    return shutil.copytree(tree, tmp_path / "copy")


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        faces.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_train_eval_embed_identify(tree, trained, tmp_path):
    out, result = trained
    for name in ("checkpoint.pt", "metrics.json", "curves.png", "roc.png"):
        assert (out / name).is_file(), name
    final = result["final"]
    assert result["unseen_val_identities"] == ["id_006"]
    assert final["val_unseen_identities"] == 1 and final["val_images"] == 28
    assert final["val_images_seen"] == 24
    # training must separate the identities (an untrained network does not:
    # test_an_untrained_network_is_far_from_perfect)
    assert final["val_knn1_acc"] >= 0.7
    assert final["val_roc_auc"] >= 0.75
    for key in (
        "val_knn5_acc",
        "val_softmax_acc",
        "val_nearest_center_acc",
        "val_tar@far=0.001",
        "val_best_accuracy",
        "val_best_threshold",
    ):
        assert key in final
    assert final["val_pairs_same"] == 6 * 6 + 6  # C(4,2) per identity, 7 identities
    assert json.loads((out / "metrics.json").read_text())["final"] == final

    # eval reproduces the last evaluation of training
    ev = faces.main(
        [
            "eval",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--input-dir",
            str(tree),
            "--out",
            str(tmp_path),
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert ev["val_knn1_acc"] == pytest.approx(final["val_knn1_acc"])
    assert ev["val_roc_auc"] == pytest.approx(final["val_roc_auc"], abs=1e-6)
    assert (tmp_path / "eval_metrics.json").is_file() and (tmp_path / "eval_roc.png").is_file()

    # embed the training identities as the gallery, in both formats
    for name in ("gallery.npz", "gallery.pt"):
        faces.main(
            [
                "embed",
                "--checkpoint",
                str(out / "checkpoint.pt"),
                "--images",
                str(tree / "train"),
                "--out",
                str(tmp_path / name),
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )
    feats, paths, labels, meta = load_embeddings(tmp_path / "gallery.npz")
    feats_pt, paths_pt, labels_pt, _ = load_embeddings(tmp_path / "gallery.pt")
    assert feats.shape == (72, 32) and meta["feature_dim"] == 32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(72))
    torch.testing.assert_close(feats, feats_pt)
    assert paths == paths_pt and labels == labels_pt
    assert paths[0] == "id_000/id_000_000.png" and labels[0] == "id_000"
    assert sorted(set(labels)) == [f"id_{i:03d}" for i in range(6)]

    # identify val/ images of known identities
    queries = [str(tree / "val" / f"id_{i:03d}") for i in range(6)]
    results = faces.main(
        [
            "identify",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--gallery",
            str(tmp_path / "gallery.npz"),
            "--query",
            *queries,
            "--top-k",
            "3",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert len(results) == 24 and all(len(r["matches"]) == 3 for r in results)
    right = [r["identity"] == r["query"].split("/")[-2] for r in results]
    assert np.mean(right) >= 0.7
    scores = [m["score"] for m in results[0]["matches"]]
    assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1
    # a threshold above every score makes the answer "unknown"
    unknown = faces.main(
        [
            "identify",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--gallery",
            str(tmp_path / "gallery.pt"),
            "--query",
            queries[0],
            "--threshold",
            "1.01",
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert all(r["identity"] is None for r in unknown)


def test_an_untrained_network_is_far_from_perfect(tree, trained):
    """The generated identities' pixels are dominated by a background drawn per image, so
    the features must be learnt. Measured here (2026-11-30, seed 0,
    the fixtures above): val/ 1-NN accuracy 0.29 untrained (seeds 0-2 of the
    initialisation: 0.29, 0.38, 0.58; chance is 1/6) against 0.875 after the 8 training
    epochs of `trained` (0.71-0.875 over training seeds 0-2); ROC AUC 0.56 against 0.88.
    Before the identities were made harder, an untrained network already scored 1.0, so
    these tests could not catch a broken training step."""
    from centerloss_ext import CenterLoss
    from centerloss_ext.train.faces.evaluate import Extraction, evaluate

    torch.manual_seed(0)
    model = FaceNet(6, 32, "compact", 32, 0.2).eval()
    untrained, _ = evaluate(
        model,
        CenterLoss(6, 32),
        load_face_folders(tree),
        Extraction(32, torch.device("cpu"), None, 16, 0),
    )
    final = trained[1]["final"]
    assert untrained["val_knn1_acc"] <= 0.6
    assert final["val_knn1_acc"] >= untrained["val_knn1_acc"] + 0.25
    assert final["val_roc_auc"] >= untrained["val_roc_auc"] + 0.15


def test_open_set_measures_need_two_unseen_identities(tree, trained, tmp_path):
    """Two identities only in val/ get measures of their own (val_unseen_*: verification
    on their pairs alone, 1-NN against each one's first image); the tree's one does not."""
    out, result = trained
    assert [k for k in result["final"] if k.startswith("val_unseen_")] == ["val_unseen_identities"]
    # the same seed and counts draw the same first 7 identities, then one more unseen
    two = make_synthetic_faces(
        tmp_path / "two",
        identities=6,
        train_per_identity=12,
        val_per_identity=4,
        unseen=2,
        image_size=32,
        seed=0,
    )
    ev = faces.main(
        [
            "eval",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--input-dir",
            str(two),
            "--out",
            str(tmp_path),
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert ev["unseen_val_identities"] == ["id_006", "id_007"]
    assert ev["val_pairs_same"] == 8 * 6  # all of val/, as before
    assert ev["val_unseen_pairs_same"] == 2 * 6 and ev["val_unseen_pairs_different"] == 16
    assert ev["val_unseen_gallery"] == 2 and ev["val_unseen_probes"] == 6
    assert 0.0 <= ev["val_unseen_1nn_acc"] <= 1.0 and 0.0 <= ev["val_unseen_roc_auc"] <= 1.0


def test_unseen_metrics_on_hand_made_features():
    """1-NN against each identity's first image, and pairs among these images only."""
    from centerloss_ext.train.faces.evaluate import unseen_metrics

    e = torch.eye(3)
    feats = torch.stack(
        [
            e[0],
            2 * e[0],
            e[0] + 0.1 * e[1],  # identity 7
            e[1],
            3 * e[1],
            1.5 * e[0],  # 8: its last looks like 7
            e[2],
            e[2] + 0.1 * e[0],
            2 * e[2],
        ]
    )  # 9
    labels = torch.tensor([7, 7, 7, 8, 8, 8, 9, 9, 9])
    m = unseen_metrics(feats, labels)
    assert m["val_unseen_gallery"] == 3 and m["val_unseen_probes"] == 6
    assert m["val_unseen_1nn_acc"] == pytest.approx(5 / 6)  # 1.5·e0 is named 7
    assert m["val_unseen_pairs_same"] == 9 and m["val_unseen_pairs_different"] == 27
    assert 0.5 < m["val_unseen_roc_auc"] < 1.0  # that image's pairs cost


def test_identify_answers_unknown_at_a_false_accept_rate(tree, trained, tmp_path, capsys):
    """--far picks the threshold from the gallery's impostor scores (each image against
    the other identities' templates): the lowest one that accepts at most that share of
    them; it is printed. An identity absent from the gallery (id_005, enrolled nowhere)
    is then "unknown" rather than named after its nearest enrolled identity, and the
    enrolled identities' own val/ images are still named. Measured (seed 0): threshold
    0.39 at FAR 1e-3; id_005's best scores -0.04..0.29; 20 of 20 known queries named."""
    from centerloss_ext.train.faces.enroll import far_threshold, identity_templates

    out = trained[0]
    five = shutil.copytree(tree / "train", tmp_path / "five")
    shutil.rmtree(five / "id_005")
    ckpt, gallery = str(out / "checkpoint.pt"), str(tmp_path / "g.npz")
    run = ["--workers", "0", "--device", "cpu"]
    faces.main(["embed", "--checkpoint", ckpt, "--images", str(five), "--out", gallery, *run])
    feats, _, labels, _ = load_embeddings(tmp_path / "g.npz")
    names, templates = identity_templates(feats, labels)
    owner = torch.tensor([names.index(n) for n in labels])
    impostor = (torch.nn.functional.normalize(feats) @ templates.T)[
        owner[:, None] != torch.arange(5)
    ]
    for far in (1e-3, 0.05, 0.2):
        threshold, trials = far_threshold(feats, labels, names, templates, far)
        assert trials == len(impostor) == 60 * 4
        assert int((impostor >= threshold).sum()) <= far * trials
        lower = torch.nextafter(torch.tensor(threshold), torch.tensor(-2.0))
        assert int((impostor >= lower).sum()) > far * trials  # the lowest such
    query = ["--query", str(tree / "val" / "id_005")]
    named = faces.main(["identify", "--checkpoint", ckpt, "--gallery", gallery, *query, *run])
    assert all(r["identity"] is not None for r in named)  # no threshold: always a name
    capsys.readouterr()
    unseen = faces.main(
        [
            "identify",
            "--checkpoint",
            ckpt,
            "--gallery",
            gallery,
            *query,
            "--far",
            "1e-3",
            "--json",
            *run,
        ]
    )
    printed = capsys.readouterr()
    assert "--far 0.001: threshold" in printed.err
    assert json.loads(printed.out)[0]["threshold"] == unseen[0]["threshold"]
    assert all(r["identity"] is None for r in unseen)
    known = faces.main(
        [
            "identify",
            "--checkpoint",
            ckpt,
            "--gallery",
            gallery,
            "--query",
            *[str(tree / "val" / f"id_{i:03d}") for i in range(5)],
            "--far",
            "1e-3",
            *run,
        ]
    )
    answered = [r for r in known if r["identity"] is not None]
    assert len(answered) >= 15  # of 20
    assert np.mean([r["identity"] == r["query"].split("/")[-2] for r in answered]) >= 0.8
    with pytest.raises(SystemExit) as e:  # one or the other
        faces.main(
            [
                "identify",
                "--checkpoint",
                ckpt,
                "--gallery",
                gallery,
                *query,
                "--far",
                "1e-3",
                "--threshold",
                "0.5",
            ]
        )
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_resume_after_an_interruption_matches_a_straight_run(tree, tmp_path, monkeypatch):
    args = ["--input-dir", str(tree), "--epochs", "2", "--eval-every", "2", *FAST]
    faces.main(["train", "--out", str(tmp_path / "a"), *args])
    real = faces_train.train_one_epoch

    def interrupted(run, epoch):
        if epoch == 1:  # the second epoch
            raise KeyboardInterrupt
        return real(run, epoch)

    monkeypatch.setattr(faces_train, "train_one_epoch", interrupted)
    with pytest.raises(SystemExit) as e:  # Ctrl-C: one line, status 130
        faces.main(["train", "--out", str(tmp_path / "b"), *args])
    assert e.value.code == 130
    monkeypatch.setattr(faces_train, "train_one_epoch", real)
    resumed = faces.main(["train", "--out", str(tmp_path / "b"), "--resume", *args])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        a["center_loss"]["centers"], b["center_loss"]["centers"], rtol=1e-5, atol=1e-6
    )
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


# every way a tensor's value reaches the host from Python
READ_BACKS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def test_one_host_read_back_per_log_interval(tree, tmp_path, monkeypatch):
    """A training step keeps its statistics on the device: counting every Python-level
    read-back of a tensor during the epochs (data loading aside, which happens on the
    host anyway), there is one per log interval, not several per step."""
    state = {"on": False, "count": 0}
    for name in READ_BACKS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            if not state["on"]:
                return _real(self, *a, **k)
            state["on"] = False  # nested calls are the same read-back
            state["count"] += 1
            try:
                return _real(self, *a, **k)
            finally:
                state["on"] = True

        monkeypatch.setattr(torch.Tensor, name, counted)

    class DataLoadingNotCounted:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            state["on"] = False
            it = iter(self.loader)
            while True:
                state["on"] = False
                try:
                    batch = next(it)
                except StopIteration:
                    return
                state["on"] = True
                yield batch

    per_epoch, steps = [], []
    real_epoch = faces_train.train_one_epoch

    def counted_epoch(run, epoch):
        run = dataclasses.replace(run, loader=DataLoadingNotCounted(run.loader))
        steps.append(len(run.loader))
        state["count"] = 0
        try:
            return real_epoch(run, epoch)
        finally:
            state["on"] = False
            per_epoch.append(state["count"])

    monkeypatch.setattr(faces_train, "train_one_epoch", counted_epoch)
    opts = faces_train.TrainOptions(
        input_dir=str(tree),
        out=str(tmp_path),
        epochs=2,
        eval_every=2,
        arch="compact",
        image_size=32,
        feature_dim=32,
        batch_size=8,
        workers=0,
        no_progress=True,
        device="cpu",
        log_every=2,
    )
    result = faces_train.train(opts)
    assert steps == [9, 9]  # 72 images, batches of 8
    assert per_epoch == [5, 5]  # after steps 2, 4, 6, 8 and 9
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert "log_every" not in result["config"]


def test_val_uses_train_mapping(tmp_path):
    root = make_synthetic_faces(
        tmp_path,
        identities=3,
        train_per_identity=2,
        val_per_identity=2,
        unseen=1,
        image_size=16,
        names=["alice", "bob", "carol", "zed"],
    )
    shutil.rmtree(root / "val" / "alice")  # val/ lacks train's first identity
    folders = load_face_folders(root)
    assert folders.train.class_to_idx == {"alice": 0, "bob": 1, "carol": 2}
    assert folders.val.class_to_idx == {"bob": 1, "carol": 2, "zed": 3}
    assert folders.val.unseen == ["zed"]
    assert sorted(set(folders.val.labels.tolist())) == [1, 2, 3]
    assert folders.class_names == ["alice", "bob", "carol"]


def test_split_by_image_with_unseen_identities(tree, tmp_path):
    # one folder per identity (train/ of the tree: 6 identities x 12 images)
    counts = faces.main(
        [
            "split",
            "--source",
            str(tree / "train"),
            "--out",
            str(tmp_path / "split"),
            "--val-fraction",
            "0.25",
            "--unseen-identities",
            "1",
        ]
    )
    assert counts == {
        "train_images": 45,
        "val_images": 27,
        "unseen_identities": 1,
        "unreadable": 0,
    }
    folders = load_face_folders(tmp_path / "split")
    assert folders.num_classes == 5 and len(folders.val.unseen) == 1
    assert len(folders.val.samples) == 27 and (folders.val.samples[0][0]).is_symlink()
    with pytest.raises(SystemExit):  # refuses to overwrite
        faces.main(["split", "--source", str(tree / "train"), "--out", str(tmp_path / "split")])


def test_malformed_folders_are_refused(tree, tmp_path, capsys):
    base = ["train", "--out", str(tmp_path / "out"), "--epochs", "1", *FAST]
    root = _copy(tree, tmp_path)
    shutil.rmtree(root / "val")
    assert "val is missing" in _error(capsys, base + ["--input-dir", str(root)])

    root = make_synthetic_faces(
        tmp_path / "stray",
        identities=2,
        train_per_identity=2,
        val_per_identity=1,
        unseen=0,
        image_size=16,
    )
    shutil.copy(root / "train" / "id_000" / "id_000_000.png", root / "train" / "loose.png")
    assert "holds image files directly (loose.png)" in _error(
        capsys, base + ["--input-dir", str(root)]
    )

    root = make_synthetic_faces(
        tmp_path / "empty",
        identities=2,
        train_per_identity=2,
        val_per_identity=1,
        unseen=0,
        image_size=16,
    )
    (root / "train" / "nobody").mkdir()
    assert "without images: nobody" in _error(capsys, base + ["--input-dir", str(root)])

    root = make_synthetic_faces(
        tmp_path / "one",
        identities=1,
        train_per_identity=2,
        val_per_identity=1,
        unseen=0,
        image_size=16,
    )
    assert "at least 2" in _error(capsys, base + ["--input-dir", str(root)])

    with pytest.raises(DataError, match="no identity subfolders"):
        (tmp_path / "bare" / "train").mkdir(parents=True)
        (tmp_path / "bare" / "val").mkdir()
        load_face_folders(tmp_path / "bare")


def test_num_classes_must_match_the_folders(tree, tmp_path, capsys):
    err = _error(
        capsys,
        ["train", "--input-dir", str(tree), "--out", str(tmp_path), "--num-classes", "5", *FAST],
    )
    assert "--num-classes 5 but" in err and "holds 6 identities" in err
    assert load_face_folders(tree, num_classes=6).num_classes == 6


def test_non_finite_loss_stops_the_run(tree, tmp_path, capsys):
    err = _error(
        capsys,
        [
            "train",
            "--input-dir",
            str(tree),
            "--out",
            str(tmp_path),
            "--epochs",
            "1",
            "--center-loss-weight",
            "1e38",
            *FAST,
        ],
    )
    assert "the loss became inf at epoch 1, step 1" in err
    assert "training stopped" in err


@pytest.mark.parametrize(
    "arch,size,flat",
    [("resnet18", 112, 512 * 7 * 7), ("resnet18", 64, 512 * 8 * 8), ("compact", 32, 256 * 2 * 2)],
)
def test_face_backbones(arch, size, flat):
    model = FaceNet(num_classes=4, feature_dim=16, arch=arch, image_size=size).eval()
    assert model.embedding[3].in_features == flat
    with torch.no_grad():
        features, logits = model(torch.zeros(2, 3, size, size))
    assert features.shape == (2, 16) and logits.shape == (2, 4)
    assert model.classifier.bias is None


@pytest.mark.slow
def test_train_under_torchrun_two_ranks(tree, tmp_path):
    """torchrun --nproc-per-node 2 on the CPU (gloo): DDP model, centers synced (the
    script checks the ranks agree every epoch), rank 0 alone logs and saves; then a
    resume on two ranks."""
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
        str(tree),
        "--out",
        str(out),
        "--epochs",
        "2",
        *FAST,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("epoch 2/2") == 1  # rank 0 logs, once
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["environment"]["world_size"] == 2
    assert 0.0 <= metrics["final"]["val_knn1_acc"] <= 1.0  # 2 epochs: mechanics, not accuracy
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["world_size"] == 2 and ckpt["epoch"] == 2

    resumed = subprocess.run(
        cmd[: -len(FAST) - 2] + ["--epochs", "3", *FAST, "--resume"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode != 0 and "--epochs 2" in resumed.stderr  # a changed run refused
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stdout
