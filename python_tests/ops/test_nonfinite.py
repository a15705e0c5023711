"""SPEC: non-finite features show in the loss but stay out of the alpha update."""

from __future__ import annotations

import pytest
import torch

import centerloss_ext as cl
from centerloss_ext import reference
from conftest import FLOAT_DTYPES
from helpers import make_batch

IMPLS = {"compiled": cl, "reference": reference}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_rows_leave_the_update(device, impl, dtype, bad):
    x, y, c = make_batch(30, 5, 4, dtype=dtype, device=device, seed=21)
    y[:3] = 0
    x[1, 2] = bad  # class 0 keeps two good rows
    y[7] = 2
    x[y == 2] = bad  # class 2 has only bad rows: as if absent
    before = c.clone()
    loss = IMPLS[impl].center_loss_and_update_(x, y, c, 0.5, "none")
    good = torch.isfinite(x).all(1)
    assert not torch.isfinite(loss[~good]).any()
    assert torch.isfinite(loss[good]).all()
    assert torch.isfinite(c).all()
    assert torch.equal(c[2], before[2])
    expected = reference.update_centers_(before.clone(), x[good], y[good], 0.5)
    torch.testing.assert_close(c, expected)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_loss_shows_nan(device, reduction):
    x, y, c = make_batch(10, 3, 2, device=device)
    x[4, 0] = float("nan")
    assert torch.isnan(cl.center_loss(x, y, c, reduction))
    x[4, 0] = float("inf")
    assert torch.isinf(cl.center_loss(x, y, c, reduction))


def test_one_bad_batch_does_not_poison_training(device):
    crit = cl.CenterLoss(3, 4, device=device)
    x = torch.randn(12, 4, device=device)
    y = torch.arange(12, device=device) % 3
    crit(x, y)
    good = crit.centers.clone()
    crit(torch.full((12, 4), float("nan"), device=device), y)
    assert torch.equal(crit.centers, good)
