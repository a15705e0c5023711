"""16-bit features on the CPU: the differences x - c are formed, saved and summed in the
accumulation type (float32, float64 when features or centers are float64), never rounded
to 16 bits on the way to an update, a center gradient or a feature gradient (SPEC
"Inputs"; issue 10, defects 1 and 10). The same checks on the CUDA kernels are in
test_cuda_kernels.py."""

from __future__ import annotations

import pytest
import torch

import centerloss_ext as cl
from conftest import HALF_DTYPES

ops = torch.ops.centerloss


def _far_batch(B, dtype=torch.float16):
    """x = 0, one class whose center is 7e4: |x - c| = 7e4 > 65504, the float16 maximum."""
    x = torch.zeros(B, 3, dtype=dtype)
    y = torch.zeros(B, dtype=torch.long)
    c = torch.full((1, 3), 7e4, dtype=torch.float32)
    return x, y, c


# --- the example: x = 0 in float16, center 7e4 in float32, alpha 0.5 ------------


@pytest.mark.parametrize("deterministic", [False, True])
def test_update_centers_far_from_float16_range(deterministic):
    x, y, c = _far_batch(1)
    cl.update_centers_(c, x, y, 0.5, deterministic=deterministic)
    # 7e4 + 0.5 * (0 - 7e4) / 2
    assert c.tolist() == [[52500.0] * 3]


@pytest.mark.parametrize("deterministic", [False, True])
def test_fused_step_far_from_float16_range(deterministic):
    x, y, c = _far_batch(1)
    loss, diff = ops.forward_update_(c, x, y, 1, 0.5, True, deterministic)
    assert c.tolist() == [[52500.0] * 3]
    assert diff.dtype == torch.float32 and diff.tolist() == [[-7e4] * 3]
    assert loss.item() == pytest.approx(0.5 * 3 * 7e4**2)


def test_functional_step_far_from_float16_range():
    x, y, c = _far_batch(1)
    cl.center_loss_and_update_(x, y, c, 0.5)
    assert c.tolist() == [[52500.0] * 3]


@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
def test_module_far_from_float16_range(mode):
    x, y, c = _far_batch(2)
    x.requires_grad_()
    m = cl.CenterLoss(1, 3, alpha=0.5, center_update=mode)
    with torch.no_grad():
        m.centers.copy_(c)
    m(x, y).backward()
    # mean over B = 2: d loss / d x = (x - c) / 2 = -35000, representable in float16
    assert x.grad.dtype == torch.float16
    assert torch.equal(x.grad, torch.full_like(x, -35000.0))  # -35008 after float16 rounding
    if mode == "alpha":
        # 7e4 + 0.5 * (-14e4) / 3
        torch.testing.assert_close(m.centers, torch.full((1, 3), 7e4 - 7e4 / 3))
    else:
        # d loss / d c = -sum (x - c) / 2 = 7e4, finite in the float32 centers
        assert m.centers.grad.tolist() == [[7e4] * 3]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_feature_gradient_far_from_float16_range(reduction):
    x, y, c = _far_batch(2)
    x.requires_grad_()
    c.requires_grad_()
    loss = cl.center_loss(x, y, c, reduction)
    # a per-row scale of 1/2 for every reduction: d loss / d x = -7e4 / 2
    loss.backward(torch.full(loss.shape, 1.0 if reduction == "mean" else 0.5))
    assert x.grad.dtype == torch.float16
    assert torch.equal(x.grad, torch.full_like(x, -35000.0))  # -35008 after float16 rounding
    assert c.grad.dtype == torch.float32 and torch.isfinite(c.grad).all()


