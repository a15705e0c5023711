"""The CUDA kernels against the CPU kernels (themselves checked against the reference
and float64 in the other files): dtypes, strides, sizes up to B = 100k and C = 1M,
label patterns, both update paths, determinism, bad labels, CUDA graphs, launch count
and memory. They run on a GPU (`pytest -m cuda`) or, without one, on the SIMT emulator
(`make test-cuda-emu`: the same .cu sources on the CPU; CUDA_DEVICE is then "simt").
Tests marked `gpu` need real hardware (graph capture, the profiler)."""

from __future__ import annotations

import pytest
import torch

import centerloss_ext as cl
from conftest import CUDA_DEVICE, EMULATED, FLOAT_DTYPES, sync
from helpers import TOL, coarser

pytestmark = pytest.mark.cuda
DEV = CUDA_DEVICE
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
        torch.testing.assert_close(
            cuda_out[key].cpu().double(), expected.double(), rtol=rtol, atol=atol * scale, msg=key
        )


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
        cuda = _step(x.to(DEV), y.to(DEV), c.to(DEV), reduction, 0.5, deterministic, mode)
        # heavy collisions sum 700 rows: scale the absolute tolerance with them
        scale = 30.0 if pattern == "one class" and reduction != "mean" else 1.0
        _compare(cuda, cpu, coarser(dtype, centers_dtype, torch.float32), scale)


@pytest.mark.parametrize(
    "B, D, C",
    [
        (1, 1, 1),
        (10, 0, 3),
        (63, 3, 7),
        (64, 4, 64),
        (65, 5, 2),
        (1000, 2, 10),
        (100_000, 64, 1000),
        (4096, 8, 1_000_000),
        (100_000, 16, 1),
    ],
)
@pytest.mark.parametrize("deterministic", [False, True])
def test_sizes(B, D, C, deterministic):
    g = torch.Generator().manual_seed(B)
    x = torch.randn(B, D, generator=g)
    c = torch.randn(C, D, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    cpu = _step(x, y, c, "mean", 0.5, deterministic, "alpha")
    cuda = _step(x.to(DEV), y.to(DEV), c.to(DEV), "mean", 0.5, deterministic, "alpha")
    _compare(cuda, cpu, torch.float32, scale=10.0)


def test_empty_batch_on_cuda():
    x = torch.empty(0, 8, device=DEV, requires_grad=True)
    y = torch.empty(0, dtype=torch.long, device=DEV)
    c = torch.randn(5, 8, device=DEV)
    before = c.clone()
    loss = cl.center_loss_and_update_(x, y, c, 0.5)
    assert loss.item() == 0.0 and torch.equal(c, before)
    loss.backward()
    assert x.grad.shape == (0, 8)


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values on the device at storage offset 1: a contiguous view whose rows are
    not aligned for vector loads (the scalar path)."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=DEV)
    x = flat[1:].view(t.shape)
    x.copy_(t.to(DEV))
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    return x


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_strides_alignment_and_int32_labels(dtype):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(300, 64, generator=g).to(dtype)
    xt = torch.randn(64, 300, generator=g).to(dtype).t()  # column-major
    c = torch.randn(40, 64, generator=g)
    y = torch.randint(0, 40, (300,), generator=g)
    tol = coarser(dtype, torch.float32)
    cases = [(base, _misaligned(base)), (xt, xt.to(DEV)), (base, base.to(DEV)[:, :].t().t())]
    for x_cpu, x_dev in cases:
        for yy in (y, y.int()):
            for deterministic in (False, True):
                cpu = _step(x_cpu, yy, c, "sum", 0.3, deterministic, "alpha")
                cuda = _step(x_dev, yy.to(DEV), c.to(DEV), "sum", 0.3, deterministic, "alpha")
                _compare(cuda, cpu, tol, scale=10.0)
    # misaligned centers, and non-contiguous centers updated in place through a copy
    for cc in (_misaligned(c), torch.randn(64, 40, generator=g).t().to(DEV)):
        expected = cc.cpu().clone()
        cl.update_centers_(expected, base, y, 0.5)
        cl.update_centers_(cc, base.to(DEV), y.to(DEV), 0.5)
        torch.testing.assert_close(cc.cpu(), expected, **dict(zip(("rtol", "atol"), TOL[tol])))


@pytest.mark.parametrize("centers_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern", ["random", "one class"])
def test_deterministic_mode_is_bit_identical(centers_dtype, pattern):
    g = torch.Generator().manual_seed(2)
    # emulated: fewer rows (each row is 32 fibers there); "one class" still spans 190 chunks
    B, D, C = (12_000 if EMULATED else 50_000), 128, 300
    x = torch.randn(B, D, generator=g).to(DEV)
    c = torch.randn(C, D, generator=g).to(centers_dtype).to(DEV)
    y = _labels(pattern, B, C, g).to(DEV)
    for mode in ("alpha", "optimizer"):
        first = _step(x, y, c, "sum", 0.5, True, mode)
        for _ in range(3):
            again = _step(x, y, c, "sum", 0.5, True, mode)
            for key in first:
                assert torch.equal(first[key], again[key]), (mode, key)


def test_atomic_and_sorted_paths_agree():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20_000, 64, generator=g).to(DEV)
    c = torch.randn(500, 64, generator=g).to(DEV)
    y = torch.randint(0, 500, (20_000,), generator=g).to(DEV)
    fast, det = c.clone(), c.clone()
    cl.update_centers_(fast, x, y, 0.5, deterministic=False)
    cl.update_centers_(det, x, y, 0.5, deterministic=True)
    torch.testing.assert_close(fast, det, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("deterministic", [False, True])
def test_bad_label_raises_keeps_centers_and_context(deterministic, label_dtype):
    x = torch.randn(2000, 16, device=DEV)
    c = torch.randn(10, 16, device=DEV)
    y = torch.randint(0, 10, (2000,), device=DEV, dtype=label_dtype)
    y[1234] = -7
    y[1500] = 99
    before = c.clone()
    with pytest.raises(IndexError, match=r"\[0, 10\); got labels\[1234\] = -7"):
        cl.update_centers_(c, x, y, 0.5, deterministic=deterministic)
    with pytest.raises(IndexError, match=r"labels\[1234\] = -7"):
        cl.center_loss(x, y, c)
    sync()
    assert torch.equal(c, before)
    y[1234] = y[1500] = 1
    cl.update_centers_(c, x, y, 0.5, deterministic=deterministic)
    assert not torch.equal(c, before)


def test_label_check_off_is_silent_but_safe():
    x = torch.randn(100, 8, device=DEV, requires_grad=True)
    c = torch.randn(4, 8, device=DEV)
    y = torch.randint(0, 4, (100,), device=DEV)
    y[7] = 4
    before = c.clone()
    previous = cl.set_cuda_label_check(False)
    try:
        loss = cl.center_loss_and_update_(x, y, c, 0.5)
        per_row = cl.center_loss(x.detach(), y, c, "none")
        loss.backward()
        sync()
    finally:
        cl.set_cuda_label_check(previous)
    assert torch.isnan(loss) and torch.isnan(per_row[7]) and torch.isfinite(per_row[8])
    assert torch.equal(c, before)
    assert torch.equal(x.grad[7], torch.zeros(8, device=DEV))


@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager():
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(256, 32, generator=g).to(DEV) for _ in range(3)]
    ys = [torch.randint(0, 20, (256,), generator=g).to(DEV) for _ in range(3)]
    eager = cl.CenterLoss(20, 32, device=DEV)
    graphed = cl.CenterLoss(20, 32, device=DEV)
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


