"""Timers: torch.utils.benchmark on the CPU, CUDA events on the GPU, and CUDA-graph capture.

Both timers run the function in blocks of several calls, enough that the timer's own
overhead is negligible, and report the median and the spread over the blocks' per-call
times. Warm-up is the caller's job (compilation, caches, allocator), then each timer
warms up again briefly.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

import torch
from torch.utils import benchmark


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


def stats_from_times(times: List[float], per_block: int, method: str) -> Stats:
    """Median, quartiles and mean of per-call times (one per block)."""
    if not times:
        raise ValueError("no times to summarise")
    if len(times) == 1:
        q1 = q3 = times[0]
    else:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return Stats(median=statistics.median(times), q1=q1, q3=q3,
                 mean=statistics.fmean(times), blocks=len(times), per_block=per_block,
                 method=method, times=list(times))


def time_cpu(fn: Callable[[], object], min_run_time: float, min_runs: int = 5,
             estimate: Optional[float] = None) -> Stats:
    """torch.utils.benchmark's blocked_autorange at the current thread count; runs for at
    least ``min_run_time`` seconds and ``min_runs`` calls (``estimate``: seconds per call,
    to stretch the run for slow functions)."""
    if estimate:
        min_run_time = max(min_run_time, min_runs * estimate)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn},
                            num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return stats_from_times(list(m.times), m.number_per_run,
                            f"torch.utils.benchmark blocked_autorange, "
                            f"{torch.get_num_threads()} threads")


def time_cuda(fn: Callable[[], object], min_run_time: float, min_runs: int = 5,
              min_blocks: int = 10, max_blocks: int = 200, block_time: float = 2e-3,
              warmup: int = 3) -> Stats:
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
    estimate = max(start.elapsed_time(end) / 1e3, 1e-7)
    per_block = max(1, min(1000, math.ceil(block_time / estimate)))
    blocks = math.ceil(max(min_run_time, min_runs * estimate) / (per_block * estimate))
    blocks = max(min_blocks, min(max_blocks, blocks))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(blocks)]
    for s, e in events:
        s.record()
        for _ in range(per_block):
            fn()
        e.record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) / 1e3 / per_block for s, e in events]
    return stats_from_times(times, per_block, "CUDA events")


def time_fn(fn: Callable[[], object], device: str, min_run_time: float, min_runs: int = 5,
            estimate: Optional[float] = None) -> Stats:
    """The right timer for ``device``."""
    if torch.device(device).type == "cuda":
        return time_cuda(fn, min_run_time, min_runs)
    return time_cpu(fn, min_run_time, min_runs, estimate)


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
