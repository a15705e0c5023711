"""torch.compile(fullgraph=True) traces CenterLoss without a graph break, with static and
with dynamic batch sizes (dynamic=True, mark_dynamic), and gives the
eager results, including the in-place alpha update of the centers."""

from __future__ import annotations

import pytest
import torch

import centerloss_ext as cl
from centerloss_ext import CenterLoss, reference
from helpers import make_batch


def _inductor_can_compile_for(device, backend):
    if backend == "inductor" and device == "simt":
        pytest.skip("inductor has no code generator for the emulated device")


def _run(crit, steps, device, fn=None):
    fn = crit if fn is None else fn
    out = []
    for step in range(steps):
        x, y, _ = make_batch(40, 6, 5, device=device, seed=step)
        x.requires_grad_()
        loss = fn(x, y)
        loss.sum().backward()
        out.append((loss.detach(), x.grad, crit.centers.detach().clone()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
def test_compiled_module_matches_eager(device, backend, mode):
    _inductor_can_compile_for(device, backend)
    torch._dynamo.reset()
    eager = CenterLoss(5, 6, center_update=mode, device=device)
    compiled = CenterLoss(5, 6, center_update=mode, device=device)
    fn = torch.compile(compiled, fullgraph=True, backend=backend)
    for (le, ge, ce), (lc, gc, cc) in zip(_run(eager, 3, device), _run(compiled, 3, device, fn)):
        torch.testing.assert_close(lc, le)
        torch.testing.assert_close(gc, ge)
        torch.testing.assert_close(cc, ce)
    if mode == "optimizer":
        torch.testing.assert_close(compiled.centers.grad, eager.centers.grad)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_compiled_reductions_and_eval(device, reduction):
    torch._dynamo.reset()
    crit = CenterLoss(5, 6, reduction=reduction, device=device)
    fn = torch.compile(crit, fullgraph=True, backend="aot_eager")
    x, y, _ = make_batch(40, 6, 5, device=device)
    fn(x, y)  # moves the centers
    crit.eval()
    before = crit.centers.clone()
    loss = fn(x, y)  # recompiles for eval: no update
    assert torch.equal(crit.centers, before)
    expected = CenterLoss(5, 6, reduction=reduction, device=device).eval()
    expected.centers.copy_(before)
    torch.testing.assert_close(loss, expected(x, y))


def test_compiled_model_with_center_loss_has_no_graph_break(device):
    torch._dynamo.reset()
    model = torch.nn.Linear(8, 6).to(device)
    crit = CenterLoss(5, 6, device=device)

    def step(inp, y):
        return crit(model(inp), y)

    explanation = torch._dynamo.explain(step)(
        torch.randn(16, 8, device=device), torch.arange(16, device=device) % 5
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_reference_training_steps_match_eager():
    # the alpha update must not invalidate what the compiled loss saved for backward
    torch._dynamo.reset()
    eager = reference.CenterLoss(5, 6)
    compiled = reference.CenterLoss(5, 6)
    fn = torch.compile(compiled)  # inductor: its partitioner picks what backward saves
    for (le, ge, ce), (lc, gc, cc) in zip(_run(eager, 3, "cpu"), _run(compiled, 3, "cpu", fn)):
        torch.testing.assert_close(lc, le)
        torch.testing.assert_close(gc, ge)
        torch.testing.assert_close(cc, ce)


# --- dynamic shapes: dynamic=True, and mark_dynamic on the batch dimension ----------------
# One compiled graph serves every batch size (a recompile raises), with no graph break
# (fullgraph) and the eager results.

BATCHES = (12, 17, 23)
DYNAMIC = ["dynamic", "mark_dynamic"]


def _dynamic(fn, how, backend="aot_eager"):
    compiled = torch.compile(
        fn, fullgraph=True, backend=backend, dynamic=True if how == "dynamic" else None
    )

    def call(x, y):
        if how == "mark_dynamic":
            torch._dynamo.mark_dynamic(x, 0)
            torch._dynamo.mark_dynamic(y, 0)
        with torch._dynamo.config.patch(error_on_recompile=True):
            return compiled(x, y)

    return call


def _steps(fn, state, device, width=6, classes=5):
    """Per batch size: the loss, the features' gradient and the tensors of ``state()``
    (centers, their gradient, ...) after the step."""
    out = []
    for step, batch in enumerate(BATCHES):
        x, y, _ = make_batch(batch, width, classes, device=device, seed=10 + step)
        x.requires_grad_()
        loss = fn(x, y)
        if loss.requires_grad:
            loss.sum().backward()
        out.append([loss.detach(), x.grad] + [t.detach().clone() for t in state()])
    return out


def _assert_same(compiled, eager):
    assert len(compiled) == len(eager)
    for got, want in zip(compiled, eager):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


def _state(crit):
    return lambda: [crit.centers] + ([crit.centers.grad] if crit.centers.grad is not None else [])


@pytest.mark.parametrize("how", DYNAMIC)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
def test_dynamic_batch_module_matches_eager(device, how, training, mode):
    torch._dynamo.reset()
    crits = [CenterLoss(5, 6, center_update=mode, device=device).train(training) for _ in range(2)]
    for crit in crits:
        with torch.no_grad():
            crit.centers.copy_(make_batch(0, 6, 5, device=device, seed=3)[2])
    eager = _steps(crits[0], _state(crits[0]), device)
    fn = _dynamic(crits[1], how)
    _assert_same(_steps(fn, _state(crits[1]), device), eager)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
def test_dynamic_batch_module_under_inductor_matches_eager(device, mode):
    _inductor_can_compile_for(device, "inductor")
    torch._dynamo.reset()
    crits = [CenterLoss(5, 6, center_update=mode, device=device) for _ in range(2)]
    eager = _steps(crits[0], _state(crits[0]), device)
    fn = _dynamic(crits[1], "dynamic", backend="inductor")
    _assert_same(_steps(fn, _state(crits[1]), device), eager)


@pytest.mark.parametrize("how", DYNAMIC)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dynamic_batch_functional_loss_matches_eager(device, how, reduction):
    torch._dynamo.reset()
    centers = [make_batch(0, 6, 5, device=device, seed=3)[2].requires_grad_() for _ in range(2)]

    def loss_with(c):
        return lambda x, y: cl.center_loss(x, y, c, reduction)

    eager = _steps(loss_with(centers[0]), lambda: [centers[0].grad], device)
    fn = _dynamic(loss_with(centers[1]), how)
    _assert_same(_steps(fn, lambda: [centers[1].grad], device), eager)


@pytest.mark.parametrize("how", DYNAMIC)
def test_dynamic_batch_functional_updates_match_eager(device, how):
    torch._dynamo.reset()
    centers = [make_batch(0, 6, 5, device=device, seed=3)[2] for _ in range(4)]

    def step_with(c):
        return lambda x, y: cl.center_loss_and_update_(x, y, c, 0.5, "sum")

    def update_with(c):
        def update(x, y):
            cl.update_centers_(c, x, y, 0.25)
            return (x * 0).sum()  # an output, so the step has a backward like the others

        return update

    for make, (c_eager, c_compiled) in ((step_with, centers[:2]), (update_with, centers[2:])):
        eager = _steps(make(c_eager), lambda c=c_eager: [c], device)
        fn = _dynamic(make(c_compiled), how)
        _assert_same(_steps(fn, lambda c=c_compiled: [c], device), eager)


@pytest.mark.parametrize("how", DYNAMIC)
@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
def test_dynamic_batch_model_with_center_loss_matches_eager(device, how, mode):
    torch._dynamo.reset()
    torch.manual_seed(0)
    nets = [torch.nn.Linear(6, 4).to(device) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    crits = [CenterLoss(5, 4, center_update=mode, device=device) for _ in range(2)]
    heads = [torch.nn.Linear(4, 5).to(device) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())

    def step_of(net, head, crit):
        def step(x, y):
            feats = net(x)
            return torch.nn.functional.cross_entropy(head(feats), y) + 0.1 * crit(feats, y)

        return step

    def state_of(net, head, crit):
        return lambda: [net.weight.grad, head.weight.grad] + _state(crit)()

    eager = _steps(
        step_of(nets[0], heads[0], crits[0]), state_of(nets[0], heads[0], crits[0]), device
    )
    fn = _dynamic(step_of(nets[1], heads[1], crits[1]), how)
    _assert_same(_steps(fn, state_of(nets[1], heads[1], crits[1]), device), eager)


def test_dynamic_functional_updates_take_alpha_as_an_argument(device):
    # dynamic=True makes a float argument a symbolic float: the alpha check must trace
    torch._dynamo.reset()
    step = torch.compile(
        cl.center_loss_and_update_, fullgraph=True, dynamic=True, backend="aot_eager"
    )
    update = torch.compile(cl.update_centers_, fullgraph=True, dynamic=True, backend="aot_eager")
    x, y, c = make_batch(12, 6, 5, device=device, seed=4)
    c_eager = c.clone()
    for alpha in (0.5, 0.25):
        torch.testing.assert_close(
            step(x, y, c, alpha), cl.center_loss_and_update_(x, y, c_eager, alpha)
        )
        update(c, x, y, alpha)
        cl.update_centers_(c_eager, x, y, alpha)
        torch.testing.assert_close(c, c_eager)
