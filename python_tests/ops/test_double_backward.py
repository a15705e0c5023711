"""SPEC "Higher-order gradients": double backward (create_graph=True) gives the true
second-order gradients w.r.t. features, centers and the incoming gradient, in both
center-update modes; gradgradcheck in float64; a gradient penalty matches the reference."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import centerloss_ext as cl
from centerloss_ext import CenterLoss, reference
from helpers import assert_close, make_batch

REDUCTIONS = ["mean", "sum", "none"]


def _batch64(device, seed=0, B=12, D=5, C=4):
    x, y, c = make_batch(
        B, D, C, dtype=torch.float64, centers_dtype=torch.float64, device=device, seed=seed
    )
    y[:4] = 1  # collisions: a center's gradient sums several rows
    return x.requires_grad_(), y, c


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_gradgradcheck_features_and_centers(device, reduction, seed):
    x, y, c = _batch64(device, seed)
    c.requires_grad_()
    # the incoming gradient is an input of the check too (gradgradcheck varies it)
    assert gradgradcheck(lambda x, c: cl.center_loss(x, y, c, reduction), (x, c))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradgradcheck_features_in_the_training_step(device, reduction):
    x, y, c = _batch64(device)

    def step(x):
        # fresh centers each call: gradgradcheck evaluates the function many times
        return cl.center_loss_and_update_(x, y, c.clone(), 0.5, reduction)

    assert gradgradcheck(step, (x,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_third_order_through_the_feature_gradient(device, reduction):
    # the double backward is itself differentiable: gradgradcheck of the gradient
    x, y, c = _batch64(device, B=7)
    c.requires_grad_()
    w = torch.rand(
        (7,) if reduction == "none" else (), dtype=torch.float64, device=device, requires_grad=True
    )

    def gradient(x, c, w):
        gx, gc = torch.autograd.grad(
            cl.center_loss(x, y, c, reduction), (x, c), w, create_graph=True
        )
        return gx, gc

    assert gradgradcheck(gradient, (x, c, w))


def test_first_order_gradient_under_create_graph_has_a_grad_fn(device):
    x, y, c = _batch64(device)
    c.requires_grad_()
    gx, gc = torch.autograd.grad(cl.center_loss(x, y, c), (x, c), create_graph=True)
    assert gx.grad_fn is not None and gc.grad_fn is not None
    # the Hessian of the mean loss: ∂²L/∂x_i² = I / B, ∂²L/∂x_i∂c_{y_i} = -I / B
    hx, hc = torch.autograd.grad(gx[0, 0], (x, c))
    expected = torch.zeros_like(x)
    expected[0, 0] = 1 / x.shape[0]
    torch.testing.assert_close(hx, expected)
    assert hc[y[0], 0] == -1 / x.shape[0] and hc.count_nonzero() == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_second_order_with_other_dtypes_matches_float64(device, dtype, reduction):
    x, y, c = make_batch(20, 6, 5, dtype=dtype, device=device, seed=3)
    c.requires_grad_()
    x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    c64 = c.detach().double().requires_grad_()
    results = []
    for xx, cc, impl in ((x, c, cl), (x64, c64, reference)):
        loss = impl.center_loss(xx, y, cc, reduction)
        gx, gc = torch.autograd.grad(loss.sum(), (xx, cc), create_graph=True)
        assert gx.dtype == xx.dtype and gc.dtype == cc.dtype
        penalty = gx.float().square().sum() + gc.float().square().sum()
        results.append(torch.autograd.grad(penalty, (xx, cc)))
    for got, want in zip(*results):
        assert_close(got, want, dtype)


def test_16bit_double_backward_reads_the_unrounded_differences():
    # centers 1024 apart from features 1 apart: rounded to bfloat16, x - c loses the
    # unit difference; in float32 it does not
    x = torch.tensor([[1025.0], [1027.0]], dtype=torch.bfloat16, requires_grad=True)
    y = torch.tensor([0, 0])
    c = torch.tensor([[1024.0]], requires_grad=True)
    (gx,) = torch.autograd.grad(cl.center_loss(x, y, c, "sum"), x, create_graph=True)
    (gc,) = torch.autograd.grad(gx.float().sum(), c)  # ∂/∂c of Σ(x - c) = -B
    assert gc.item() == -2.0


# --- a gradient penalty, through a model, in both modes -------------------------------------


def _penalised_steps(crit_cls, mode, device, steps=3):
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4).to(device)
    crit = crit_cls(5, 4, center_update=mode, device=device)
    with torch.no_grad():
        crit.centers.normal_()
    out = []
    for step in range(steps):
        inp, y, _ = make_batch(16, 6, 5, device=device, seed=20 + step)
        inp.requires_grad_()
        net.zero_grad()
        crit.zero_grad()
        loss = crit(net(inp), y)
        (grad_inp,) = torch.autograd.grad(loss, inp, create_graph=True)
        penalty = grad_inp.square().sum(1).mean()
        (loss + 10 * penalty).backward()
        grads = [net.weight.grad, net.bias.grad]
        if mode == "optimizer":
            grads.append(crit.centers.grad)
        out.append(
            (
                loss.detach(),
                penalty.detach(),
                *[g.clone() for g in grads],
                crit.centers.detach().clone(),
            )
        )
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
    return out


@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
def test_gradient_penalty_matches_the_reference(device, mode):
    got = _penalised_steps(CenterLoss, mode, device)
    want = _penalised_steps(reference.CenterLoss, mode, device)
    for g_step, w_step in zip(got, want):
        for g, w in zip(g_step, w_step):
            torch.testing.assert_close(g, w)
    # the penalty moved the weights: its second-order gradient is not zero
    assert got[0][1] > 0 and not torch.equal(got[-1][2], got[0][2])


def test_gradient_penalty_on_the_features_of_the_training_step(device):
    # alpha mode: the penalty sees the centers from before the update
    x, y, c = make_batch(
        10, 3, 4, dtype=torch.float64, centers_dtype=torch.float64, device=device, seed=5
    )
    got, want = [], []
    for impl, out in ((cl, got), (reference, want)):
        xx = x.clone().requires_grad_()
        cc = c.clone()
        loss = impl.center_loss_and_update_(xx, y, cc, 0.5)
        (gx,) = torch.autograd.grad(loss, xx, create_graph=True)
        (h,) = torch.autograd.grad(gx.square().sum(), xx)
        out += [loss.detach(), gx.detach(), h, cc]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    torch.testing.assert_close(got[2], 2 * got[1] / x.shape[0])  # ∂/∂x Σ(gx²) = 2 gx / B


@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
def test_double_backward_under_torch_compile_raises_or_is_right(device, mode):
    # AOTAutograd compiles the first backward only; its double backward raises (torch's
    # "does not currently support double backward") rather than leave the penalty out
    torch._dynamo.reset()
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = torch.nn.Linear(6, 4).to(device)
        crit = CenterLoss(5, 4, center_update=mode, device=device)

        def step(inp, y, crit=crit, net=net):
            return crit(net(inp), y)

        if compiled:
            step = torch.compile(step, fullgraph=True, backend="aot_eager")
        inp, y, _ = make_batch(16, 6, 5, device=device, seed=1)
        inp.requires_grad_()
        (grad_inp,) = torch.autograd.grad(step(inp, y), inp, create_graph=True)
        try:
            grad_inp.square().sum().backward()
        except RuntimeError as e:
            assert compiled and "double backward" in str(e)
            return
        results.append(net.weight.grad)
    torch.testing.assert_close(results[1], results[0])


def test_plain_backward_still_works_and_gradcheck_passes(device):
    x, y, c = _batch64(device)
    c.requires_grad_()
    assert gradcheck(lambda x, c: cl.center_loss(x, y, c, "none"), (x, c))
