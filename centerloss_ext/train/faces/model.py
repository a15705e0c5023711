"""The face model: FaceNet (the embedder and its identity classifier), how the faces
jobs build it, their mixed-precision choice, and loading a `train` checkpoint.

FaceNet returns ``(features, logits)`` from ``forward`` and has ``embed(x)``; the
classifier is a bias-free linear layer on the features, as in the paper.
"""

from __future__ import annotations

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
MODEL_KEYS = ("arch", "feature_dim", "image_size", "dropout")
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
        self.classifier = nn.Linear(feature_dim, num_classes, bias=False)

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
    """FaceNet from the MODEL_KEYS of a run, on ``device`` in channels-last layout."""
    model = FaceNet(
        num_classes,
        model_config["feature_dim"],
        model_config["arch"],
        model_config["image_size"],
        model_config["dropout"],
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
