"""A new user's first hour with the training command lines (issue 13, items 5-7 and 9):
every failure is one line with exit status 2 naming the flag or file and what to do;
output folders never mix two runs; Ctrl-C keeps a consistent checkpoint and prints the
command that resumes; a failed run leaves no empty folder; --help says what is true."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from centerloss_ext.train.core import plots
from centerloss_ext.train.faces import cli as faces
from centerloss_ext.train.faces import train as faces_train
from centerloss_ext.train.faces.synthetic import make_synthetic_faces
from centerloss_ext.train.mnist import cli as mnist

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
    return make_synthetic_faces(
        tmp_path_factory.mktemp("faces"),
        identities=3,
        train_per_identity=8,
        val_per_identity=2,
        unseen=0,
        image_size=32,
        seed=0,
    )


def _fails(capsys, main, argv, code=2) -> str:
    """Runs a command line that must fail; returns its stderr, checked to be one line
    of message (after the usage lines argparse prints) and no traceback."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _train(tree, out, *extra):
    return faces.main(["train", "--input-dir", str(tree), "--out", str(out), *FAST, *extra])


# ------------------------------------------------------------------ flags (items 6, 7)


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--lr", "-1", "argument --lr: must be a number > 0; got -1"),
        ("--lr", "0", "argument --lr: must be a number > 0; got 0"),
        ("--lr", "nan", "argument --lr: must be a number > 0; got nan"),
        ("--alpha", "2", "argument --alpha: must be a number in [0, 1]; got 2"),
        ("--image-size", "4", "argument --image-size: must be an integer >= 16; got 4"),
        (
            "--device",
            "gpu",
            "argument --device: unknown device 'gpu': use cpu, cuda, cuda:N or auto",
        ),
        ("--epochs", "0", "argument --epochs: must be an integer >= 1; got 0"),
        (
            "--center-loss-weight",
            "-0.1",
            "argument --center-loss-weight/--lambda: must be a number >= 0; got -0.1",
        ),
    ],
)
def test_a_bad_flag_is_one_line_under_the_subcommands_usage(
    tree, tmp_path, capsys, flag, value, message
):
    with pytest.raises(SystemExit) as e:
        faces.main(
            [
                "train",
                "--input-dir",
                str(tree),
                "--out",
                str(tmp_path / "o"),
                "--epochs",
                "1",
                *FAST,
                flag,
                value,
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: centerloss-faces train ")  # the subcommand's usage
    assert err.splitlines()[-1].startswith(f"centerloss-faces train: error: {message}")
    assert sum("error:" in line for line in err.splitlines()) == 1  # one flag, one line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lr", "0"], "argument --lr: must be a number > 0"),
        (["--alpha", "2"], "argument --alpha: must be a number in [0, 1]"),
        (["--device", "gpu"], "argument --device: unknown device 'gpu'"),
    ],
)
def test_mnist_flags(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        mnist.main(["--out", str(tmp_path / "o"), "--data", str(tmp_path / "none"), *argv])
    assert e.value.code == 2
    assert f"centerloss-mnist: error: {message}" in capsys.readouterr().err


def test_help_shows_no_default_for_flags(capsys):
    with pytest.raises(SystemExit):
        faces.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--no-augment no random crop/flip/colour jitter --epochs" in help_text
    assert "(default: True)" not in help_text and "(default: False)" not in help_text
    assert "passes over train/ (default: 20)" in help_text  # values keep theirs


# ------------------------------------------------------------------ files (item 6)


def test_unreadable_checkpoints_and_galleries_are_one_line(tree, tmp_path, capsys):
    _train(tree, tmp_path / "run", "--epochs", "1")
    good = tmp_path / "run" / "checkpoint.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    pickled = tmp_path / "object.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a module: weights_only refuses
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)  # loads, but not ours
    run = ["--workers", "0", "--device", "cpu"]
    for bad in (truncated, text, pickled):
        line = _fails(
            capsys, faces.main, ["eval", "--checkpoint", str(bad), "--input-dir", str(tree), *run]
        )
        assert line.startswith(
            f"centerloss-faces: error: --checkpoint {bad}: not a readable "
            "checkpoint of these scripts (truncated, or another kind"
        )
    line = _fails(
        capsys, faces.main, ["eval", "--checkpoint", str(plain), "--input-dir", str(tree), *run]
    )
    assert f"--checkpoint {plain}: not a checkpoint of these scripts (no config" in line
    query = ["--query", str(tree / "val" / "id_000"), *run]
    for bad in (truncated, text, pickled, plain, good):  # a checkpoint is no gallery
        line = _fails(
            capsys,
            faces.main,
            ["identify", "--checkpoint", str(good), "--gallery", str(bad), *query],
        )
        assert f"--gallery {bad}: not an embeddings file written by `embed`" in line
        assert line.endswith("run `embed` to make one")
    npz = tmp_path / "broken.npz"
    npz.write_bytes(b"PK\x03\x04 broken")
    line = _fails(
        capsys, faces.main, ["identify", "--checkpoint", str(good), "--gallery", str(npz), *query]
    )
    assert f"--gallery {npz}: not an embeddings file" in line
    # --resume with a truncated checkpoint in --out
    (tmp_path / "run" / "checkpoint.pt").write_bytes(truncated.read_bytes())
    line = _fails(
        capsys,
        faces.main,
        ["train", "--input-dir", str(tree), "--out", str(tmp_path / "run"), "--resume", *FAST],
    )
    assert f"--resume: {tmp_path / 'run' / 'checkpoint.pt'}: not a readable checkpoint" in line
    line = _fails(
        capsys,
        faces.main,
        ["train", "--input-dir", str(tree), "--out", str(tmp_path / "none"), "--resume", *FAST],
    )
    assert "--resume: no checkpoint at" in line and "drop --resume" in line
    assert not (tmp_path / "none").exists()


