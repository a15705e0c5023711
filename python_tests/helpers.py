"""Test helpers: the repository root, random batches and the float64 oracle."""

from __future__ import annotations

from pathlib import Path

import torch

from centerloss_ext import reference

# The clone's root folder (python_tests/ is one level down; the tests sit in layer folders).
REPO_ROOT = Path(__file__).resolve().parent.parent

# (rtol, atol) by features dtype, for values computed from the same rounded inputs.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}


def coarser(*dtypes):
    """The dtype with the loosest tolerance."""
    return max(dtypes, key=lambda d: TOL[d][0])


def make_batch(
    B: int,
    D: int,
    C: int,
    dtype=torch.float32,
    centers_dtype=torch.float32,
    device="cpu",
    seed: int = 0,
    label_dtype=torch.int64,
):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g).to(dtype=dtype, device=device)
    y = torch.randint(0, C, (B,), generator=g).to(dtype=label_dtype, device=device)
    c = torch.randn(C, D, generator=g).to(dtype=centers_dtype, device=device)
    return x, y, c


def oracle_loss(x, y, c, reduction="mean"):
    """The loss computed in float64 from the same (possibly 16-bit) inputs."""
    return reference.center_loss(x.double(), y.long(), c.double(), reduction)


def oracle_update(c, x, y, alpha):
    """The alpha rule computed in float64: the updated centers, in float64."""
    return reference.update_centers_(c.double().clone(), x.double(), y.long(), alpha)


def assert_close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol * scale
    )


# --- tiny Fashion-MNIST-like IDX folders for the training tests ---------------------------


def write_idx(path, array, compress: bool = False) -> None:
    """An IDX file of unsigned bytes (gzipped to ``path``.gz with ``compress``)."""
    import gzip

    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype("uint8").tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        Path(path).write_bytes(payload)


def bar_images(labels, rng):
    """28 x 28 images of a bright horizontal bar at row 2 + 2·y (class y), plus noise."""
    images = rng.integers(0, 60, (len(labels), 28, 28))
    for i, y in enumerate(labels):
        images[i, 2 + 2 * y : 4 + 2 * y, 4:24] = 255
    return images


def idx_folder(root, train: int, test: int, compress_train: bool = False):
    """``root`` with train/t10k image and label IDX files of ``train`` / ``test`` images,
    classes 0-9 in turn (seeded: the same images every time)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n, compress in (("train", train, compress_train), ("t10k", test, False)):
        labels = np.arange(n) % 10
        write_idx(root / f"{split}-images-idx3-ubyte", bar_images(labels, rng), compress)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels, compress)
    return root
