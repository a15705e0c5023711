"""The race detector sees planted races, and not their correct twins (make test-cuda-race;
docs/cuda_emulation.md, "Race detection").

simt_emulator/race_planted.cu, built into the `race` variant under ThreadSanitizer like
csrc/cuda/*.cu, plants: a missing __syncthreads() between a shared-memory write and
another thread's read; two blocks adding to one global counter without atomics; a flag
one block sets and another reads with a plain store and load (no fence, no atomic); the
last-block-done pattern with its atomics but without its fences. Each runs in a
subprocess (its reports in its own log); the racy ones must be reported with the right
kernel, lines and memory space, the correct ones (barrier, atomicAdd, fence + atomic flag,
fences) not at all. Skipped unless the loaded emulator is the race variant."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT
from simt_emulator import race_report

PLANTED = os.path.join(REPO_ROOT, "simt_emulator", "race_planted.cu")
SRC = "simt_emulator/race_planted.cu"


def _race_library():
    lib = os.environ.get("CENTERLOSS_SIMT_LIB")
    if not lib or "tsan" not in os.environ.get("LD_PRELOAD", ""):
        return None
    return lib if hasattr(ctypes.CDLL(os.path.abspath(lib)), "simt_race_planted") else None


LIB = _race_library()
_skip = pytest.mark.skipif(
    LIB is None, reason="needs the race variant of the emulator (make test-cuda-race)"
)


def needs_race(test):
    return pytest.mark.cuda(_skip(test))


def _line(snippet: str) -> str:
    with open(PLANTED) as f:
        for n, text in enumerate(f, 1):
            if snippet in text:
                return f"{SRC}:{n}"
    raise AssertionError(f"{snippet!r} not in {PLANTED}")


def _run(names, tmp_path):
    """Runs the planted kernels `names` in one subprocess; returns its races."""
    log = tmp_path / "tsan"
    env = dict(os.environ)
    env["TSAN_OPTIONS"] = env.get("TSAN_OPTIONS", "") + f":log_path={log}"
    code = (
        "import ctypes, sys\n"
        f"lib = ctypes.CDLL({os.path.abspath(LIB)!r})\n"
        "for name in sys.argv[1:]:\n"
        "    assert lib.simt_race_planted(name.encode()) == 0, name\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *names], env=env, capture_output=True, text=True
    )
    text = "".join(p.read_text() for p in tmp_path.iterdir() if p.name.startswith("tsan"))
    races, other = race_report.parse(text)
    assert not other, "\n".join(other)
    assert proc.returncode in (0, 66), proc.stderr[-3000:]  # 66: TSan reported
    assert (proc.returncode == 66) == bool(races), proc.stderr[-3000:]
    return races


def _pairs(races, kernel):
    return {
        (r.space, frozenset(a.where for a in r.accesses))
        for r in races
        if all(a.kernel == kernel for a in r.accesses)
    }


@needs_race
def test_planted_races_are_reported(tmp_path):
    races = _run(["shared_race", "global_race", "flag_race", "last_block_race"], tmp_path)
    summary = "\n".join(r.describe() for r in races)
    # a __syncthreads() missing between a shared-memory write and a neighbour's read
    assert (
        "shared",
        frozenset({_line("slot[t] = t * 3;"), _line("= slot[(t + 1) % kThreads];")}),
    ) in _pairs(races, "planted::shared_neighbour_kernel"), summary
    # two blocks' plain read-modify-write of one global counter
    assert ("global", frozenset({_line("*count = *count + 1;")})) in _pairs(
        races, "planted::global_count_kernel"
    ), summary
    # a flag set by one block and read by another with a plain store and load
    assert ("global", frozenset({_line("*flag = 1;"), _line("seen = *flag;")})) in _pairs(
        races, "planted::flag_kernel"
    ), summary
    # the last-block pattern's atomics without its fences: the partials are unordered
    assert (
        "global",
        frozenset({_line("partials[blockIdx.x] = "), _line("s += const_cast<volatile")}),
    ) in _pairs(races, "planted::last_block_kernel"), summary


@needs_race
def test_correct_twins_are_not_reported(tmp_path):
    races = _run(["shared_ok", "global_ok", "flag_ok", "last_block_ok"], tmp_path)
    assert not races, "\n".join(r.describe() for r in races)


def test_report_names_kernel_lines_and_space():
    """The report reader on a ThreadSanitizer report of the race variant (no build needed)."""
    cu = os.path.join(REPO_ROOT, "csrc", "cuda", "k.cu")
    simt_h = os.path.join(REPO_ROOT, "simt_emulator", "simt.h")
    text = f"""==================
WARNING: ThreadSanitizer: data race (pid=1)
  Write of size 4 at 0x7b0000000010 by thread T3:
    #0 helper<float> {cu}:7 (libcenterloss_simt.so+0x1)
    #1 ns::my_kernel<float>(float*) {cu}:20 (libcenterloss_simt.so+0x2)
    #2 operator()<float*> {cu}:40 (libcenterloss_simt.so+0x3)
    #3 operator() {simt_h}:134 (libcenterloss_simt.so+0x4)

  Previous read of size 4 at 0x7b0000000010 by thread T2:
    #0 ns::my_kernel<float>(float*) {cu}:22 (libcenterloss_simt.so+0x5)
    #1 operator()<float*> {cu}:40 (libcenterloss_simt.so+0x3)
    #2 operator() {simt_h}:134 (libcenterloss_simt.so+0x4)

  Location is CUDA shared memory of size 512 at 0x7b0000000000 allocated by thread T1:

SUMMARY: ThreadSanitizer: data race {cu}:7 in helper<float>
==================
"""
    races, other = race_report.parse(text)
    assert not other and len(races) == 1
    r = races[0]
    assert r.space == "shared"
    assert [(a.kind, a.where, a.kernel, a.kernel_line) for a in r.accesses] == [
        ("write", "csrc/cuda/k.cu:7", "ns::my_kernel<float>", "csrc/cuda/k.cu:20"),
        ("read", "csrc/cuda/k.cu:22", "ns::my_kernel<float>", "csrc/cuda/k.cu:22"),
    ]
