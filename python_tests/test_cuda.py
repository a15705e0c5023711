"""The CUDA kernels against the CPU kernels (themselves checked against the reference
and float64 in the other files): dtypes, strides, sizes up to B = 100k and C = 1M,
label patterns, both update paths, determinism, bad labels, CUDA graphs, launch count
and memory. Skipped without a GPU; run on one with `pytest -m cuda`."""
from __future__ import annotations

import pytest
import torch

import centerloss_ext as cl
from helpers import TOL, coarser

from conftest import FLOAT_DTYPES

pytestmark = pytest.mark.cuda
ops = torch.ops.centerloss


def _labels(pattern, B, C, g):
    if pattern == "one class":
        return torch.full((B,), C // 2, dtype=torch.long)
    if pattern == "distinct":
        return torch.randperm(C, generator=g)[:B]
    return torch.randint(0, C, (B,), generator=g)


def _step(x, y, c, reduction, alpha, deterministic, mode):
    """One training step through the public functions; returns what it produced."""
    x = x.clone().requires_grad_()
    c = c.clone()
    torch.use_deterministic_algorithms(deterministic)
    try:
        if mode == "alpha":
            loss = cl.center_loss_and_update_(x, y, c, alpha, reduction)
        else:
            c.requires_grad_()
            loss = cl.center_loss(x, y, c, reduction)
        g = torch.linspace(0.5, 1.5, loss.numel(), device=x.device).to(loss.dtype)
        loss.backward(g.reshape(loss.shape))
    finally:
        torch.use_deterministic_algorithms(False)
    out = {"loss": loss.detach(), "grad_x": x.grad}
    out["centers"] = c.detach() if mode == "alpha" else c.grad
    return out


def _compare(cuda_out, cpu_out, tol_dtype, scale=1.0):
    rtol, atol = TOL[tol_dtype]
    rtol, atol = max(rtol, 1e-4), max(atol, 1e-4)  # float32 sums in another order
    for key, expected in cpu_out.items():
        torch.testing.assert_close(cuda_out[key].cpu().double(), expected.double(),
                                   rtol=rtol, atol=atol * scale, msg=key)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("centers_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_matches_cpu(dtype, centers_dtype, reduction, mode, deterministic):
    g = torch.Generator().manual_seed(0)
    for pattern in ("random", "one class", "distinct"):
        B, D, C = 700, 36, 1000
        x = torch.randn(B, D, generator=g).to(dtype)
        c = torch.randn(C, D, generator=g).to(centers_dtype)
        y = _labels(pattern, B, C, g)
        cpu = _step(x, y, c, reduction, 0.5, deterministic, mode)
        cuda = _step(x.cuda(), y.cuda(), c.cuda(), reduction, 0.5, deterministic, mode)
        # heavy collisions sum 700 rows: scale the absolute tolerance with them
        scale = 30.0 if pattern == "one class" and reduction != "mean" else 1.0
        _compare(cuda, cpu, coarser(dtype, centers_dtype, torch.float32), scale)


@pytest.mark.parametrize("B, D, C", [(1, 1, 1), (10, 0, 3), (63, 3, 7), (64, 4, 64), (65, 5, 2),
                                     (1000, 2, 10), (100_000, 64, 1000),
                                     (4096, 8, 1_000_000), (100_000, 16, 1)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_sizes(B, D, C, deterministic):
    g = torch.Generator().manual_seed(B)
    x = torch.randn(B, D, generator=g)
    c = torch.randn(C, D, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    cpu = _step(x, y, c, "mean", 0.5, deterministic, "alpha")
    cuda = _step(x.cuda(), y.cuda(), c.cuda(), "mean", 0.5, deterministic, "alpha")
    _compare(cuda, cpu, torch.float32, scale=10.0)


def test_empty_batch_on_cuda():
    x = torch.empty(0, 8, device="cuda", requires_grad=True)
    y = torch.empty(0, dtype=torch.long, device="cuda")
    c = torch.randn(5, 8, device="cuda")
    before = c.clone()
    loss = cl.center_loss_and_update_(x, y, c, 0.5)
    assert loss.item() == 0.0 and torch.equal(c, before)
    loss.backward()
    assert x.grad.shape == (0, 8)


def test_strides_alignment_and_int32_labels():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(300, 66, generator=g)
    x = base[:, 1:65]                    # misaligned rows: the scalar path
    xt = torch.randn(64, 300, generator=g).t()  # column-major
    c = torch.randn(40, 64, generator=g)
    y = torch.randint(0, 40, (300,), generator=g)
    for xx in (x, xt):
        for yy in (y, y.int()):
            cpu = _step(xx, yy, c, "sum", 0.3, False, "alpha")
            cuda = _step(xx.cuda(), yy.cuda(), c.cuda(), "sum", 0.3, False, "alpha")
            _compare(cuda, cpu, torch.float32, scale=10.0)
    # non-contiguous centers are updated in place through a copy
    cc = torch.randn(64, 40, generator=g).t().cuda()
    expected = cc.cpu().clone()
    cl.update_centers_(expected, x, y, 0.5)
    cl.update_centers_(cc, x.cuda(), y.cuda(), 0.5)
    torch.testing.assert_close(cc.cpu(), expected)


@pytest.mark.parametrize("centers_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern", ["random", "one class"])
def test_deterministic_mode_is_bit_identical(centers_dtype, pattern):
    g = torch.Generator().manual_seed(2)
    B, D, C = 50_000, 128, 300
    x = torch.randn(B, D, generator=g).cuda()
    c = torch.randn(C, D, generator=g).to(centers_dtype).cuda()
    y = _labels(pattern, B, C, g).cuda()
    for mode in ("alpha", "optimizer"):
        first = _step(x, y, c, "sum", 0.5, True, mode)
        for _ in range(3):
            again = _step(x, y, c, "sum", 0.5, True, mode)
            for key in first:
                assert torch.equal(first[key], again[key]), (mode, key)


def test_atomic_and_sorted_paths_agree():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20_000, 64, generator=g).cuda()
    c = torch.randn(500, 64, generator=g).cuda()
    y = torch.randint(0, 500, (20_000,), generator=g).cuda()
    fast, det = c.clone(), c.clone()
    cl.update_centers_(fast, x, y, 0.5, deterministic=False)
    cl.update_centers_(det, x, y, 0.5, deterministic=True)
    torch.testing.assert_close(fast, det, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True])
def test_bad_label_raises_keeps_centers_and_context(deterministic):
    x = torch.randn(2000, 16, device="cuda")
    c = torch.randn(10, 16, device="cuda")
    y = torch.randint(0, 10, (2000,), device="cuda")
    y[1234] = -7
    y[1500] = 99
    before = c.clone()
    with pytest.raises(IndexError, match=r"\[0, 10\); got labels\[1234\] = -7"):
        cl.update_centers_(c, x, y, 0.5, deterministic=deterministic)
    with pytest.raises(IndexError, match=r"labels\[1234\] = -7"):
        cl.center_loss(x, y, c)
    torch.cuda.synchronize()
    assert torch.equal(c, before)
    y[1234] = y[1500] = 1
    cl.update_centers_(c, x, y, 0.5, deterministic=deterministic)
    assert not torch.equal(c, before)


def test_label_check_off_is_silent_but_safe():
    x = torch.randn(100, 8, device="cuda", requires_grad=True)
    c = torch.randn(4, 8, device="cuda")
    y = torch.randint(0, 4, (100,), device="cuda")
    y[7] = 4
    before = c.clone()
    previous = cl.set_cuda_label_check(False)
    try:
        loss = cl.center_loss_and_update_(x, y, c, 0.5)
        per_row = cl.center_loss(x.detach(), y, c, "none")
        loss.backward()
        torch.cuda.synchronize()
    finally:
        cl.set_cuda_label_check(previous)
    assert torch.isnan(loss) and torch.isnan(per_row[7]) and torch.isfinite(per_row[8])
    assert torch.equal(c, before)
    assert torch.equal(x.grad[7], torch.zeros(8, device="cuda"))


def test_cuda_graph_replay_matches_eager():
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(256, 32, generator=g).cuda() for _ in range(3)]
    ys = [torch.randint(0, 20, (256,), generator=g).cuda() for _ in range(3)]
    eager = cl.CenterLoss(20, 32, device="cuda")
    graphed = cl.CenterLoss(20, 32, device="cuda")
    static_x = xs[0].clone().requires_grad_()
    static_y = ys[0].clone()

    def step():
        static_x.grad = None
        loss = graphed(static_x, static_y)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up (moves the centers once: do the same in eager)
    torch.cuda.current_stream().wait_stream(side)
    warm = xs[0].clone().requires_grad_()
    eager(warm, ys[0]).backward()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    for x, y in zip(xs, ys):
        static_x.data.copy_(x)
        static_y.copy_(y)
        graph.replay()
        xe = x.clone().requires_grad_()
        le = eager(xe, y)
        le.backward()
        torch.testing.assert_close(static_loss, le)
        torch.testing.assert_close(static_x.grad, xe.grad)
        torch.testing.assert_close(graphed.centers, eager.centers)


def test_training_step_launches_at_most_four_kernels():
    from torch.profiler import ProfilerActivity, profile

    crit = cl.CenterLoss(10_000, 512, device="cuda")
    x = torch.randn(512, 512, device="cuda")
    y = torch.randint(0, 10_000, (512,), device="cuda")
    for _ in range(3):  # warm-up
        crit(x.clone().requires_grad_(), y).backward()
    torch.cuda.synchronize()
    xr = x.clone().requires_grad_()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        crit(xr, y).backward()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"
               and not e.name.lower().startswith(("memset", "memcpy"))]
    assert len(kernels) <= 4, [e.name for e in kernels]


def test_no_allocation_proportional_to_classes_times_dim():
    C, D = 1_000_000, 512  # centers: 2 GB
    crit = cl.CenterLoss(C, D, device="cuda")
    x = torch.randn(1024, D, device="cuda", requires_grad=True)
    y = torch.randint(0, C, (1024,), device="cuda")
    crit(x, y).backward()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    x.grad = None
    crit(x, y).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # diff + grad (2 x B x D x 4 bytes = 4 MB), counts (4 MB), small workspaces
    assert extra < 16 * 2**20, extra
