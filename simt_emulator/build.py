#!/usr/bin/env python3
"""Builds the SIMT-emulated CUDA kernels: csrc/cuda/*.cu, unchanged but for their
<<<...>>> launches (rewrite_launches.py), compiled by g++ with the emulator (simt.h,
simt_runtime.cpp), the emulated device (device.cpp) and its op registration into one
library that simt_emulator.loader loads next to the real extension.

    python simt_emulator/build.py [--variant {cov,asan,release}] [--jobs N]

Variants: `cov` (-O1, gcov line coverage: the tests' build), `asan` (AddressSanitizer +
UndefinedBehaviorSanitizer; load with the preload that --print-env shows), `release` (-O2),
`race` (the race detector: the kernels under ThreadSanitizer; --print-env's preload too).
Prints the library's path on the last line. Needs the extension built in place first
(make build): the library links against centerloss_ext/_C for the shared checks.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # the repository root: csrc/, centerloss_ext/, build/
FLAGS = {
    # single: plain counter increments, so run it with SIMT_WORKERS=1 (make test-cuda-emu
    # does): atomic updates made the emulated tests 3x slower on 2 cores (377 s vs 118 s
    # a seed), and racing plain ones corrupt gcov's arc counts
    "cov": ["-O1", "--coverage", "-fprofile-update=single"],
    "asan": [
        "-O1",
        "-fsanitize=address,undefined",
        "-fno-omit-frame-pointer",
        "-fno-sanitize-recover=undefined",
    ],
    "release": ["-O2"],
    # the memory-traffic model (traffic.cpp; docs/cuda_emulation.md, "Memory traffic")
    "traffic": ["-O2", "-DSIMT_TRAFFIC"],
    # the race detector (race.cpp; docs/cuda_emulation.md, "Race detection"): the .cu
    # objects under ThreadSanitizer (CU_FLAGS), the emulator's hooks told by SIMT_RACE
    "race": ["-O1", "-DSIMT_RACE=1"],
}
# Per-variant compiler and flags of the csrc/cuda/*.cu objects only (the emulator's own
# sources stay on g++, uninstrumented), and sources linked into one variant only.
# traffic: clang's SanitizerCoverage calls traffic.cpp's hook on every load and store of
# kernel code; no partial or runtime unrolling and no loop vectoriser, so that one source
# access stays one call site (the warp's lanes are paired by site).
CU_COMPILER = {"traffic": "clang++-14"}
CU_FLAGS = {
    "traffic": [
        "-fsanitize-coverage=trace-pc-guard,trace-loads,trace-stores",
        "-fno-vectorize",
        *("-mllvm", "-unroll-runtime=false", "-mllvm", "-unroll-allow-partial=false"),
    ],
    "race": ["-fsanitize=thread"],
}
EXTRA_SOURCES = {"traffic": ["traffic.cpp"], "race": ["race.cpp"]}
# .cu sources of one variant's own, built like csrc/cuda's: the race variant's kernels
# with planted races (python_tests/cuda_kernels/test_race_detector.py)
EXTRA_CU = {"race": [os.path.join(HERE, "race_planted.cu")]}


def _fail(msg: str) -> None:
    sys.exit(f"simt_emulator/build.py: {msg}")


def _torch_paths():
    try:
        import torch
        from torch.utils.cpp_extension import include_paths, library_paths
    except ImportError:
        _fail(
            "torch is not importable by this Python; run it with the project's venv "
            "(make emu-build does)"
        )
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return include_paths(), library_paths(), abi


def _extension() -> str:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    path = os.path.join(ROOT, "centerloss_ext", "_C" + suffix)
    if not os.path.exists(path):
        _fail(f"{os.path.relpath(path, ROOT)} is missing: build the extension first (make build)")
    return path


# ignore_noninstrumented_modules: torch is not instrumented; its memcpy/memset etc. report
# nothing (only the .cu objects' accesses are checked); exitcode: any report fails the run.
RACE_TSAN_OPTIONS = (
    "ignore_noninstrumented_modules=1:report_signal_unsafe=0:exitcode=66:history_size=4"
)


def _tsan_preload() -> str:
    out = subprocess.run(
        ["g++", "-print-file-name=libtsan.so"], capture_output=True, text=True
    ).stdout.strip()
    return os.path.realpath(out)


def _sanitizer_preload() -> str:
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        out = subprocess.run(
            ["g++", f"-print-file-name={name}"], capture_output=True, text=True
        ).stdout.strip()
        libs.append(os.path.realpath(out))
    return " ".join(libs)


def _cu_compiler(variant: str) -> str:
    name = CU_COMPILER.get(variant, "g++")
    path = shutil.which(name)
    if not path:
        _fail(f"{name} not found: the {variant} variant compiles the .cu sources with it")
    return path


def write_ninja(variant: str, out: str) -> str:
    incs, libdirs, abi = _torch_paths()
    ext = _extension()
    gen = os.path.join(out, "gen")
    os.makedirs(gen, exist_ok=True)
    cflags = [
        "-std=c++20",
        "-fPIC",
        "-g",
        "-Wall",
        "-Wno-unused-function",
        "-Wno-unknown-pragmas",
        "-fvisibility=hidden",
        "-fvisibility-inlines-hidden",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-I" + os.path.join(HERE, "include"),
        "-I" + HERE,
        "-I" + os.path.join(ROOT, "csrc", "cuda"),
        *("-isystem" + p for p in incs),
        "-include",
        os.path.join(HERE, "simt.h"),
        *FLAGS[variant],
    ]
    ldflags = [
        "-shared",
        *FLAGS[variant],
        *("-L" + d for d in libdirs),
        *("-Wl,-rpath," + d for d in libdirs),
        "-lc10",
        "-ltorch_cpu",
        "-ltorch",
        "-lboost_context",
        "-lpthread",
        "-Wl,--no-as-needed",
        ext,
    ]
    lib = os.path.join(out, "libcenterloss_simt.so")
    q = shlex.quote
    lines = [
        f"cflags = {' '.join(map(q, cflags))}",
        f"ldflags = {' '.join(map(q, ldflags))}",
        "rule rewrite",
        f"  command = {q(sys.executable)} {q(os.path.join(HERE, 'rewrite_launches.py'))} $in $out",
        "  description = rewrite launches $in",
        "rule cxx",
        "  command = g++ -MMD -MF $out.d $cflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = g++ $in",
        "rule cxxcu",
        f"  command = {_cu_compiler(variant)} -MMD -MF $out.d $cflags "
        f"{' '.join(map(q, CU_FLAGS.get(variant, [])))} -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = compile $in",
        "rule link",
        "  command = g++ $in -o $out $ldflags",
        "  description = link $out",
    ]
    objs = []
    cuda = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    cuda += EXTRA_CU.get(variant, [])
    for src in cuda:
        name = os.path.splitext(os.path.basename(src))[0]
        if name == "registration":  # binds the CUDA key; registration.cpp here binds ours
            continue
        cpp = os.path.join(gen, name + ".cpp")
        lines.append(
            f"build {q(cpp)}: rewrite {q(src)} | {q(os.path.join(HERE, 'rewrite_launches.py'))}"
        )
        objs.append((cpp, os.path.join(out, name + ".o")))
    for src in (
        "simt_runtime.cpp",
        "device.cpp",
        "registration.cpp",
        *EXTRA_SOURCES.get(variant, []),
    ):
        objs.append((os.path.join(HERE, src), os.path.join(out, os.path.splitext(src)[0] + ".o")))
    for src, obj in objs:
        lines.append(f"build {q(obj)}: {'cxxcu' if src.startswith(gen) else 'cxx'} {q(src)}")
    lines.append(f"build {q(lib)}: link {' '.join(q(o) for _, o in objs)} | {q(ext)}")
    with open(os.path.join(out, "build.ninja"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=sorted(FLAGS), default="cov")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    ap.add_argument("--out", help="build folder (default build/emu/VARIANT)")
    ap.add_argument(
        "--print-env",
        action="store_true",
        help="print the environment that loads the library, and exit",
    )
    args = ap.parse_args()
    out = os.path.abspath(args.out or os.path.join(ROOT, "build", "emu", args.variant))
    lib = os.path.join(out, "libcenterloss_simt.so")
    if args.print_env:
        env = {"CENTERLOSS_SIMT_LIB": lib}
        if args.variant == "asan":
            env["LD_PRELOAD"] = _sanitizer_preload()
            env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
            env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        if args.variant == "race":
            env["LD_PRELOAD"] = _tsan_preload()
            env["TSAN_OPTIONS"] = RACE_TSAN_OPTIONS
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
        return
    ninja = shutil.which("ninja") or os.path.join(os.path.dirname(sys.executable), "ninja")
    if not os.path.exists(ninja):
        _fail("ninja not found: pip install ninja (requirements-dev.txt has it)")
    lib = write_ninja(args.variant, out)
    subprocess.run([ninja, "-C", out, f"-j{args.jobs}"], check=True)
    print(lib)


if __name__ == "__main__":
    main()
