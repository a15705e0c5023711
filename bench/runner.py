"""Runs one variant on one problem: build → check → warm up → time → memory → CUDA graph.

Whatever goes wrong is recorded in the result's status and the run goes on:
``ok``, ``FAILED`` (wrong answer: not timed), ``OOM``, ``too slow`` (one step would blow
the time budget), ``skipped`` (would not fit in host memory) or ``error`` (an exception,
e.g. no kernel for this device).
"""

from __future__ import annotations

import gc
import itertools
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from . import checks
from .memory import peak_bytes
from .timing import Stats, capture_cuda_graph, time_fn
from .variants import Problem, Step, Variant


@dataclass
class Settings:
    min_run_time: float = 1.0  # seconds of timed runs per variant (at least)
    min_runs: int = 10  # timed blocks per variant (at least; a block: >= 1 call)
    warmup: int = 3  # untimed steps after the check
    budget: float = 60.0  # seconds a variant may take in all; slower: "too slow"
    cuda_graphs: bool = True


@dataclass
class Result:
    variant: str
    status: str = "ok"
    note: str = ""
    step: Optional[Stats] = None
    graph: Optional[Stats] = None
    graph_note: str = ""
    peak_bytes: Optional[int] = None
    first_call_s: Optional[float] = None  # includes compilation for compiled variants
    errors: Dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "variant": self.variant,
            "status": self.status,
            "note": self.note,
            "step": self.step.as_dict() if self.step else None,
            "cuda_graph": self.graph.as_dict() if self.graph else None,
            "cuda_graph_note": self.graph_note,
            "peak_bytes": self.peak_bytes,
            "first_call_s": self.first_call_s,
            "check_errors": self.errors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        """The inverse of :meth:`as_dict`."""
        return cls(
            d["variant"],
            d["status"],
            d["note"],
            Stats.from_dict(d["step"]),
            Stats.from_dict(d["cuda_graph"]),
            d["cuda_graph_note"],
            d["peak_bytes"],
            d["first_call_s"],
            d["check_errors"],
        )


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "not enough memory" in str(e))
    )


def describe_failure(e: BaseException) -> Tuple[str, str]:
    """(status, note) for an exception: "OOM" or "error", and its first line."""
    return ("OOM" if _is_oom(e) else "error"), _first_line(e)


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _available_host_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_variant(
    variant: Variant, problem: Problem, want: Optional[checks.Expected], settings: Settings
) -> Result:
    """``want``: the oracle; None for the baseline, which is not checked."""
    result = Result(variant.name)
    on_cuda = torch.device(problem.device).type == "cuda"
    if not on_cuda and variant.working_bytes is not None:
        need, have = variant.working_bytes(problem.shape), _available_host_bytes()
        if have is not None and need > 0.7 * have:
            result.status = "skipped"
            result.note = f"needs about {need / 2**30:.1f} GiB; {have / 2**30:.1f} GiB available"
            return result
    step: Optional[Step] = None
    try:
        step = variant.build(problem)
        t0 = time.perf_counter()
        if want is not None:
            result.errors = checks.check_step(step, problem, want)
        else:
            x, y = problem.batches[0]
            step(x, y)
        _sync(problem.device)
        result.first_call_s = time.perf_counter() - t0
        if want is not None:
            failed = checks.failures(result.errors, problem.dtype)
            if failed:
                result.status, result.note = "FAILED", failed
                return result
        _measure(step, problem, settings, result, variant.compiled)
    except Exception as e:  # noqa: BLE001 - every failure is reported, and the run goes on
        result.status, result.note = describe_failure(e)
    finally:
        del step
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
    return result


def _measure(
    step: Step,
    problem: Problem,
    settings: Settings,
    result: Result,
    first_call_includes_compile: bool,
) -> None:
    batches = itertools.cycle(problem.batches)

    def one() -> None:
        x, y = next(batches)
        step(x, y)

    def timed_call() -> float:
        t0 = time.perf_counter()
        one()
        _sync(problem.device)
        return time.perf_counter() - t0

    # One step's time, for the budget: the first call's, unless it compiled.
    estimate = timed_call() if first_call_includes_compile else result.first_call_s
    warmup = settings.warmup if estimate < 0.1 else 1  # a slow step warms up in one go
    if estimate * (warmup + settings.min_runs + 1) > settings.budget:
        result.status = "too slow"
        result.note = (
            f"one step takes about {estimate:.2f} s; warm-up and "
            f"{settings.min_runs} timed runs would exceed the "
            f"{settings.budget:.0f} s budget"
        )
        return
    for _ in range(warmup):
        estimate = min(estimate, timed_call())
    result.step = time_fn(one, problem.device, settings.min_run_time, settings.min_runs, estimate)

    # Memory: one more step with every gradient dropped first, so they count.
    for x, _ in problem.batches:
        x.grad = None
    step.clear()
    result.peak_bytes = peak_bytes(one, problem.device)

    if torch.device(problem.device).type == "cuda" and settings.cuda_graphs:
        _graph(step, problem, settings, result)


def _graph(step: Step, problem: Problem, settings: Settings, result: Result) -> None:
    """Replay of the whole step captured in a CUDA graph, on the first batch (replay
    cannot rotate inputs without a copy that would be timed with it)."""
    x, y = problem.batches[0]
    try:
        graph = capture_cuda_graph(lambda: step(x, y))
    except Exception as e:  # noqa: BLE001 - "n/a (why)" and go on
        while e.__context__ is not None:  # the capture's end re-raises; say what broke it
            e = e.__context__
        result.graph_note = f"n/a ({_first_line(e, 100)})"
        try:
            torch.cuda.synchronize()
        except Exception as sync_error:  # noqa: BLE001
            result.graph_note += f"; CUDA then reported {_first_line(sync_error, 80)}"
        return
    result.graph = time_fn(graph.replay, problem.device, settings.min_run_time, settings.min_runs)
    del graph
