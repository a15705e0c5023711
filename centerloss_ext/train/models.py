"""The networks: LeNet++ (the paper's MNIST net) and the face embedders.

Every model returns ``(features, logits)`` from ``forward`` and has ``embed(x)``; the
classifier is a bias-free linear layer on the features, as in the paper, so the softmax
decision regions are cones from the origin and the center loss is what makes the
classes compact.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

FACE_ARCHS = ("resnet18", "compact")


class LeNetPlusPlus(nn.Module):
    """LeNet++ (Wen et al. 2016, sec. 3.1): three stages of two 5×5 convolutions (32, 64,
    128 channels, padding 2) with PReLU, each followed by 2×2 max-pooling, then a fully
    connected layer to ``feature_dim`` features (2 in the paper, so they can be plotted)
    with PReLU, then a bias-free linear classifier. Input: (B, 1, 28, 28) in [-1, 1]."""

    def __init__(self, num_classes: int = 10, feature_dim: int = 2, in_channels: int = 1) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> list:
            return [nn.Conv2d(cin, cout, 5, padding=2), nn.PReLU(cout),
                    nn.Conv2d(cout, cout, 5, padding=2), nn.PReLU(cout),
                    nn.MaxPool2d(2)]

        self.trunk = nn.Sequential(*stage(in_channels, 32), *stage(32, 64), *stage(64, 128))
        # 28 -> 14 -> 7 -> 3
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(128 * 3 * 3, feature_dim),
                                       nn.PReLU())
        self.classifier = nn.Linear(feature_dim, num_classes, bias=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.trunk(x))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(x)
        return features, self.classifier(features)


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
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3,
                         net.layer4)


def _compact_trunk() -> nn.Module:
    """Four stages of two 3×3 conv-BN-ReLU (32, 64, 128, 256 channels), each halving the
    resolution: ~1.2 M parameters, for CPUs, small data sets and tests."""
    layers: list = []
    cin = 3
    for cout in (32, 64, 128, 256):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                   nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
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

    def __init__(self, num_classes: int, feature_dim: int = 512, arch: str = "resnet18",
                 image_size: int = 112, dropout: float = 0.2) -> None:
        super().__init__()
        if arch not in FACE_ARCHS:
            raise ValueError(f"arch must be one of {FACE_ARCHS}; got {arch!r}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16; got {image_size}")
        self.trunk = _resnet18_trunk(image_size) if arch == "resnet18" else _compact_trunk()
        channels, height, width = self._trunk_output_shape(image_size)
        self.embedding = nn.Sequential(
            nn.BatchNorm2d(channels), nn.Dropout(dropout), nn.Flatten(),
            nn.Linear(channels * height * width, feature_dim, bias=False),
            nn.BatchNorm1d(feature_dim))
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
