"""The CUDA kernels' defects of issue 10 (1-7, 10), each against the CPU kernels or the
exact value: 16-bit differences kept in the accumulation type, the atomic path's
accumulation, very wide rows, a class spanning many chunks, the deterministic path's
allocations and launches, and backward_centers' bad labels. Runs on a GPU or under the
SIMT emulator (CUDA_DEVICE); the same 16-bit checks on the CPU are in
test_accumulation.py."""

from __future__ import annotations

import pytest
import torch

import centerloss_ext as cl
from conftest import CUDA_DEVICE, HALF_DTYPES

pytestmark = pytest.mark.cuda
ops = torch.ops.centerloss
DEV = CUDA_DEVICE


def _far_batch(B, dtype=torch.float16):
    """x = 0, one class whose center is 7e4: |x - c| = 7e4 > 65504, the float16 maximum."""
    x = torch.zeros(B, 3, dtype=dtype)
    y = torch.zeros(B, dtype=torch.long)
    c = torch.full((1, 3), 7e4, dtype=torch.float32)
    return x, y, c


def _to(*ts):
    return [t.to(DEV) for t in ts]


def _on_device(t, offset):
    """A copy of t on the device, `offset` elements into its allocation (1: no 4-element
    vector is aligned, so the kernels take their element-wise loops)."""
    flat = torch.zeros(t.numel() + offset, dtype=t.dtype, device=DEV)
    return flat[offset:].view(t.shape).copy_(t)


def _launches(fn):
    """Device launches (kernels, memsets, copies) made by fn()."""
    if DEV == "cuda":
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return len([e for e in prof.events() if e.device_type.name == "CUDA"])
    from simt_emulator import loader as emulation

    before = emulation.launch_count()
    fn()
    return emulation.launch_count() - before


# --- defects 1 and 10: the float16 example on every path ----------------------------


@pytest.mark.parametrize("deterministic", [False, True])  # atomic / sorted update
def test_update_centers_far_from_float16_range(deterministic):
    x, y, c = _to(*_far_batch(1))
    cl.update_centers_(c, x, y, 0.5, deterministic=deterministic)
    assert c.cpu().tolist() == [[52500.0] * 3]


@pytest.mark.parametrize("deterministic", [False, True])
def test_fused_step_far_from_float16_range(deterministic):
    x, y, c = _to(*_far_batch(1))
    loss, diff = ops.forward_update_(c, x, y, 1, 0.5, True, deterministic)
    assert c.cpu().tolist() == [[52500.0] * 3]
    assert diff.dtype == torch.float32 and diff.cpu().tolist() == [[-7e4] * 3]


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
def test_module_far_from_float16_range(mode, deterministic):
    x, y, c = _to(*_far_batch(2))
    x.requires_grad_()
    m = cl.CenterLoss(1, 3, alpha=0.5, center_update=mode, device=DEV)
    with torch.no_grad():
        m.centers.copy_(c)
    torch.use_deterministic_algorithms(deterministic)
    try:
        m(x, y).backward()
    finally:
        torch.use_deterministic_algorithms(False)
    # mean over B = 2: d loss / d x = (0 - 7e4) / 2 = -35000 (-35008 in float16), not -inf
    assert x.grad.dtype == torch.float16
    assert torch.equal(x.grad.cpu(), torch.full((2, 3), -35000.0, dtype=torch.float16))
    if mode == "alpha":
        expected = torch.full((1, 3), 7e4 - 7e4 / 3)
        torch.testing.assert_close(m.centers.detach().cpu(), expected)
    else:
        assert m.centers.grad.cpu().tolist() == [[7e4] * 3]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_update_sums_unrounded_differences(dtype, deterministic):
    # x - c = 2048 - 0.3 = 2047.7 in float32, 2048 once rounded to 16 bits
    x = torch.full((3, 1), 2048.0, dtype=dtype)
    y = torch.zeros(3, dtype=torch.long)
    c = torch.full((1, 1), 0.3)
    expected = c.clone()
    cl.update_centers_(expected, x, y, 1.0)
    xd, yd, cd = _to(x, y, c)
    cl.update_centers_(cd, xd, yd, 1.0, deterministic=deterministic)
    torch.testing.assert_close(cd.cpu(), expected, rtol=1e-6, atol=0)
    assert abs(expected.item() - (0.3 + 3 * 2047.7 / 4)) < 1e-3


