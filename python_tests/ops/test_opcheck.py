"""torch.library.opcheck on every registered op: schema (mutation annotations), fake
kernels, and autograd/functionalization registrations agree with the real kernels."""

from __future__ import annotations

import torch

import centerloss_ext  # noqa: F401  (registers the ops)
from conftest import FLOAT_DTYPES
from helpers import make_batch

ops = torch.ops.centerloss


def _samples(device):
    for dtype in FLOAT_DTYPES:
        for red in (0, 1, 2):
            x, y, c = make_batch(33, 7, 5, dtype=dtype, device=device, seed=red)
            yield x, y, c, red
    x, y, c = make_batch(0, 3, 2, device=device)
    yield x, y, c, 1
    x, y, c = make_batch(
        16,
        4,
        3,
        dtype=torch.float64,
        centers_dtype=torch.float16,
        device=device,
        label_dtype=torch.int32,
    )
    yield x, y, c, 2


def test_opcheck_forward(device):
    for x, y, c, red in _samples(device):
        for need_diff in (True, False):
            torch.library.opcheck(ops.forward.default, (x, y, c, red, need_diff))


def test_opcheck_forward_update_(device):
    for x, y, c, red in _samples(device):
        for det in (False, True):
            torch.library.opcheck(
                ops.forward_update_.default, (c.clone(), x, y, red, 0.5, True, det)
            )


def test_opcheck_update_centers_(device):
    for x, y, c, _ in _samples(device):
        for det in (False, True):
            torch.library.opcheck(ops.update_centers_.default, (c.clone(), x, y, 0.25, det))


def test_opcheck_backward_ops(device):
    for x, y, c, red in _samples(device):
        loss, diff = ops.forward(x, y, c, red, True)
        g = torch.rand_like(loss)
        torch.library.opcheck(ops.backward_features.default, (g, diff, red))
        torch.library.opcheck(ops.backward_features.default, (g, diff, red, x.dtype))
        for det in (False, True):
            torch.library.opcheck(
                ops.backward_centers.default, (g, diff, y, red, c.shape[0], c.dtype, det)
            )


def test_meta_tensors_get_shapes_and_dtypes():
    x = torch.empty(8, 3, device="meta", dtype=torch.float16)
    y = torch.empty(8, device="meta", dtype=torch.int64)
    c = torch.empty(5, 3, device="meta")
    loss, diff = ops.forward(x, y, c, 0, True)
    assert loss.shape == (8,) and loss.dtype == torch.float32
    # the difference rows in the accumulation dtype, never rounded to 16 bits
    assert diff.shape == (8, 3) and diff.dtype == torch.float32
    gx = ops.backward_features(loss, diff, 0, torch.float16)
    assert gx.shape == (8, 3) and gx.dtype == torch.float16
    loss, diff = ops.forward_update_(c, x, y, 1, 0.5, False)
    assert loss.shape == () and diff.shape == (0, 3)
    gc = ops.backward_centers(loss, diff, y[:0], 1, 5, torch.float64)
    assert gc.shape == (5, 3) and gc.dtype == torch.float64