def _count_launches(step) -> int:
    """Kernels launched by step(): the emulator's count (every kernel, and every ATen op
    the device runs), or the CUDA profiler's (memsets and copies left out)."""
    if EMULATED:
        from simt_emulator import loader as emulation

        before = emulation.launch_count()
        step()
        return emulation.launch_count() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        sync()
    return len(
        [
            e
            for e in prof.events()
            if e.device_type.name == "CUDA" and not e.name.lower().startswith(("memset", "memcpy"))
        ]
    )


@pytest.mark.parametrize("deterministic, most", [(False, 4), (True, 8)])
def test_training_step_launch_count(deterministic, most):
    """Default path: forward rows, atomic update, the ones of backward's seed gradient,
    grad rows. Deterministic path: forward rows, the label sort, two window kernels
    instead of the atomic update, seed gradient, grad rows; no fill of the workspaces."""
    crit = cl.CenterLoss(10_000, 512, device=DEV)
    x = torch.randn(512, 512, device=DEV)
    y = torch.randint(0, 10_000, (512,), device=DEV)
    torch.use_deterministic_algorithms(deterministic)
    try:
        for _ in range(2):  # warm-up
            crit(x.clone().requires_grad_(), y).backward()
        sync()
        xr = x.clone().requires_grad_()
        launched = _count_launches(lambda: crit(xr, y).backward())
    finally:
        torch.use_deterministic_algorithms(False)
    assert launched <= most, launched


def test_label_check_is_one_read_back_and_the_switch_removes_it():
    if not EMULATED:
        pytest.skip("counts read-backs through the emulator")
    from simt_emulator import loader as emulation

    crit = cl.CenterLoss(10, 8, device=DEV)
    x = torch.randn(64, 8, device=DEV, requires_grad=True)
    y = torch.randint(0, 10, (64,), device=DEV)
    before = emulation.host_reads()
    crit(x, y).backward()
    assert emulation.host_reads() - before == 1
    previous = cl.set_cuda_label_check(False)
    try:
        before = emulation.host_reads()
        crit(x, y).backward()
        assert emulation.host_reads() - before == 0
    finally:
        cl.set_cuda_label_check(previous)


def test_no_allocation_proportional_to_classes_times_dim():
    if EMULATED:
        from simt_emulator import loader as mem
    else:
        mem = torch.cuda
    C, D = (1_000_000, 64) if EMULATED else (1_000_000, 512)  # centers: 256 MB / 2 GB
    crit = cl.CenterLoss(C, D, device=DEV)
    x = torch.randn(1024, D, device=DEV, requires_grad=True)
    y = torch.randint(0, C, (1024,), device=DEV)
    crit(x, y).backward()
    sync()
    mem.reset_peak_memory_stats()
    base = mem.memory_allocated()
    x.grad = None
    crit(x, y).backward()
    sync()
    extra = mem.max_memory_allocated() - base
    # diff + grad (2 x B x D x 4 bytes = 4 MB), counts (4 MB), small workspaces
    assert extra < 16 * 2**20, extra
