"""LeNet++, the paper's MNIST network (the face embedder is in ``faces.model``).

Like FaceNet it returns ``(features, logits)`` from ``forward`` and has ``embed(x)``; the
classifier is a bias-free linear layer on the features, as in the paper, so the softmax
decision regions are cones from the origin and the center loss is what makes the
classes compact.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn


class LeNetPlusPlus(nn.Module):
    """LeNet++ (Wen et al. 2016, sec. 3.1): three stages of two 5×5 convolutions (32, 64,
    128 channels, padding 2) with PReLU, each followed by 2×2 max-pooling, then a fully
    connected layer to ``feature_dim`` features (2 in the paper, so they can be plotted)
    with PReLU, then a bias-free linear classifier. Input: (B, 1, 28, 28) in [-1, 1].
    ``batch_norm``: BatchNorm after every convolution (which then has no bias), not in the
    paper; it lets a short run (`make demo`) take a higher learning rate.
    ``trunk_dtype`` (e.g. torch.bfloat16): the convolutions run under autocast to it (the
    bulk of the work); the feature layer, the classifier and so the center loss stay in
    float32, in training and evaluation alike."""

    def __init__(
        self,
        num_classes: int = 10,
        feature_dim: int = 2,
        in_channels: int = 1,
        batch_norm: bool = False,
        trunk_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.trunk_dtype = trunk_dtype

        def conv(cin: int, cout: int) -> list:
            if batch_norm:
                return [
                    nn.Conv2d(cin, cout, 5, padding=2, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.PReLU(cout),
                ]
            return [nn.Conv2d(cin, cout, 5, padding=2), nn.PReLU(cout)]

        def stage(cin: int, cout: int) -> list:
            return [*conv(cin, cout), *conv(cout, cout), nn.MaxPool2d(2)]

        self.trunk = nn.Sequential(*stage(in_channels, 32), *stage(32, 64), *stage(64, 128))
        # 28 -> 14 -> 7 -> 3
        self.embedding = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 3 * 3, feature_dim), nn.PReLU()
        )
        self.classifier = nn.Linear(feature_dim, num_classes, bias=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.trunk_dtype is None:
            return self.embedding(self.trunk(x))
        with torch.autocast(x.device.type, dtype=self.trunk_dtype):
            h = self.trunk(x)
        return self.embedding(h.float())

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(x)
        return features, self.classifier(features)
