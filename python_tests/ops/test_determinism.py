"""SPEC "Determinism": bit-identical loss, gradients and centers run to run under
torch.use_deterministic_algorithms(True) (the CPU kernels are deterministic always)."""

from __future__ import annotations

import pytest
import torch

from centerloss_ext import CenterLoss
from helpers import make_batch


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def _steps(device, mode, dtype, labels):
    crit = CenterLoss(50, 64, center_update=mode, device=device)
    out = []
    for step in range(3):
        x, _, _ = make_batch(4000, 64, 50, dtype=dtype, device=device, seed=step)
        x.requires_grad_()
        loss = crit(x, labels.to(device))
        loss.backward()
        out += [loss.detach(), x.grad]
    out.append(crit.centers.detach())
    if mode == "optimizer":
        out.append(crit.centers.grad)
    return out


@pytest.mark.parametrize("mode", ["alpha", "optimizer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern", ["random", "one class"])
def test_bit_identical_run_to_run(device, deterministic, mode, dtype, pattern):
    labels = torch.randint(0, 50, (4000,)) if pattern == "random" else torch.zeros(4000).long()
    first = _steps(device, mode, dtype, labels)
    second = _steps(device, mode, dtype, labels)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cpu_results_do_not_depend_on_thread_count():
    labels = torch.randint(0, 50, (4000,))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _steps("cpu", "optimizer", torch.float32, labels)
        torch.set_num_threads(max(threads, 2))
        many = _steps("cpu", "optimizer", torch.float32, labels)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)
