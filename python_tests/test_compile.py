"""torch.compile(fullgraph=True) traces CenterLoss without a graph break and gives the
eager results, including the in-place alpha update of the centers."""
from __future__ import annotations

import pytest
import torch

from centerloss_ext import CenterLoss, reference
from helpers import make_batch


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

    explanation = torch._dynamo.explain(step)(torch.randn(16, 8, device=device),
                                              torch.arange(16, device=device) % 5)
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
