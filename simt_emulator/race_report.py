#!/usr/bin/env python3
"""Reads ThreadSanitizer's reports from a run of the `race` build variant and prints each
race as the kernel, the two accesses' source lines (the .cu lines, through the emulated
sources' #line directives) and the memory space; exits 1 when there is any report.

    python simt_emulator/race_report.py build/emu/race/reports   # a folder or log files

A report that is not a data race (or that no kernel frame explains) is printed whole: it
fails the run just the same. See docs/cuda_emulation.md, "Race detection".
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SEP = "=================="
_ACCESS = re.compile(
    r"^  (Previous )?(atomic )?(read|write) of size (\d+) at (0x[0-9a-f]+) by "
    r"(main thread|thread T\d+)",
    re.IGNORECASE,
)
_FRAME = re.compile(r"^    #\d+ (.*) (\S+):(\d+)(?::\d+)? \(\S+\)$")
_LOCATION = re.compile(r"^  Location is (.*?) of size (\d+) at (0x[0-9a-f]+)")
_SOURCE = (".cu", ".cuh")

# How the race variant names memory (race.cpp tags each OS thread's shared memory; a
# device allocation, or any other heap block, is global memory).
_SPACES = {
    "CUDA shared memory": "shared",
    "heap block": "global",
}


@dataclass
class Access:
    kind: str  # "read", "write", "atomic write", ...
    size: int
    where: str  # file:line of the innermost kernel-source frame
    kernel: str  # the __global__ function the access ran in
    kernel_line: str  # the kernel's own line (the call into a helper), or where


@dataclass
class Race:
    accesses: List[Access] = field(default_factory=list)
    space: str = "unknown"
    text: str = ""

    def key(self) -> Tuple:
        return (self.space, *sorted((a.kind, a.where, a.kernel) for a in self.accesses))

    def describe(self) -> str:
        kernels = sorted({a.kernel for a in self.accesses})
        size = max((a.size for a in self.accesses), default=0)
        lines = [f"race in kernel {' / '.join(kernels)}: {self.space} memory, {size} bytes"]
        for a in self.accesses:
            via = f" (kernel line {a.kernel_line})" if a.kernel_line != a.where else ""
            lines.append(f"  {a.kind:<13} {a.where}{via}")
        return "\n".join(lines)


def _rel(path: str) -> str:
    path = os.path.normpath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def _access(kind: str, size: int, frames: List[Tuple[str, str, str]]) -> Optional[Access]:
    # frames innermost first, up to the emulator's launch closure (simt.h): the last
    # kernel-source frame there is the launch's rewritten lambda, the one before it the kernel
    stack = []
    for func, path, line in frames:
        if path.endswith("simt.h"):
            break
        stack.append((func, path, line))
    src = [(f, p, n) for f, p, n in stack if p.endswith(_SOURCE)]
    if not src:
        return None
    inner = src[0]
    kernel = src[-2] if len(src) >= 2 else src[-1]
    name = re.sub(r"\(.*$", "", kernel[0]) or kernel[0]
    return Access(
        kind=kind,
        size=size,
        where=f"{_rel(inner[1])}:{inner[2]}",
        kernel=name,
        kernel_line=f"{_rel(kernel[1])}:{kernel[2]}",
    )


def parse(text: str) -> Tuple[List[Race], List[str]]:
    """Races (kernel, lines, space) and the reports that are not kernel races (raw text)."""
    races: List[Race] = []
    other: List[str] = []
    for chunk in text.split(_SEP):
        if "WARNING: ThreadSanitizer:" not in chunk:
            continue
        lines = chunk.strip("\n").splitlines()
        race = Race(text=chunk.strip("\n"))
        accesses: List[Tuple[str, int, List[Tuple[str, str, str]]]] = []
        in_access = False
        for line in lines:
            m = _ACCESS.match(line)
            if m:
                kind = ((m.group(2) or "") + m.group(3)).lower()
                accesses.append((kind, int(m.group(4)), []))
                in_access = True
                continue
            m = _LOCATION.match(line)
            if m:
                race.space = _SPACES.get(m.group(1), f"unknown ({m.group(1)})")
            f = _FRAME.match(line)
            if f and in_access:
                accesses[-1][2].append((f.group(1), f.group(2), f.group(3)))
            elif not line.startswith("    "):
                in_access = False
        race.accesses = [a for a in (_access(*x) for x in accesses) if a is not None]
        if "data race" in lines[0] + "".join(lines[:2]) and len(race.accesses) == 2:
            races.append(race)
        else:
            other.append(race.text)
    return races, other


def _files(paths: Iterable[str]) -> List[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p))
        elif os.path.exists(p):
            out.append(p)
    return out


def main(argv: List[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    races: List[Race] = []
    other: List[str] = []
    for path in _files(argv):
        with open(path, errors="replace") as f:
            r, o = parse(f.read())
        races += r
        other += o
    seen = set()
    unique = []
    for r in races:
        if r.key() not in seen:
            seen.add(r.key())
            unique.append(r)
    for r in unique:
        print(r.describe())
    for text in other:
        print("ThreadSanitizer report (not a kernel data race):\n" + text)
    n = len(unique) + len(other)
    print(f"race detector: {n} report{'s' if n != 1 else ''}" + ("" if n else " (clean)"))
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
