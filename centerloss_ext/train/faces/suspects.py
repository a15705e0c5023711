"""`train --drop-suspects-after N`: training through label noise.

After N epochs (the warm-up: the features have formed), each epoch starts by embedding
every train/ image with the model as it stands (eval mode) and flagging the suspects by
`clean`'s rule (``clean.suspects``: robust centers, Otsu's cut of the angles, or
``--suspect-threshold-deg``). For that epoch the flagged images are kept out of the
center loss, so out of the center update too (their rows are not given to it), and with
``--drop-suspects-from all`` out of the softmax loss as well. metrics.json's rows say how
many images were checked and flagged, and the threshold (0, 0, None before epoch N+1).

The flags travel with the batches (``FlaggedImages``: image, label, flag), so every
sampler, worker count and rank sees them; under torchrun rank 0 flags and the others
receive its flags."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch.utils.data import Dataset

from ..core import ddp
from .clean import suspects
from .data import ImageListDataset
from .enroll import embed_images
from .evaluate import Extraction
from .model import FaceNet

DROP_FROM = ("center", "all")  # --drop-suspects-from: center loss only, or both losses


class FlaggedImages(Dataset):
    """(image, label, flagged) of ``images``; ``flagged`` (one bool per image, all False
    at first) is set by ``flag_suspects`` before an epoch's loader starts (the workers are
    not persistent: each epoch's see the epoch's flags)."""

    def __init__(self, images: ImageListDataset) -> None:
        self.images = images
        self.flagged = torch.zeros(len(images), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, label = self.images[index]
        return image, label, bool(self.flagged[index])


def epoch_counts(checked: int = 0, flagged: int = 0, threshold: Optional[float] = None):
    """What an epoch's metrics.json row records about the suspects."""
    return {
        "suspects_checked": checked,
        "suspects_flagged": flagged,
        "suspects_threshold_deg": None if threshold is None else round(threshold, 3),
    }


def flag_suspects(
    net: FaceNet,
    dataset: FlaggedImages,
    num_classes: int,
    how: Extraction,
    threshold_deg: Optional[float],
    ranks: ddp.Ranks,
) -> Dict[str, Any]:
    """Sets ``dataset.flagged`` by `clean`'s rule on the embeddings of ``net`` (rank 0
    embeds; every rank gets its flags); returns the epoch's counts."""
    n = len(dataset)
    # one vector: the flags, then the threshold; the other ranks add zeros to rank 0's
    shared = torch.zeros(n + 1, dtype=torch.float64, device=how.device)
    if ranks.main:
        samples = dataset.images.samples
        was_training = net.training
        net.eval()  # BatchNorm's running statistics, no dropout: the model as it embeds
        try:
            feats = embed_images(net, [p for p, _ in samples], how)
        finally:
            net.train(was_training)
        labels = torch.tensor([y for _, y in samples], dtype=torch.int64)
        flags, threshold = suspects(feats, labels, num_classes, threshold_deg)
        shared[:n] = torch.as_tensor(flags, dtype=torch.float64)
        shared[n] = threshold
    shared = ddp.sum_over_ranks(shared, ranks).cpu()
    dataset.flagged = shared[:n] > 0.5
    return epoch_counts(n, int(dataset.flagged.sum()), float(shared[n]))


def kept_rows(flagged: torch.Tensor, device: torch.device) -> Optional[torch.Tensor]:
    """The indices of a batch's unflagged rows, on ``device``; None when no row is flagged.
    From the batch's CPU flags: no wait for the device."""
    if not bool(flagged.any()):
        return None
    return (~flagged).nonzero().squeeze(1).to(device, non_blocking=True)