def test_a_corrupt_image_with_the_default_workers_is_one_line(tree, tmp_path, capsys):
    """With data-loading worker processes (the default), the DataLoader wraps the
    worker's error in a multi-line "Caught DataError in DataLoader worker process 0";
    the command line prints the original message alone."""
    import shutil

    root = shutil.copytree(tree, tmp_path / "tree")
    bad = root / "train" / "id_001" / "id_001_003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    args = [a for a in FAST if a not in ("--workers", "0")]
    assert "--workers" not in args
    line = _fails(
        capsys,
        faces.main,
        ["train", "--input-dir", str(root), "--out", str(tmp_path / "o"), "--workers", "2", *args],
    )
    assert line.startswith(f"centerloss-faces: error: cannot read image {bad}: ")
    assert not (tmp_path / "o").exists()  # item 7: no empty folder left


# ------------------------------------------------------------------ output folders (5, 7)


def test_a_non_empty_out_needs_resume_or_overwrite(tree, tmp_path, capsys):
    out = tmp_path / "run"
    _train(tree, out, "--epochs", "2")
    first = torch.load(out / "checkpoint.pt", weights_only=True)
    # files a user would find there: eval's, an enrolled gallery, and one of their own
    faces.main(
        [
            "eval",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--input-dir",
            str(tree),
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    faces.main(
        [
            "embed",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--images",
            str(tree / "train"),
            "--out",
            str(out / "enrolled.npz"),
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    (out / "notes.txt").write_text("mine\n")
    capsys.readouterr()
    line = _fails(
        capsys,
        faces.main,
        ["train", "--input-dir", str(tree), "--out", str(out), "--epochs", "1", *FAST],
    )
    assert line.startswith(f"centerloss-faces: error: --out {out} is not empty (")
    assert line.endswith(
        "add --resume to continue the run there, --overwrite to replace it, or choose another --out"
    )
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2  # untouched
    # --resume with fewer epochs than done: says so and stops
    line = _fails(
        capsys,
        faces.main,
        ["train", "--input-dir", str(tree), "--out", str(out), "--epochs", "1", "--resume", *FAST],
    )
    assert "--resume --epochs 1:" in line and "has already finished 2 epochs" in line
    assert "pass --epochs 2 or more" in line
    # --overwrite: the previous run's files go, the user's stay
    result = _train(tree, out, "--epochs", "1", "--overwrite", "--seed", "1")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint.pt", "curves.png", "metrics.json", "notes.txt", "roc.png"]
    assert [h["epoch"] for h in result["history"]] == [1]
    second = torch.load(out / "checkpoint.pt", weights_only=True)
    assert second["epoch"] == 1 and second["config"]["seed"] == 1 and first["epoch"] == 2
    assert "--overwrite: removed" in capsys.readouterr().out
    assert _fails(
        capsys,
        faces.main,
        ["train", "--input-dir", str(tree), "--out", str(out), "--resume", "--overwrite", *FAST],
    ).endswith("argument --overwrite: not allowed with argument --resume")


def test_a_failed_run_leaves_no_empty_folder(tree, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    line = _fails(
        capsys,
        faces.main,
        [
            "train",
            "--input-dir",
            str(tree),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--center-loss-weight",
            "1e38",
            *FAST,
        ],
    )
    assert "the loss became inf" in line
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    _fails(
        capsys,
        faces.main,
        [
            "train",
            "--input-dir",
            str(tree),
            "--out",
            str(tmp_path / "mine"),
            "--epochs",
            "1",
            "--center-loss-weight",
            "1e38",
            *FAST,
        ],
    )
    assert (tmp_path / "mine").is_dir()


# ------------------------------------------------------------------ Ctrl-C (item 6)


def test_ctrl_c_keeps_a_consistent_checkpoint_and_prints_the_resume_command(
    tree, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    argv = ["train", "--input-dir", str(tree), "--out", str(out), "--epochs", "3", *FAST]
    real_evaluate = faces_train.evaluate

    def evaluate_then_ctrl_c(*a, **k):  # Ctrl-C after epoch 2's training
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        return real_evaluate(*a, **k)

    calls = []
    monkeypatch.setattr(faces_train, "evaluate", evaluate_then_ctrl_c)
    with pytest.raises(SystemExit) as e:
        faces.main(argv)
    assert e.value.code == 130
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"centerloss-faces: interrupted: during epoch 2; {out / 'checkpoint.pt'} "
        "holds the 2 finished epochs",
        "centerloss-faces: continue with: python -m centerloss_ext.train.faces "
        + " ".join(argv)
        + " --resume",
    ]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2  # trained, saved whole
    assert ckpt["scheduler"]["last_epoch"] == 2 * 1  # 24 images / 16: 1 step
    monkeypatch.setattr(faces_train, "evaluate", real_evaluate)
    resumed = faces.main(argv + ["--resume"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]

    # Ctrl-C in the first epoch: nothing to resume, and no folder left behind
    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(faces_train, "train_one_epoch", ctrl_c)
    with pytest.raises(SystemExit) as e:
        faces.main(["train", "--input-dir", str(tree), "--out", str(tmp_path / "b"), *FAST])
    assert e.value.code == 130
    assert capsys.readouterr().err.splitlines() == [
        "centerloss-faces: interrupted: during epoch 1, before any epoch finished: nothing "
        "was saved"
    ]
    assert not (tmp_path / "b").exists()


def test_real_sigint(tree, tmp_path):
    """A real Ctrl-C (SIGINT to the process group) once the first checkpoint exists: exit
    status 130, two lines, a loadable checkpoint; with two data-loading workers, which
    get the signal too (test_workers.py sends it at many more moments of a loop)."""
    out = tmp_path / "run"
    fast = [a if a != "0" or FAST[i - 1] != "--workers" else "2" for i, a in enumerate(FAST)]
    cmd = [
        sys.executable,
        "-m",
        "centerloss_ext.train.faces",
        "train",
        "--input-dir",
        str(tree),
        "--out",
        str(out),
        "--epochs",
        "1000",
        *fast,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        while not (out / "checkpoint.pt").exists() and proc.poll() is None:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("centerloss-faces: interrupted: during epoch ")
    assert lines[1].endswith(" --resume") and "continue with:" in lines[1]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == len(ckpt["history"]) >= 1
    assert not list(out.glob("*.tmp"))


# ------------------------------------------------------------------ curves (item 9)


def test_the_loss_axis_labels_values_above_one():
    history = [
        {
            "epoch": 1,
            "train_loss": 1.5,
            "train_softmax_loss": 1.4,
            "train_center_loss": 0.02,
            "train_acc": 0.4,
        },
        {
            "epoch": 2,
            "train_loss": 0.9,
            "train_softmax_loss": 0.8,
            "train_center_loss": 0.01,
            "train_acc": 0.7,
        },
    ]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.curves_figure(history)
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    labelled = [
        t.get_loc()
        for t in ax.yaxis.get_major_ticks()
        if low <= t.get_loc() <= high and t.label1.get_text()
    ]
    assert max(labelled) >= 1.5 and min(labelled) <= 0.01  # the data inside labels
