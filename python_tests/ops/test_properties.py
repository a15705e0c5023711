"""Property-based tests (hypothesis): random shapes, dtypes, strides and label
patterns, compiled ops against the reference."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

import centerloss_ext as cl
from centerloss_ext import reference
from conftest import FLOAT_DTYPES
from helpers import TOL, coarser


@st.composite
def batches(draw):
    B = draw(st.integers(0, 300))
    D = draw(st.sampled_from([1, 2, 3, 7, 16, 33, 128]))
    C = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    centers_dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    pattern = draw(st.sampled_from(["random", "one class", "distinct", "two classes"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if pattern == "one class":
        y = torch.full((B,), draw(st.integers(0, C - 1)), dtype=torch.long)
    elif pattern == "distinct":
        C = max(C, B)
        y = torch.randperm(C, generator=g)[:B]
    elif pattern == "two classes":
        y = torch.randint(0, min(C, 2), (B,), generator=g)
    else:
        y = torch.randint(0, C, (B,), generator=g)
    if draw(st.booleans()):
        y = y.int()
    x = torch.randn(B, D, generator=g) * draw(st.sampled_from([1e-3, 1.0, 30.0]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed":
        x = x.t().contiguous().t()
    elif layout == "strided":
        x = torch.stack([x, x], dim=2)[:, :, 1]
    c = torch.randn(C, D, generator=g).to(centers_dtype)
    return x.to(dtype), y, c, draw(st.sampled_from(["mean", "sum", "none"]))


@given(batches())
def test_loss_grad_and_update_match_reference(batch):
    x, y, c, reduction = batch
    tol_dtype = coarser(x.dtype, c.dtype)
    rtol, atol = TOL[tol_dtype]
    scale = 1.0 + float(x.double().abs().max()) ** 2 if x.numel() else 1.0

    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ca, cb = c.clone(), c.clone()
    la = cl.center_loss_and_update_(xa, y, ca, 0.5, reduction)
    lb = reference.center_loss_and_update_(xb, y, cb, 0.5, reduction)
    assert la.dtype == lb.dtype and la.shape == lb.shape
    torch.testing.assert_close(la, lb, rtol=max(rtol, 1e-5), atol=atol * scale)
    la.sum().backward()
    lb.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=rtol, atol=atol * scale**0.5)
    torch.testing.assert_close(ca, cb, rtol=rtol, atol=atol * scale**0.5)
