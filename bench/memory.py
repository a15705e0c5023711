"""Peak memory of one step: the most tensor memory in use during the step beyond what was
in use just before it (gradients cleared first, so they count; inputs and centers don't).

CUDA: ``torch.cuda.max_memory_allocated``. CPU: torch keeps no allocation statistics, so
the allocations and frees of one step are recorded by the profiler (``profile_memory``)
and summed in order: the same figure, for tensor memory (tracemalloc sees only Python
objects, and RSS keeps pages that the allocator has freed).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional

import torch


def peak_cuda(fn: Callable[[], object]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def peak_cpu(fn: Callable[[], object]) -> Optional[int]:
    """None where this torch's profiler does not expose allocation events."""
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except AttributeError:
        return None
    allocations, stack = [], list(roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
    in_use = peak = 0
    for _, size in sorted(allocations):  # frees of blocks allocated before are not seen
        in_use += size
        peak = max(peak, in_use)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler's C++ side logs start/stop lines to stderr on every use."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], object], device: str) -> Optional[int]:
    if torch.device(device).type == "cuda":
        return peak_cuda(fn)
    return peak_cpu(fn)
