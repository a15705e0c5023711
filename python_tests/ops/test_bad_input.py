"""SPEC "Bad input": each case raises an exception whose message names the argument,
and the centers stay exactly as they were."""

from __future__ import annotations

import pytest
import torch

import centerloss_ext as cl
from centerloss_ext import reference
from conftest import CUDA_DEVICE, sync
from helpers import make_batch

IMPLS = {"compiled": cl, "reference": reference}
CALLS = {
    "center_loss": lambda impl, x, y, c: impl.center_loss(x, y, c),
    "center_loss_and_update_": lambda impl, x, y, c: impl.center_loss_and_update_(x, y, c, 0.5),
    "update_centers_": lambda impl, x, y, c: impl.update_centers_(c, x, y, 0.5),
}


def _good(device):
    return make_batch(40, 6, 5, device=device, seed=11)


def _cases(device):
    x, y, c = _good(device)
    bad_hi = y.clone()
    bad_hi[17] = 5
    bad_lo = y.clone()
    bad_lo[3] = -1
    yield "label >= C", (x, bad_hi, c), IndexError, r"\[0, 5\); got labels\[17\] = 5"
    yield "label < 0", (x, bad_lo, c), IndexError, r"\[0, 5\); got labels\[3\] = -1"
    yield "float labels", (x, y.float(), c), TypeError, "labels must be an integer tensor"
    yield "bool labels", (x, y.bool(), c), TypeError, "labels must be an integer tensor"
    yield "int16 labels", (x, y.short(), c), TypeError, "labels must be an integer tensor"
    yield "2-D labels", (x, y[:, None], c), ValueError, "labels must be 1-D"
    yield "1-D features", (x[0], y[:1], c), ValueError, "features must be 2-D"
    yield "3-D features", (x[None], y, c), ValueError, "features must be 2-D"
    yield "feature width", (x[:, :5], y, c), ValueError, "features must have feature_dim = 6"
    yield "batch sizes", (x[:39], y, c), ValueError, "same batch size.*39 features and 40 labels"
    yield "int features", (x.long(), y, c), TypeError, "features must be float16, bfloat16"
    yield "complex features", (x.to(torch.complex64), y, c), TypeError, "features must be float"
    yield "int centers", (x, y, c.long()), TypeError, "centers must be float16, bfloat16"
    yield "1-D centers", (x, y, c[0]), ValueError, "centers must be 2-D"


CASE_IDS = [case[0] for case in _cases("cpu")]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_is_refused_and_centers_kept(device, case, impl, call):
    _, (x, y, c), exc, pattern = next(k for k in _cases(device) if k[0] == case)
    before = c.clone()
    with pytest.raises(exc, match=pattern):
        CALLS[call](IMPLS[impl], x, y, c)
    assert torch.equal(c, before)


@pytest.mark.parametrize("impl", IMPLS)
def test_label_check_runs_before_any_write(device, impl):
    # the bad label is the last one: a kernel that wrote as it went would have
    # moved the other classes' centers already
    x, y, c = make_batch(3000, 8, 50, device=device, seed=12)
    y[-1] = 50
    before = c.clone()
    with pytest.raises(IndexError, match=r"\[0, 50\).*labels\[2999\] = 50"):
        IMPLS[impl].center_loss_and_update_(x, y, c, 0.5)
    assert torch.equal(c, before)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_alpha(impl, alpha):
    x, y, c = _good("cpu")
    before = c.clone()
    with pytest.raises(ValueError, match="alpha must be a finite number in"):
        IMPLS[impl].update_centers_(c, x, y, alpha)
    assert torch.equal(c, before)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_reduction(impl):
    x, y, c = _good("cpu")
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        IMPLS[impl].center_loss(x, y, c, "avg")


@pytest.mark.parametrize("impl", IMPLS)
def test_alpha_update_of_centers_that_require_grad_is_refused(impl):
    x, y, c = _good("cpu")
    with pytest.raises(ValueError, match="centers must not require grad"):
        IMPLS[impl].center_loss_and_update_(x, y, c.requires_grad_(), 0.5)


def test_mixed_devices_are_refused_by_the_fake_kernels():
    # Without a GPU, meta tensors stand in for a second device: the meta kernels
    # (the fake kernels torch.compile traces with) must refuse the mix too.
    x, y, c = _good("cpu")
    with pytest.raises(RuntimeError, match="same device.*labels on cpu"):
        torch.ops.centerloss.forward(x.to("meta"), y, c.to("meta"), 1, False)
    with pytest.raises(RuntimeError, match="same device"):
        reference.center_loss(x, y.to("meta"), c)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("moved", ["features", "labels", "centers"])
def test_mixed_devices_are_refused(impl, moved):
    x, y, c = _good(CUDA_DEVICE)
    args = {"features": x, "labels": y, "centers": c}
    args[moved] = args[moved].cpu()
    before = args["centers"].clone()
    with pytest.raises(RuntimeError, match="must be on the same device"):
        IMPLS[impl].center_loss_and_update_(args["features"], args["labels"], args["centers"], 0.5)
    assert torch.equal(args["centers"], before)


@pytest.mark.cuda
def test_cuda_context_survives_bad_labels():
    x, y, c = make_batch(1000, 8, 10, device=CUDA_DEVICE)
    y[500] = 10_000
    before = c.clone()
    with pytest.raises(IndexError, match=r"labels\[500\] = 10000"):
        cl.center_loss_and_update_(x, y, c, 0.5)
    assert torch.equal(c, before)
    sync()  # a device-side assert would surface here
    y[500] = 3
    loss = cl.center_loss_and_update_(x, y, c, 0.5)
    assert torch.isfinite(loss)