@pytest.mark.parametrize(
    "dtype, centers_dtype",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
    ],
)
def test_diff_rows_and_gradient_dtypes(dtype, centers_dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(70, 12, generator=g).to(dtype)
    y = torch.randint(0, 4, (70,), generator=g)
    c = torch.randn(4, 12, generator=g).to(centers_dtype)
    _, diff = ops.forward(x, y, c, 0, True)
    _, diff_d = ops.forward(*_to(x, y, c), 0, True)
    assert diff_d.dtype == diff.dtype
    torch.testing.assert_close(diff_d.cpu(), diff, rtol=0, atol=0)
    grad = torch.rand(70, generator=g).to(diff.dtype if dtype == torch.float64 else torch.float32)
    out = ops.backward_features(grad, diff, 0, dtype)
    out_d = ops.backward_features(grad.to(DEV), diff_d, 0, dtype)
    assert out_d.dtype == dtype
    torch.testing.assert_close(out_d.cpu(), out, rtol=0, atol=0)


# --- defect 2: the atomic path accumulates in the accumulation type -------------------------


def test_float64_features_float32_centers_sum_in_float64():
    # one large and 999 small differences: added one by one to a float32 center (~10),
    # each small term (3e-7) is below half an ulp and lost; summed in float64, kept
    x = torch.full((1000, 2), 3e-4, dtype=torch.float64)
    x[0] = 1e4
    y = torch.zeros(1000, dtype=torch.long)
    c = torch.zeros(1, 2)
    expected = c.clone()
    cl.update_centers_(expected, x, y, 1.0)
    assert abs(expected[0, 0].item() - (1e4 + 999 * 3e-4) / 1001) < 1e-5
    for deterministic in (False, True):
        cd = c.to(DEV)
        cl.update_centers_(cd, *_to(x, y), 1.0, deterministic=deterministic)
        torch.testing.assert_close(cd.cpu(), expected, rtol=2e-7, atol=0)


def test_float64_rows_float32_center_gradient_sums_in_float64():
    x = torch.full((1000, 2), 3e-4, dtype=torch.float64)
    x[0] = 1e4
    y = torch.zeros(1000, dtype=torch.long)
    grads = []
    for device in ("cpu", DEV):
        c = torch.zeros(1, 2, device=device, requires_grad=True)
        cl.center_loss(x.to(device), y.to(device), c, "sum").backward()
        grads.append(c.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=2e-7, atol=0)
    assert abs(grads[0][0, 0].item() + (1e4 + 999 * 3e-4)) < 1e-3


# --- defect 3: rows wider than the sorted path's grid ---------------------------------------


@pytest.mark.parametrize("D", [70_000, 65535 * 128 + 1])
def test_very_wide_rows_on_the_sorted_path(D):
    # B = 130: one class over 3 chunks (a split class) and a second class; D = 70000 makes
    # both sorted kernels loop over column tiles; 65535 * 128 + 1 needed grid.y = 65536
    B = 130 if D < 100_000 else 2
    g = torch.Generator().manual_seed(6)
    x = torch.randn(B, D, generator=g)
    y = torch.zeros(B, dtype=torch.long)
    y[-1] = 1
    c = torch.randn(2, D, generator=g)
    expected = c.clone()
    cl.update_centers_(expected, x, y, 0.5)
    cd = c.to(DEV)
    cl.update_centers_(cd, *_to(x, y), 0.5, deterministic=True)
    torch.testing.assert_close(cd.cpu(), expected, rtol=1e-5, atol=1e-5)
    diff = x - c[y]
    grad = ops.backward_centers(
        torch.tensor(1.0, device=DEV), diff.to(DEV), y.to(DEV), 2, 2, torch.float32, True
    )
    expected_grad = ops.backward_centers(torch.tensor(1.0), diff, y, 2, 2, torch.float32, True)
    torch.testing.assert_close(grad.cpu(), expected_grad, rtol=1e-5, atol=1e-4)


# --- defect 5: a class over many chunks, summed in parallel in a fixed order ---------------


@pytest.mark.parametrize("B", [64 * 9 + 1, 20_000])
def test_one_class_over_many_chunks(B):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(B, 40, generator=g)
    y = torch.full((B,), 2, dtype=torch.long)
    y[:5] = 0  # a class before it, inside the first chunk
    y[-3:] = 3  # and one after it
    c = torch.randn(4, 40, generator=g)
    expected = c.clone()
    cl.update_centers_(expected, x, y, 0.5)
    results = []
    for _ in range(2):
        cd = c.to(DEV)
        cl.update_centers_(cd, *_to(x, y), 0.5, deterministic=True)
        results.append(cd.cpu())
    torch.testing.assert_close(results[0], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("D", [3, 300])  # 300: three column tiles, each block arriving once
def test_split_classes_everywhere(D):
    """Runs of 1-200 rows, so that most chunk boundaries cut a class (split over 2-4
    chunks), next to classes inside one chunk: the sorted update and center gradient
    match the CPU, and each is bit-identical on a second run (the last block to arrive
    at a class's counter sums its slots in chunk order, whichever block that is)."""
    g = torch.Generator().manual_seed(D)
    sizes = torch.randint(1, 201, (40,), generator=g)
    y = torch.repeat_interleave(torch.arange(40), sizes)[
        torch.randperm(int(sizes.sum()), generator=g)
    ]
    B = len(y)
    x = torch.randn(B, D, generator=g)
    x[5, 0] = float("nan")  # a row left out of its class's count
    c = torch.randn(45, D, generator=g)
    expected = c.clone()
    cl.update_centers_(expected, x, y, 0.5)
    diff = x - c[y]
    grad = torch.rand(B, generator=g)
    expected_grad = ops.backward_centers(grad, diff, y, 0, 45, torch.float32, True)
    runs = []
    for _ in range(2):
        cd = c.to(DEV)
        cl.update_centers_(cd, *_to(x, y), 0.5, deterministic=True)
        gd = ops.backward_centers(*_to(grad, diff, y), 0, 45, torch.float32, True)
        runs.append((cd.cpu(), gd.cpu()))
    torch.testing.assert_close(runs[0][0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs[0][1], expected_grad, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1].nan_to_num(), runs[1][1].nan_to_num())
    assert torch.equal(runs[0][0][40:], c[40:])


# --- defect 6: deterministic mode allocates no filled workspace -----------------------------


@pytest.mark.parametrize("labels_dtype", [torch.int64, torch.int32])
def test_deterministic_path_pays_no_fill(labels_dtype):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(300, 16, generator=g).to(DEV)
    y = torch.randint(0, 10, (300,), generator=g).to(labels_dtype).to(DEV)
    c = torch.randn(10, 16, generator=g).to(DEV)
    grad = torch.tensor(1.0, device=DEV)

    def ops_of_a_step():
        _, diff = ops.forward_update_(c, x, y, 1, 0.5, True, True)
        ops.backward_features(grad, diff, 1, torch.float32)
        ops.backward_centers(grad, diff, y, 1, 10, torch.float32, True)
        ops.update_centers_(c, x, y, 0.5, True)

    ops_of_a_step()  # warm-up
    counts = {}
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        for filled in (False, True):
            torch.utils.deterministic.fill_uninitialized_memory = filled
            torch.use_deterministic_algorithms(True)
            try:
                counts[filled] = _launches(ops_of_a_step)
            finally:
                torch.use_deterministic_algorithms(False)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
    assert counts[True] == counts[False], counts


# --- defect 7: backward_centers raises the CPU's IndexError on bad labels -------------------


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("centers_dtype", [torch.float32, torch.bfloat16])
def test_backward_centers_bad_label_raises_like_the_cpu(deterministic, centers_dtype):
    g = torch.Generator().manual_seed(9)
    diff = torch.randn(500, 8, generator=g)
    y = torch.randint(0, 6, (500,), generator=g)
    y[321] = -2
    y[400] = 6
    grad = torch.tensor(1.0)
    message = r"\[0, 6\); got labels\[321\] = -2"
    with pytest.raises(IndexError, match=message):
        ops.backward_centers(grad, diff, y, 1, 6, centers_dtype, deterministic)
    with pytest.raises(IndexError, match=message):
        ops.backward_centers(
            grad.to(DEV), diff.to(DEV), y.to(DEV), 1, 6, centers_dtype, deterministic
        )
    # the device is fine afterwards, and good labels give the CPU's gradient
    y[321] = y[400] = 1
    expected = ops.backward_centers(grad, diff, y, 1, 6, centers_dtype, deterministic)
    got = ops.backward_centers(
        grad.to(DEV), diff.to(DEV), y.to(DEV), 1, 6, centers_dtype, deterministic
    )
    torch.testing.assert_close(got.cpu().double(), expected.double(), rtol=1e-2, atol=1e-3)


def test_backward_centers_label_check_off_leaves_bad_rows_out():
    diff = torch.ones(10, 2)
    y = torch.zeros(10, dtype=torch.long)
    y[3] = 5
    previous = cl.set_cuda_label_check(False)
    try:
        got = ops.backward_centers(
            torch.tensor(1.0, device=DEV), diff.to(DEV), y.to(DEV), 2, 2, torch.float32, False
        )
    finally:
        cl.set_cuda_label_check(previous)
    assert got.cpu().tolist() == [[-9.0, -9.0], [0.0, 0.0]]


@pytest.mark.parametrize("deterministic", [False, True])
def test_backward_centers_long_runs_of_bad_labels(deterministic):
    """Runs of out-of-range labels longer than a chunk (64 rows) below and above the good
    ones: on the sorted path they form split runs that must never reach a class counter
    or a gradient row; with the check off the good rows' gradient is the CPU's."""
    g = torch.Generator().manual_seed(12)
    y = torch.cat([torch.full((150,), -1), torch.randint(0, 3, (200,), generator=g)])
    y = torch.cat([y, torch.full((140,), 3)])[torch.randperm(490, generator=g)]
    diff = torch.randn(490, 5, generator=g)
    previous = cl.set_cuda_label_check(False)
    try:
        got = ops.backward_centers(
            torch.tensor(1.0, device=DEV),
            diff.to(DEV),
            y.to(DEV),
            1,
            3,
            torch.float32,
            deterministic,
        )
    finally:
        cl.set_cuda_label_check(previous)
    good = (y >= 0) & (y < 3)
    expected = ops.backward_centers(
        torch.tensor(1.0), diff[good], y[good], 1, 3, torch.float32, deterministic
    )
    # the mean's scale is 1 / 490 (every row) on the device, 1 / 200 on the CPU's subset
    torch.testing.assert_close(got.cpu() * 490, expected * 200, rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        ops.backward_centers(
            torch.tensor(1.0, device=DEV),
            diff.to(DEV),
            y.to(DEV),
            1,
            3,
            torch.float32,
            deterministic,
        )


# --- issue 25: the atomic update sums a class in the accumulation type, rounds the center once


def _far_center_batch():
    """1,000 rows of 1000.1 (float32), one class whose center is 1000.0: each row's share
    (5e-5) is below the center's ulp (6.1e-5), so adding the shares into the center one by
    one drifts (1000.061035), while the sum added once gives the exact value rounded once."""
    x = torch.full((1000, 4), 1000.1)
    y = torch.zeros(1000, dtype=torch.long)
    c = torch.full((1, 4), 1000.0)
    return x, y, c


@pytest.mark.parametrize("deterministic", [False, True])  # atomic / sorted update
def test_update_rounds_each_center_once(deterministic):
    x, y, c = _far_center_batch()
    expected = c.clone()
    cl.update_centers_(expected, x, y, 0.5)  # the CPU kernel: 1000.049927
    assert expected[0, 0].item() == pytest.approx(1000.049938, abs=6.1e-5)
    xd, yd, cd = _to(x, y, c)
    cl.update_centers_(cd, xd, yd, 0.5, deterministic=deterministic)
    assert torch.equal(cd.cpu(), expected)


@pytest.mark.parametrize("deterministic", [False, True])
def test_fused_step_rounds_each_center_once(deterministic):
    x, y, c = _far_center_batch()
    expected = c.clone()
    ops.forward_update_(expected, x, y, 1, 0.5, True, False)
    xd, yd, cd = _to(x, y, c)
    ops.forward_update_(cd, xd, yd, 1, 0.5, True, deterministic)
    assert torch.equal(cd.cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_atomic_update_class_sums_mixed_classes(dtype):
    """Singletons (their share added directly), classes of many rows (summed in a slot,
    applied by the last row), absent classes and non-finite rows, on the atomic path:
    the CPU's result within the order of the float additions, centers far from zero."""
    g = torch.Generator().manual_seed(0)
    C, D = 300, 37  # D odd: no vector path anywhere
    y = torch.cat(
        [
            torch.arange(100, 200),  # 100 singletons
            torch.randint(0, 60, (3000,), generator=g),
        ]
    )  # 60 classes, ~50 rows each
    y = y[torch.randperm(len(y), generator=g)]
    x = 500 + torch.randn(len(y), D, generator=g, dtype=torch.float64).to(dtype)
    x[7, 3] = float("nan")
    x[11] = float("inf")
    c = (500 + torch.randn(C, D, generator=g, dtype=torch.float64)).to(dtype)
    expected = c.clone()
    cl.update_centers_(expected, x, y, 0.7)
    xd, yd, cd = _to(x, y, c)
    cl.update_centers_(cd, xd, yd, 0.7, deterministic=False)
    out = cd.cpu()
    torch.testing.assert_close(out, expected, rtol=0, atol=2 * torch.finfo(dtype).eps * 512)
    assert torch.equal(out[200:], c[200:])  # absent classes untouched


@pytest.mark.parametrize("D", [2, 3, 8, 37, 128, 512])
@pytest.mark.parametrize("offset", [0, 1])  # 1: x and c not 16-byte aligned (no vector path)
def test_atomic_update_class_sizes_around_the_walk_limit(D, offset):
    """Class k has k + 1 rows for k < 40: classes of up to 32 rows are summed by their
    list's head, larger ones in slots (kWalkRows = 32), at every lane count per row
    (D = 2: 16 rows a warp; 512: a warp a row); the CPU's result within the order of the
    additions, each center element moved once."""
    g = torch.Generator().manual_seed(D)
    C = 45
    y = torch.cat([torch.full((k + 1,), k) for k in range(40)])
    y = y[torch.randperm(len(y), generator=g)]
    x = (100 + torch.randn(len(y) * D + offset, generator=g))[offset:].view(len(y), D)
    c = (100 + torch.randn(C * D + offset, generator=g))[offset:].view(C, D)
    expected = c.clone()
    cl.update_centers_(expected, x, y, 0.6)
    xd, yd = _to(x, y)
    cd = _on_device(c, offset)
    cl.update_centers_(cd, xd, yd, 0.6, deterministic=False)
    out = cd.cpu()
    torch.testing.assert_close(
        out, expected, rtol=0, atol=64 * torch.finfo(torch.float32).eps * 100
    )
    assert torch.equal(out[40:], c[40:])


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize(
    "dtype, centers_dtype",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.bfloat16, torch.float64),
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float16),
    ],
)
@pytest.mark.parametrize("D, offset", [(3, 0), (8, 1), (128, 0), (128, 1)])
def test_update_forms_differences_from_features_of_every_dtype(
    dtype, centers_dtype, D, offset, deterministic
):
    """Both update paths read x and form d = x - c again in the accumulation type (the
    atomic path's list walk, classes of up to 32 rows; the sorted path's chunks): every
    dtype pair, classes of 1-40 rows, aligned and not, non-finite rows left out; the CPU's
    centers within the order of the additions (one rounding to the centers' dtype)."""
    g = torch.Generator().manual_seed(D + offset)
    C = 45
    y = torch.cat([torch.full((k + 1,), k) for k in range(40)])
    y = y[torch.randperm(len(y), generator=g)]
    x = (10 + torch.randn(len(y), D, generator=g, dtype=torch.float64)).to(dtype)
    x[7, D - 1] = float("nan")
    x[11] = float("inf")
    c = (10 + torch.randn(C, D, generator=g, dtype=torch.float64)).to(centers_dtype)
    expected = c.clone()
    cl.update_centers_(expected, x, y, 0.6)
    cd = _on_device(c, offset)
    cl.update_centers_(cd, _on_device(x, offset), y.to(DEV), 0.6, deterministic=deterministic)
    out = cd.cpu()
    acc = torch.float64 if torch.float64 in (dtype, centers_dtype) else torch.float32
    atol = 2 * torch.finfo(centers_dtype).eps * 16 + 64 * torch.finfo(acc).eps * 16
    torch.testing.assert_close(out, expected, rtol=0, atol=atol)
    assert torch.equal(out[40:], c[40:])
    assert not torch.equal(out[:40], c[:40])
