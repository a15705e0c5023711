"""The benchmark's distance-matrix baseline computes the SPEC's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from bench.distance_matrix import DistanceMatrixCenterLoss
from centerloss_ext import reference
from helpers import make_batch


@pytest.mark.parametrize("B,D,C", [(1, 3, 4), (37, 5, 7), (64, 2, 10), (0, 4, 3)])
def test_distance_matrix_matches_reference(device, B, D, C):
    x, y, c = make_batch(
        B, D, C, dtype=torch.float64, centers_dtype=torch.float64, device=device, seed=B
    )
    dm = DistanceMatrixCenterLoss(C, D, device=device, dtype=torch.float64)
    with torch.no_grad():
        dm.centers.copy_(c)
    xd = x.clone().requires_grad_()
    loss = dm(xd, y)
    loss.backward()

    xr, cr = x.clone().requires_grad_(), c.clone().requires_grad_()
    want = reference.center_loss(xr, y, cr)
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(xd.grad, xr.grad)
    torch.testing.assert_close(dm.centers.grad, cr.grad)


def test_distance_matrix_float32_centers_with_bfloat16_features():
    x, y, c = make_batch(50, 16, 9, dtype=torch.bfloat16)
    dm = DistanceMatrixCenterLoss(9, 16)
    with torch.no_grad():
        dm.centers.copy_(c)
    x.requires_grad_()
    loss = dm(x, y)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    want = reference.center_loss(x.detach().double(), y, c.double())
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)
