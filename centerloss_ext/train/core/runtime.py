"""Where a run's randomness and device come from: seeding every generator, and the
device a --device value names."""

from __future__ import annotations

import random

import torch

from .errors import TrainingError


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's generators (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when a GPU is visible; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            f"--device {name}: no CUDA GPU is visible to torch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})"
        )
    return device
