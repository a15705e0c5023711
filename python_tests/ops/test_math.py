"""SPEC "The math": loss, gradients and the alpha update, for every implementation,
against centerloss_ext.reference and against a float64 computation."""

from __future__ import annotations

import pytest
import torch

import centerloss_ext as cl
from centerloss_ext import reference
from conftest import FLOAT_DTYPES
from helpers import assert_close, coarser, make_batch, oracle_loss, oracle_update

REDUCTIONS = ["mean", "sum", "none"]
IMPLS = {"compiled": cl, "reference": reference}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_loss_matches_float64(device, impl, reduction, dtype):
    x, y, c = make_batch(257, 19, 11, dtype=dtype, device=device)
    loss = IMPLS[impl].center_loss(x, y, c, reduction)
    expected = oracle_loss(x, y, c, reduction)
    assert loss.shape == expected.shape
    assert loss.dtype == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    # centers are float32: the diff is exact in float32 for 16-bit features
    tol_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert_close(loss, expected, tol_dtype, scale=100)


def test_loss_values_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    c = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    # l = ½‖x − c_y‖²: ½·4, ½·1, ½·18
    torch.testing.assert_close(cl.center_loss(x, y, c, "none"), torch.tensor([2.0, 0.5, 9.0]))
    torch.testing.assert_close(cl.center_loss(x, y, c, "sum"), torch.tensor(11.5))
    torch.testing.assert_close(cl.center_loss(x, y, c, "mean"), torch.tensor(11.5 / 3))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gradients_match_reference(device, reduction, dtype):
    x, y, c = make_batch(300, 24, 9, dtype=dtype, device=device, seed=1)
    grads = []
    for impl in (cl, reference):
        xg = x.clone().requires_grad_()
        cg = c.clone().requires_grad_()
        loss = impl.center_loss(xg, y, cg, reduction)
        g = torch.linspace(-1, 2, loss.numel(), device=device, dtype=loss.dtype).reshape(loss.shape)
        loss.backward(g)
        grads.append((xg.grad, cg.grad))
    (gx, gc), (rx, rc) = grads
    assert gx.dtype == dtype and gc.dtype == c.dtype
    assert_close(gx, rx, dtype)
    # d/dc sums B rows of the saved diff, rounded to the features' dtype
    assert_close(gc, rc, coarser(dtype, c.dtype), scale=10)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_formula(device, reduction):
    x, y, c = make_batch(
        64, 5, 4, dtype=torch.float64, centers_dtype=torch.float64, device=device, seed=2
    )
    xg, cg = x.clone().requires_grad_(), c.clone().requires_grad_()
    loss = cl.center_loss(xg, y, cg, reduction)
    g = torch.rand(loss.shape, dtype=loss.dtype, device=device) + 0.5
    loss.backward(g)
    scale = g[:, None] if reduction == "none" else (g / 64 if reduction == "mean" else g)
    diff = x - c[y]
    torch.testing.assert_close(xg.grad, diff * scale)
    expected_gc = -torch.zeros_like(c).index_add_(0, y, diff * scale)
    torch.testing.assert_close(cg.grad, expected_gc)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("centers_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_alpha_update_matches_float64(device, impl, dtype, centers_dtype):
    x, y, c = make_batch(
        400, 16, 13, dtype=dtype, centers_dtype=centers_dtype, device=device, seed=3
    )
    y[:200] = 5  # a heavy class: its sum spans several chunks on the CPU
    expected = oracle_update(c, x, y, 0.37)
    out = c.clone()
    IMPLS[impl].update_centers_(out, x, y, 0.37)
    assert out.dtype == centers_dtype
    # exact inputs, accumulated in float32 (float64 if either is float64), rounded to
    # the centers' dtype
    acc = torch.float64 if torch.float64 in (dtype, centers_dtype) else torch.float32
    tol_dtype = coarser(acc, centers_dtype)
    assert_close(out, expected, tol_dtype)


def test_alpha_update_by_hand():
    # class 0: n=2, Δ = ((c−x0) + (c−x1)) / 3; class 1 absent; class 2: n=1
    c = torch.tensor([[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]])
    x = torch.tensor([[3.0, 0.0], [0.0, 6.0], [3.0, 5.0]])
    y = torch.tensor([0, 0, 2])
    cl.update_centers_(c, x, y, alpha=0.5)
    expected = torch.tensor(
        [[0.0 + 0.5 * 3 / 3, 0.0 + 0.5 * 6 / 3], [5.0, 5.0], [1.0 + 0.5 * 2 / 2, 1.0 + 0.5 * 4 / 2]]
    )
    torch.testing.assert_close(c, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_training_step_uses_pre_update_centers(device, impl):
    x, y, c = make_batch(128, 8, 6, device=device, seed=4)
    before = c.clone()
    x_req = x.clone().requires_grad_()
    loss = IMPLS[impl].center_loss_and_update_(x_req, y, c, 0.5, "sum")
    loss.backward()
    torch.testing.assert_close(loss, reference.center_loss(x, y, before, "sum"))
    torch.testing.assert_close(x_req.grad, x - before[y])
    torch.testing.assert_close(c, reference.update_centers_(before.clone(), x, y, 0.5))


def test_absent_classes_are_untouched(device):
    x, y, c = make_batch(50, 4, 10, device=device, seed=5)
    y = y % 3
    out = c.clone()
    cl.update_centers_(out, x, y, 0.5)
    assert torch.equal(out[3:], c[3:])
    assert not torch.equal(out[:3], c[:3])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(device, impl, reduction):
    x, y, c = make_batch(0, 7, 3, device=device)
    x.requires_grad_()
    before = c.clone()
    loss = IMPLS[impl].center_loss_and_update_(x, y, c, 0.5, reduction)
    if reduction == "none":
        assert loss.shape == (0,)
    else:
        assert loss.shape == () and loss.item() == 0.0
    loss.sum().backward()
    assert x.grad.shape == (0, 7)
    assert torch.equal(c, before)


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
def test_int32_labels_same_as_int64(device, label_dtype):
    x, y, c = make_batch(90, 6, 5, device=device, label_dtype=label_dtype)
    c1 = c.clone()
    loss = cl.center_loss_and_update_(x, y, c1, 0.5)
    c2 = c.clone()
    expected = reference.center_loss_and_update_(x, y, c2, 0.5)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(c1, c2)


def test_any_strides(device):
    x, y, c = make_batch(64, 10, 7, device=device, seed=6)
    x_t = x.t().contiguous().t()  # column-major
    x_s = torch.randn(64, 20, device=device)[:, ::2]  # strided columns
    x_s.copy_(x)
    y_s = torch.stack([y, y], 1)[:, 0]  # strided labels
    c_t = c.t().contiguous().t()  # column-major centers, updated in place
    expected_loss = reference.center_loss(x, y, c)
    expected_c = reference.update_centers_(c.clone(), x, y, 0.5)
    for xx in (x_t, x_s):
        torch.testing.assert_close(cl.center_loss(xx, y_s, c_t), expected_loss)
    loss = cl.center_loss_and_update_(x_s.requires_grad_(), y_s, c_t, 0.5)
    loss.backward()
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(c_t, expected_c)
    torch.testing.assert_close(x_s.grad, (x - c[y]) / 64)


def test_large_batch_heavy_collisions(device):
    # every sample in one class, and all distinct classes, at a size with many chunks
    for labels in (torch.zeros(5000, dtype=torch.long), torch.randperm(5000)):
        x = torch.randn(5000, 32)
        c = torch.randn(5000, 32)
        x, labels, c = x.to(device), labels.to(device), c.to(device)
        out = c.clone()
        loss = cl.center_loss_and_update_(x, labels, out, 0.5)
        assert_close(loss, oracle_loss(x, labels, c), torch.float32)
        assert_close(out, oracle_update(c, x, labels, 0.5), torch.float32)
