"""The face model: FaceNet (the embedder and its identity classifier), how the faces
jobs build it, their mixed-precision choice, and loading a `train` checkpoint.

FaceNet returns ``(features, logits)`` from ``forward`` and has ``embed(x)``; the
classifier (FaceHead) is a bias-free linear layer on the features, as in the paper
(``softmax``), or a CosFace / ArcFace head: the scaled cosine of the features and the
class weights, with the class margin added in training (``FaceHead.with_margin``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ... import CenterLoss
from ..core.errors import TrainingError
from ..core.files import load_checkpoint
from ..core.runtime import resolve_device

PROG = "centerloss-faces"
CHECKPOINT_KIND = "centerloss_ext.faces"
FACE_ARCHS = ("resnet18", "compact")
MODEL_KEYS = ("arch", "feature_dim", "image_size", "dropout", "head", "margin", "scale")
HEADS = ("softmax", "cosface", "arcface")
DEFAULT_MARGIN = {"softmax": 0.0, "cosface": 0.35, "arcface": 0.5}
DEFAULT_SCALE = 64.0
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def _resnet18_trunk(image_size: int) -> nn.Module:
    """torchvision's ResNet-18 body for small face crops: the 7×7/2 stem and the max-pool
    would shrink a 112×112 face to 28×28 before the first block, so the stem becomes one
    3×3 convolution (stride 2 from 96 px up, else 1) and the max-pool goes; layer4 then
    ends at 7×7 for 112 px, 8×8 for 64 px (ArcFace's IResNet does the same)."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    stride = 2 if image_size >= 96 else 1
    net.conv1 = nn.Conv2d(3, 64, 3, stride=stride, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4
    )


def _compact_trunk() -> nn.Module:
    """Four stages of two 3×3 conv-BN-ReLU (32, 64, 128, 256 channels), each halving the
    resolution: ~1.2 M parameters, for CPUs, small data sets and tests."""
    layers: list = []
    cin = 3
    for cout in (32, 64, 128, 256):
        layers += [
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        cin = cout
    return nn.Sequential(*layers)


class FaceHead(nn.Linear):
    """The identity classifier: a bias-free linear layer (its ``weight``, one row per
    identity, is ``classifier.weight`` in every checkpoint, whatever the head).

    - ``softmax``: logits = W f.
    - ``cosface`` (Wang et al. 2018): logits = s cos θ_j, and in training
      s (cos θ_y − m) for the true class.
    - ``arcface`` (Deng et al. 2019): logits = s cos θ_j, and in training s cos(θ_y + m)
      for the true class where θ_y + m ≤ π (cos θ_y > cos(π − m)); beyond, where cos(θ + m)
      would no longer fall with θ, s (cos θ_y − m sin m) instead (the paper's and
      insightface's threshold handling, not its easy margin).

    θ_j is the angle between the features and class j's weight. ``forward`` gives the
    logits without the margin (what prediction and accuracy use); the loss takes
    ``with_margin(logits, labels)``.
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        kind: str = "softmax",
        margin: float = 0.0,
        scale: float = DEFAULT_SCALE,
    ) -> None:
        super().__init__(feature_dim, num_classes, bias=False)
        if kind not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; got {kind!r}")
        self.kind, self.margin, self.scale = kind, float(margin), float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "softmax":
            return super().forward(features)
        with torch.autocast(features.device.type, enabled=False):  # cosines in float32
            cosine = nn.functional.linear(
                nn.functional.normalize(features.float(), dim=1),
                nn.functional.normalize(self.weight.float(), dim=1),
            )
        return self.scale * cosine

    def with_margin(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training logits (float32): ``logits`` (from forward) with the true class's
        margin."""
        logits = logits.float()
        if self.kind == "softmax" or self.margin == 0:
            return logits
        target = logits.gather(1, labels[:, None]) / self.scale  # cos θ_y
        if self.kind == "cosface":
            changed = target - self.margin
        else:
            m = self.margin
            sine = (1.0 - target.pow(2)).clamp(min=0.0).sqrt()
            changed = torch.where(
                target > math.cos(math.pi - m),
                target * math.cos(m) - sine * math.sin(m),  # cos(θ + m)
                target - math.sin(math.pi - m) * m,
            )
        return logits.scatter(1, labels[:, None], self.scale * changed)


class FaceNet(nn.Module):
    """A face embedder and its identity classifier.

    trunk -> BatchNorm2d -> Dropout -> Flatten -> Linear -> BatchNorm1d = the embedding
    (ArcFace's "BN-Dropout-FC-BN" output layer): the flattened map keeps where things are
    on the face, which global pooling would throw away, and the BatchNorm on both sides of
    the wide linear layer keeps its output scaled whatever the input, which the original
    scripts' bare 43,520-wide flatten did not. Classifier: bias-free linear.
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int = 512,
        arch: str = "resnet18",
        image_size: int = 112,
        dropout: float = 0.2,
        head: str = "softmax",
        margin: float = 0.0,
        scale: float = DEFAULT_SCALE,
    ) -> None:
        super().__init__()
        if arch not in FACE_ARCHS:
            raise ValueError(f"arch must be one of {FACE_ARCHS}; got {arch!r}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16; got {image_size}")
        self.trunk = _resnet18_trunk(image_size) if arch == "resnet18" else _compact_trunk()
        channels, height, width = self._trunk_output_shape(image_size)
        self.embedding = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(channels * height * width, feature_dim, bias=False),
            nn.BatchNorm1d(feature_dim),
        )
        self.classifier = FaceHead(feature_dim, num_classes, head, margin, scale)

    @torch.no_grad()
    def _trunk_output_shape(self, image_size: int) -> Tuple[int, int, int]:
        was_training = self.trunk.training
        self.trunk.eval()
        shape = self.trunk(torch.zeros(1, 3, image_size, image_size)).shape[1:]
        self.trunk.train(was_training)
        return tuple(shape)  # type: ignore[return-value]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.trunk(x))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(x)
        return features, self.classifier(features)


@dataclass(frozen=True)
class Runtime:
    """Where and how a faces job runs: the device (cpu, cuda, cuda:N or auto), images
    per batch, data-loading processes and mixed precision (auto, bf16, fp16, off)."""

    device: str = "auto"
    batch_size: int = 128
    workers: int = DEFAULT_WORKERS
    amp: str = "auto"

    def resolve(self) -> Tuple[torch.device, Optional[torch.dtype]]:
        device = resolve_device(self.device)
        return device, amp_dtype(self.amp, device)


def amp_dtype(choice: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for full precision."""
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "fp16" and device.type != "cuda":
        raise TrainingError("--amp fp16 needs a CUDA device (use bf16 on the CPU)")
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if choice == "bf16" else torch.float16


def build_model(model_config: Dict[str, Any], num_classes: int, device: torch.device) -> FaceNet:
    """FaceNet from the MODEL_KEYS of a run, on ``device`` in channels-last layout (a
    checkpoint from before the margin heads has a softmax head)."""
    model = FaceNet(
        num_classes,
        model_config["feature_dim"],
        model_config["arch"],
        model_config["image_size"],
        model_config["dropout"],
        model_config.get("head") or "softmax",
        model_config.get("margin") or 0.0,
        model_config.get("scale") or DEFAULT_SCALE,
    )
    return model.to(device).to(memory_format=torch.channels_last)


def load_face_model(path: Path, device: torch.device) -> Tuple[FaceNet, CenterLoss, Dict]:
    """The model (eval mode), the centers and the checkpoint written by `train`."""
    ckpt = load_checkpoint(path, map_location=device)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise TrainingError(
            f"--checkpoint {path}: not a checkpoint of `{PROG} train`; give "
            "the checkpoint.pt that it wrote"
        )
    cfg = ckpt["model_config"]
    num_classes = len(ckpt["class_names"])
    model = build_model(cfg, num_classes, device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    center_loss = CenterLoss(num_classes, cfg["feature_dim"], device=device)
    center_loss.load_state_dict(ckpt["center_loss"])
    center_loss.eval()
    return model, center_loss, ckpt


def _torchvision_resnet18_keys(state: Dict[str, Any]) -> Dict[str, Any]:
    """A torchvision ResNet-18 state dict under FaceNet's trunk names: bn1 -> trunk.1,
    layer1..4 -> trunk.3..6. Its 7×7 stem convolution (``conv1``) does not fit the 3×3 face
    stem and ``fc`` is ImageNet's classifier: both are left out (the stem starts new)."""
    renamed = {}
    for key, value in state.items():
        if key == "conv1.weight" or key.startswith("fc."):
            continue
        head, _, rest = key.partition(".")
        if head == "bn1":
            renamed[f"trunk.1.{rest}"] = value
        elif head in ("layer1", "layer2", "layer3", "layer4"):
            renamed[f"trunk.{int(head[-1]) + 2}.{rest}"] = value
        else:
            renamed[key] = value  # unexpected: named in the error
    return renamed


def init_backbone(model: FaceNet, path: Path, arch: str) -> str:
    """Loads the backbone (trunk and embedding) of ``model`` from ``path``: a `train`
    checkpoint (any number of identities; same --arch, --feature-dim and --image-size) or a
    torchvision ResNet-18 state dict (--arch resnet18; the trunk only, less its stem). The
    head and the centers stay new. A file that does not fit is a TrainingError naming the
    missing, unexpected or differently shaped keys. Returns what was loaded, in words."""
    state = load_checkpoint(path, map_location="cpu", flag="--init", required=())
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    if isinstance(state, dict) and state.get("kind") == CHECKPOINT_KIND:
        source = {k: v for k, v in state["model"].items() if not k.startswith("classifier.")}
        what = f"the backbone of {path} (trunk and embedding)"
    elif isinstance(state, dict) and "layer1.0.conv1.weight" in state:
        if arch != "resnet18":
            raise TrainingError(f"--init {path}: a ResNet-18 state dict needs --arch resnet18")
        source = _torchvision_resnet18_keys(state)
        own = {k: v for k, v in own.items() if k.startswith("trunk.") and k != "trunk.0.weight"}
        what = f"ResNet-18 layers of {path} (bn1, layer1-4; the stem and embedding start new)"
    else:
        raise TrainingError(
            f"--init {path}: neither a checkpoint of `{PROG} train` nor a torchvision "
            "ResNet-18 state dict"
        )
    missing = sorted(set(own) - set(source))
    unexpected = sorted(set(source) - set(own))
    shapes = [
        f"{k} {tuple(source[k].shape)} (model: {tuple(own[k].shape)})"
        for k in sorted(set(own) & set(source))
        if tuple(source[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def few(keys: list) -> str:
            return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

        parts = [
            f"{label}: {few(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("other shapes", shapes),
            )
            if keys
        ]
        raise TrainingError(
            f"--init {path} does not fit this --arch/--feature-dim/--image-size backbone "
            f"({'; '.join(parts)})"
        )
    model.load_state_dict(source, strict=False)
    return what