# --- below 65504: no term rounded to 16 bits before the sum ---------------------------------


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_update_sums_unrounded_differences(dtype, deterministic):
    # x = 2048 (exact in both 16-bit types), c = 0.3: x - c = 2047.7 in float32, but 2048
    # once rounded to float16 or bfloat16
    x = torch.full((3, 1), 2048.0, dtype=dtype)
    y = torch.zeros(3, dtype=torch.long)
    c = torch.full((1, 1), 0.3)
    expected = c.double() + 1.0 * 3 * (2048.0 - c.double()) / 4
    cl.update_centers_(c, x, y, 1.0, deterministic=deterministic)
    assert abs(c.item() - expected.item()) < 1e-3


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_center_gradient_sums_unrounded_differences(dtype):
    x = torch.full((3, 1), 2048.0, dtype=dtype)
    y = torch.zeros(3, dtype=torch.long)
    c = torch.full((1, 1), 0.3, requires_grad=True)
    cl.center_loss(x, y, c, "sum").backward()
    expected = -3 * (2048.0 - torch.tensor(0.3).double())
    assert abs(c.grad.item() - expected.item()) < 1e-3


# --- the saved rows' dtype and the backward ops' out_dtype --------------------------------


@pytest.mark.parametrize(
    "dtype, centers_dtype, acc",
    [
        (torch.float16, torch.float32, torch.float32),
        (torch.bfloat16, torch.float16, torch.float32),
        (torch.float32, torch.float32, torch.float32),
        (torch.float32, torch.float64, torch.float64),
        (torch.float16, torch.float64, torch.float64),
        (torch.float64, torch.float32, torch.float64),
    ],
)
def test_diff_rows_in_accumulation_dtype(dtype, centers_dtype, acc):
    x = torch.randn(5, 4).to(dtype)
    y = torch.tensor([0, 1, 0, 2, 1])
    c = torch.randn(3, 4).to(centers_dtype)
    _, diff = ops.forward(x, y, c, 1, True)
    assert diff.dtype == acc
    torch.testing.assert_close(diff, x.to(acc) - c.to(acc)[y], rtol=0, atol=0)
    _, diff2 = ops.forward_update_(c.clone(), x, y, 1, 0.5, True)
    assert diff2.dtype == acc
    torch.testing.assert_close(diff2, diff, rtol=0, atol=0)
    # the fake kernel agrees (torch.compile relies on it)
    _, fake = ops.forward(x.to("meta"), y.to("meta"), c.to("meta"), 1, True)
    assert fake.dtype == acc


@pytest.mark.parametrize("out_dtype", [None, torch.float16, torch.bfloat16, torch.float64])
def test_backward_features_out_dtype(out_dtype):
    diff = torch.randn(6, 5)
    g = torch.tensor(3.0)
    out = ops.backward_features(g, diff, 2, out_dtype)
    assert out.dtype == (diff.dtype if out_dtype is None else out_dtype)
    torch.testing.assert_close(out, (diff * 3.0).to(out.dtype))
    fake = ops.backward_features(g.to("meta"), diff.to("meta"), 2, out_dtype)
    assert fake.dtype == out.dtype


def test_backward_features_opcheck():
    diff = torch.randn(6, 5)
    for out_dtype in (None, torch.float16):
        torch.library.opcheck(ops.backward_features.default, (torch.rand(6), diff, 0, out_dtype))


# --- a class's update is summed before it touches the center (SPEC "Inputs", 2026-12-07) ---


@pytest.mark.parametrize("deterministic", [False, True])
def test_update_rounds_each_center_once_cpu(deterministic):
    # 1,000 rows of 1000.1 and a center of 1000.0: each row's share (5e-5) is below the
    # center's ulp (6.1e-5); added one by one they would drift to 1000.061035
    x = torch.full((1000, 4), 1000.1)
    y = torch.zeros(1000, dtype=torch.long)
    c = torch.full((1, 4), 1000.0)
    cl.update_centers_(c, x, y, 0.5, deterministic=deterministic)
    exact = 1000.0 + 0.5 * 1000 * (float(torch.tensor(1000.1)) - 1000.0) / 1001
    assert c.tolist() == [[float(torch.tensor(exact))] * 4]  # the exact value rounded once
