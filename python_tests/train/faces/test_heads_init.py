"""Margin heads and a pretrained start (issue 23): each head's logits against the direct
formula, `train --head` end to end (saved in the checkpoint, used unchanged by the other
commands), and `train --init` from an earlier run and from a torchvision ResNet-18 state
dict, with one line for what does not fit."""

from __future__ import annotations

import math

import pytest
import torch

from centerloss_ext.train.core.errors import TrainingError
from centerloss_ext.train.faces import cli as faces
from centerloss_ext.train.faces.model import FaceHead, FaceNet, init_backbone
from centerloss_ext.train.faces.synthetic import make_synthetic_faces

FAST = ["--arch", "compact", "--image-size", "32", "--feature-dim", "16", "--no-progress"]
RUNTIME = ["--batch-size", "8", "--workers", "0", "--device", "cpu"]


def _direct(kind, features, weight, labels, m, s):
    """The heads' training logits, one element at a time."""
    out = torch.empty(len(features), len(weight), dtype=torch.float64)
    for a, (f, y) in enumerate(zip(features.double(), labels.tolist())):
        for j, w in enumerate(weight.double()):
            if kind == "softmax":
                out[a, j] = float(f @ w)
                continue
            cos = float(f @ w / (f.norm() * w.norm()))
            if j == y and kind == "cosface":
                cos -= m
            elif j == y:
                theta = math.acos(max(-1.0, min(1.0, cos)))
                cos = math.cos(theta + m) if theta + m <= math.pi else cos - math.sin(m) * m
            out[a, j] = s * cos
    return out


@pytest.mark.parametrize(
    "kind, m, s",
    [
        ("softmax", 0.0, 64.0),
        ("cosface", 0.35, 64.0),
        ("arcface", 0.5, 64.0),
        ("arcface", 0.5, 30.0),
    ],
)
def test_head_logits_match_the_formula(kind, m, s):
    torch.manual_seed(0)
    head = FaceHead(6, 5, kind, m, s)
    features = torch.randn(40, 6)
    features[0] = -head.weight[2].detach()  # θ_y = π: past ArcFace's threshold
    labels = torch.randint(0, 5, (40,))
    labels[0] = 2
    with torch.no_grad():
        plain = head(features)
        trained = head.with_margin(plain, labels)
    expected = _direct(kind, features, head.weight.detach(), labels, m, s)
    assert torch.allclose(trained.double(), expected, atol=1e-4 * s)
    # prediction uses the logits without the margin
    no_margin = _direct(kind, features, head.weight.detach(), labels, 0.0, s)
    assert torch.allclose(plain.double(), no_margin, atol=1e-4 * s)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_synthetic_faces(
        tmp_path_factory.mktemp("heads"),
        identities=4,
        train_per_identity=4,
        val_per_identity=2,
        unseen=0,
        image_size=32,
    )


@pytest.fixture(scope="module")
def earlier(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("earlier")
    faces.main(
        ["train", "--input-dir", str(tree), "--out", str(out), "--epochs", "1"] + FAST + RUNTIME
    )
    return out / "checkpoint.pt"


@pytest.mark.parametrize("head", ["cosface", "arcface"])
def test_train_with_a_margin_head(tree, tmp_path, head):
    out = tmp_path / head
    result = faces.main(
        [
            "train",
            "--input-dir",
            str(tree),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--head",
            head,
            "--lambda",
            "0",
        ]
        + FAST
        + RUNTIME
    )
    config = result["config"]
    assert config["head"] == head and config["scale"] == 64.0
    assert config["margin"] == {"cosface": 0.35, "arcface": 0.5}[head]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["model_config"]["head"] == head
    ev = faces.main(
        [
            "eval",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--input-dir",
            str(tree),
            "--out",
            str(tmp_path / "ev"),
        ]
        + RUNTIME
    )
    assert ev["val_softmax_acc"] == pytest.approx(result["final"]["val_softmax_acc"])


def test_margin_needs_a_margin_head(tree, tmp_path, capsys):
    with pytest.raises(SystemExit):
        faces.main(
            ["train", "--input-dir", str(tree), "--out", str(tmp_path / "o"), "--margin", "0.3"]
            + FAST
            + RUNTIME
        )
    assert "--margin is for --head cosface or arcface" in capsys.readouterr().err


def test_init_from_an_earlier_run(tree, earlier, tmp_path, capsys):
    saved = torch.load(earlier, weights_only=True)["model"]
    net = FaceNet(9, 16, "compact", 32, 0.2)  # another number of identities
    before = net.classifier.weight.detach().clone()
    assert "backbone" in init_backbone(net, earlier, "compact")
    state = net.state_dict()
    for key, value in saved.items():
        if not key.startswith("classifier."):
            assert torch.equal(state[key], value), key
    assert torch.equal(net.classifier.weight, before)  # the head starts new

    # end to end, on a two-identity subset
    out = tmp_path / "fine"
    faces.main(
        [
            "train",
            "--input-dir",
            str(tree),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--init",
            str(earlier),
            "--head",
            "arcface",
        ]
        + FAST
        + RUNTIME
    )
    assert "--init: the backbone of" in capsys.readouterr().out

    with pytest.raises(TrainingError, match=r"missing: embedding\.3\.weight|other shapes"):
        init_backbone(FaceNet(4, 8, "compact", 32, 0.2), earlier, "compact")


def test_init_from_a_torchvision_resnet18(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    source = resnet18(weights=None).state_dict()
    torch.save(source, tmp_path / "resnet18.pth")
    net = FaceNet(3, 8, "resnet18", 16, 0.0)
    stem = net.trunk[0].weight.detach().clone()
    assert "ResNet-18" in init_backbone(net, tmp_path / "resnet18.pth", "resnet18")
    assert torch.equal(net.trunk[4][1].conv2.weight, source["layer2.1.conv2.weight"])
    assert torch.equal(net.trunk[1].running_var, source["bn1.running_var"])
    assert torch.equal(net.trunk[0].weight, stem)  # the 3x3 stem starts new

    with pytest.raises(TrainingError, match="--arch resnet18"):
        init_backbone(FaceNet(3, 8, "compact", 16, 0.0), tmp_path / "resnet18.pth", "compact")
    extra = dict(source, **{"layer5.0.weight": torch.zeros(1)})
    del extra["layer4.1.bn2.bias"]
    torch.save(extra, tmp_path / "odd.pth")
    with pytest.raises(TrainingError) as e:
        init_backbone(FaceNet(3, 8, "resnet18", 16, 0.0), tmp_path / "odd.pth", "resnet18")
    message = str(e.value)
    assert "\n" not in message
    assert "missing: trunk.6.1.bn2.bias" in message and "unexpected: layer5.0.weight" in message
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(TrainingError, match="neither a checkpoint"):
        init_backbone(net, tmp_path / "other.pth", "resnet18")
