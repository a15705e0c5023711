#!/usr/bin/env python3
"""Rewrites CUDA launches for the SIMT emulator and writes the result as C++:

    kernel<T><<<grid, block, shmem, stream>>>(a, b);
becomes
    ::simt::launch(::simt::LaunchConfig(grid, block, shmem, stream), "kernel<T>",
                   [](const auto&... simt_a) { kernel<T>(simt_a...); }, a, b);

Nothing else changes, and no line is added or removed: with the #line directive on top,
compiler messages and gcov's line coverage point at the original .cu lines.

    python rewrite_launches.py SRC.cu OUT.cpp
"""

from __future__ import annotations

import re
import sys


def _matching(text: str, i: int, open_: str, close: str, step: int) -> int:
    """Index of the bracket matching text[i] (walking forwards or backwards)."""
    depth = 0
    while 0 <= i < len(text):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i
        i += step
    raise ValueError("unbalanced brackets")


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression that ends just before `end` (`<<<`):
    a qualified name, optionally followed by template arguments."""
    i = end - 1
    while text[i].isspace():
        i -= 1
    if text[i] == ">":
        i = _matching(text, i, ">", "<", -1) - 1
    while i >= 0 and (text[i].isalnum() or text[i] in "_:"):
        i -= 1
    return i + 1


def rewrite(text: str, name: str) -> str:
    out, pos = [], 0
    for m in re.finditer(r"<<<", text):
        if m.start() < pos:
            continue
        start = _kernel_start(text, m.start())
        raw_kernel = text[start : m.start()]
        kernel = raw_kernel.strip()
        # a kernel name on the line above its <<< (as clang-format may break it): keep
        # the line break, inside the call, so that every later line keeps its number
        breaks = "\n" * raw_kernel.count("\n")
        close = text.index(">>>", m.end())
        config = text[m.end() : close]
        p = close + 3
        while text[p].isspace():
            p += 1
        if text[p] != "(":
            raise SystemExit(f"{name}: launch of {kernel} has no argument list")
        args_end = _matching(text, p, "(", ")", 1)
        args = text[p + 1 : args_end]
        label = " ".join(kernel.split()).replace('"', "")
        sep = ", " if args.strip() else ""
        out.append(text[pos:start])
        out.append(
            f'::simt::launch({breaks}::simt::LaunchConfig({config}), "{label}", '
            f"[](const auto&... simt_a) {{ {kernel}(simt_a...); }}{sep}{args})"
        )
        pos = args_end + 1
    out.append(text[pos:])
    return "".join(out)


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    body = rewrite(text, src)
    assert body.count("\n") == text.count("\n"), "the rewrite must keep every line"
    with open(dst, "w") as f:
        f.write(f'#line 1 "{src}"\n{body}')


if __name__ == "__main__":
    main()
