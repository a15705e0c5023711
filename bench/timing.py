"""Timers: timeit blocks on the CPU, CUDA events on the GPU, and CUDA-graph capture.

Both timers run the function in blocks of several calls, enough that the timer's own
overhead is negligible, at least ``min_runs`` blocks, and report the median and the
quartiles of the blocks' per-call times. Warm-up (compilation, caches, allocator) is
the caller's job.
"""

from __future__ import annotations

import math
import statistics
import time
import timeit
from dataclasses import asdict, dataclass, fields
from typing import Callable, List, Optional, Tuple

import torch


@dataclass
class Stats:
    """Per-call times in seconds, one figure per block of ``per_block`` calls."""

    median: float
    q1: float
    q3: float
    mean: float
    blocks: int
    per_block: int
    method: str
    times: List[float]  # per call, one per block

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def runs(self) -> int:
        return self.blocks * self.per_block

    def as_dict(self) -> dict:
        return {**asdict(self), "iqr": self.iqr, "runs": self.runs}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["Stats"]:
        """The inverse of :meth:`as_dict` (None stays None)."""
        return None if d is None else cls(**{f.name: d[f.name] for f in fields(cls)})


def stats_from_times(times: List[float], per_block: int, method: str) -> Stats:
    """Median, quartiles and mean of per-call times (one per block)."""
    if not times:
        raise ValueError("no times to summarise")
    if len(times) == 1:
        q1 = q3 = times[0]
    else:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return Stats(
        median=statistics.median(times),
        q1=q1,
        q3=q3,
        mean=statistics.fmean(times),
        blocks=len(times),
        per_block=per_block,
        method=method,
        times=list(times),
    )


def plan_blocks(
    estimate: float, min_run_time: float, min_runs: int, block_time: float, max_blocks: int = 1000
) -> Tuple[int, int]:
    """(calls per block, blocks): blocks of at least ``block_time`` seconds (timer overhead
    negligible), at least ``min_runs`` blocks, at least ``min_run_time`` seconds in all."""
    estimate = max(estimate, 1e-7)
    per_block = max(1, min(10_000, math.ceil(block_time / estimate)))
    blocks = math.ceil(min_run_time / (per_block * estimate))
    return per_block, max(min_runs, min(max_blocks, blocks))


def time_cpu(
    fn: Callable[[], object], estimate: float, min_run_time: float, min_runs: int = 10
) -> Stats:
    """Blocks of calls timed by the standard library's timeit (perf_counter, garbage
    collection off during a block, as torch.utils.benchmark does; its Timer.timeit would
    add a warm-up to every block) at the current thread count."""
    threads = torch.get_num_threads()
    timer = timeit.Timer(fn)
    per_block, blocks = plan_blocks(estimate, min_run_time, min_runs, block_time=10e-3)
    times = [timer.timeit(per_block) / per_block for _ in range(blocks)]
    return stats_from_times(times, per_block, f"timeit blocks, {threads} torch threads")


def time_cuda(
    fn: Callable[[], object], min_run_time: float, min_runs: int = 10, warmup: int = 3
) -> Stats:
    """CUDA events around blocks of calls on the current stream. Blocks are queued back to
    back and read after one final synchronize, so a launch-bound function is timed at its
    host submission rate and a GPU-bound one at its device time, as in training."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    per_block, blocks = plan_blocks(
        start.elapsed_time(end) / 1e3, min_run_time, min_runs, block_time=2e-3, max_blocks=300
    )
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(blocks)
    ]
    for s, e in events:
        s.record()
        for _ in range(per_block):
            fn()
        e.record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) / 1e3 / per_block for s, e in events]
    return stats_from_times(times, per_block, "CUDA events")


def time_fn(
    fn: Callable[[], object],
    device: str,
    min_run_time: float,
    min_runs: int = 10,
    estimate: Optional[float] = None,
) -> Stats:
    """The right timer for ``device``; on the CPU, ``estimate`` (seconds per call, from the
    caller's warm-up) sizes the blocks, and a missing one is measured."""
    if torch.device(device).type == "cuda":
        return time_cuda(fn, min_run_time, min_runs)
    if estimate is None:
        fn()
        t0 = time.perf_counter()
        fn()
        estimate = time.perf_counter() - t0
    return time_cpu(fn, estimate, min_run_time, min_runs)


def capture_cuda_graph(fn: Callable[[], object], warmup: int = 3) -> "torch.cuda.CUDAGraph":
    """Captures one call of ``fn`` into a CUDA graph, after warm-up on a side stream (the
    recipe of the CUDA-graphs docs). The tensors ``fn`` reads must stay where they are:
    replay reads and writes the addresses seen at capture. Raises whatever capture
    raises (a host synchronisation, a CPU tensor, ...)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph
