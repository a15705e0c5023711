#!/usr/bin/env python3
"""Builds the SIMT-emulated CUDA kernels: csrc/cuda/*.cu, unchanged but for their
<<<...>>> launches (rewrite_launches.py), compiled by g++ with the emulator (simt.h,
simt_runtime.cpp), the emulated device (device.cpp) and its op registration into one
library that simt_emulator.loader loads next to the real extension.

    python simt_emulator/build.py [--variant {cov,asan,release}] [--jobs N]

Variants: `cov` (-O1, gcov line coverage: the tests' build), `asan` (AddressSanitizer +
UndefinedBehaviorSanitizer; load with the preload that --print-env shows), `release` (-O2).
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
}


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


def _sanitizer_preload() -> str:
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        out = subprocess.run(
            ["g++", f"-print-file-name={name}"], capture_output=True, text=True
        ).stdout.strip()
        libs.append(os.path.realpath(out))
    return " ".join(libs)


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
        "rule link",
        "  command = g++ $in -o $out $ldflags",
        "  description = link $out",
    ]
    objs = []
    cuda = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    for src in cuda:
        name = os.path.splitext(os.path.basename(src))[0]
        if name == "registration":  # binds the CUDA key; registration.cpp here binds ours
            continue
        cpp = os.path.join(gen, name + ".cpp")
        lines.append(
            f"build {q(cpp)}: rewrite {q(src)} | {q(os.path.join(HERE, 'rewrite_launches.py'))}"
        )
        objs.append((cpp, os.path.join(out, name + ".o")))
    for src in ("simt_runtime.cpp", "device.cpp", "registration.cpp"):
        objs.append((os.path.join(HERE, src), os.path.join(out, os.path.splitext(src)[0] + ".o")))
    for src, obj in objs:
        lines.append(f"build {q(obj)}: cxx {q(src)}")
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
