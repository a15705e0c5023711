#!/usr/bin/env python3
"""Memory-traffic model of one CenterLoss training step on the CUDA kernels, without a GPU.

Runs one step (CenterLoss forward in training mode with the alpha update, then backward)
on the SIMT emulator's `traffic` build (simt_emulator/traffic.cpp; built here if missing)
and prints, per kernel: launches, warp-level load and store requests, their 32-byte
sectors, the minimum sectors for the distinct bytes touched, the sector efficiency
(minimum / sectors), atomics and the most on one address, the bytes the sectors move and
a predicted H100 time; then the step's total against its floor.

    python scripts/kernel_traffic.py --shape 65536,512,100000 [--dtype bfloat16]
        [--deterministic] [--json]
    python scripts/kernel_traffic.py --grid     # bench/RESULTS.md's table, every shape

The model (docs/cuda_emulation.md, "Memory traffic"): predicted time of a launch =
launch overhead (--launch-us, 4 us) + sectors x 32 B / copy bandwidth (--bandwidth,
2.96e12 B/s, measured on an H100) + the most atomics on one address x --atomic-ns (same-
address atomics serialised at one L2 slice, 2 ns each). The step's floor: the bytes it must
move (x read, the batch's center rows read and written, the diff rows written and read
back by backward, the gradient written, the labels) at that bandwidth, plus one launch.
Every access of every warp is recorded: no sampling (B = 65,536 takes about a minute).
ATen ops on the device (autograd's fill of the loss gradient; at::sort on the
deterministic path) are listed with a launch each; their bytes are not modelled.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "build", "emu", "traffic", "libcenterloss_simt.so")
SECTOR = 32

DEFAULTS = {"bandwidth": 2.96e12, "launch_us": 4.0, "atomic_ns": 2.0}


def build(lib: str = LIB) -> str:
    """The traffic build of the emulator, built first if missing."""
    if not os.path.exists(lib):
        subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "simt_emulator", "build.py"),
                "--variant",
                "traffic",
            ],
            check=True,
            stdout=sys.stderr,
        )
    return lib


def load(lib: str = LIB):
    """Loads the traffic build (one OS thread runs the blocks: the model needs it)."""
    os.environ["SIMT_WORKERS"] = "1"
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from simt_emulator import loader

    loader.load(build(lib))
    if not loader.has_traffic():
        raise SystemExit(f"{loader._need()._name} is not the traffic build")
    return loader


def run_step(B: int, D: int, C: int, dtype: str, deterministic: bool, seed: int = 0):
    """One training step on the simt device; returns the launch records and the labels."""
    import torch

    loader = load()
    from centerloss_ext import CenterLoss

    torch.manual_seed(seed)
    crit = CenterLoss(C, D).to("simt").train()
    x = torch.randn(B, D).to(getattr(torch, dtype)).to("simt").requires_grad_()
    y = torch.randint(0, C, (B,)).to("simt")
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        loader.traffic_reset()
        t0 = time.perf_counter()
        crit(x, y).backward()
        seconds = time.perf_counter() - t0
        records = loader.traffic_report()
    finally:
        torch.use_deterministic_algorithms(prev)
    info = {
        "feature_bytes": x.element_size(),
        "center_bytes": crit.centers.element_size(),
        "acc_bytes": 8 if torch.float64 in (x.dtype, crit.centers.dtype) else 4,
        "classes_in_batch": int(torch.unique(y.cpu()).numel()),
        "slot_classes": int((torch.bincount(y.cpu(), minlength=C) >= 2).sum()),
        "label_bytes": y.element_size(),
        "emulated_seconds": seconds,
    }
    return records, info


def kernel_table(records: List[Dict[str, Any]], model: Dict[str, float]) -> List[Dict[str, Any]]:
    """Per kernel name (launch records summed), in the order of first launch."""
    rows: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
    for r in records:
        name = r["name"] if r["kind"] != "op" else f"{r['name']} (ATen op)"
        k = rows.setdefault(
            name,
            {
                "kernel": name,
                "kind": r["kind"],
                "launches": 0,
                "load_requests": 0,
                "store_requests": 0,
                "atomic_requests": 0,
                "load_sectors": 0,
                "store_sectors": 0,
                "atomic_sectors": 0,
                "min_sectors": 0,
                "atomics": 0,
                "max_atomics_per_address": 0,
                "predicted_us": 0.0,
            },
        )
        sectors = r["load_sectors"] + r["store_sectors"] + r["atomic_sectors"]
        k["launches"] += 1
        for kind in ("load", "store", "atomic"):
            k[f"{kind}_requests"] += r[f"{kind}_requests"]
            k[f"{kind}_sectors"] += r[f"{kind}_sectors"]
            k["min_sectors"] += math.ceil(r[f"{kind}_bytes"] / SECTOR)
        k["atomics"] += r["atomic_accesses"]
        k["max_atomics_per_address"] = max(
            k["max_atomics_per_address"], r["max_atomics_per_address"]
        )
        k["predicted_us"] += (
            model["launch_us"]
            + sectors * SECTOR / model["bandwidth"] * 1e6
            + r["max_atomics_per_address"] * model["atomic_ns"] / 1e3
        )
    out = []
    for k in rows.values():
        sectors = k["load_sectors"] + k["store_sectors"] + k["atomic_sectors"]
        k["bytes"] = sectors * SECTOR
        k["sector_efficiency"] = round(k["min_sectors"] / sectors, 4) if sectors else None
        k["predicted_us"] = round(k["predicted_us"], 3)
        out.append(k)
    return out


def step_floor_bytes(B: int, D: int, info: Dict[str, Any]) -> int:
    """x read, the batch's center rows read and written, diff rows written and read back,
    the gradient written, the labels read."""
    return (
        B * D * info["feature_bytes"]
        + 2 * info["classes_in_batch"] * D * info["center_bytes"]
        + 2 * B * D * info["acc_bytes"]
        + B * D * info["feature_bytes"]
        + B * info["label_bytes"]
    )


def summarise(B: int, D: int, kernels, info, model) -> Dict[str, Any]:
    moved = sum(k["bytes"] for k in kernels)
    floor_bytes = step_floor_bytes(B, D, info)
    ours = [k for k in kernels if k["kind"] != "op"]
    memory_us = moved / model["bandwidth"] * 1e6
    floor_memory_us = floor_bytes / model["bandwidth"] * 1e6
    return {
        "launches": sum(k["launches"] for k in kernels),
        "our_launches": sum(k["launches"] for k in ours),  # kernels + memsets of the op
        "aten_launches": sum(k["launches"] for k in kernels if k["kind"] == "op"),
        "bytes": moved,
        "floor_bytes": floor_bytes,
        "classes_in_batch": info["classes_in_batch"],
        "memory_us": round(memory_us, 3),
        "floor_memory_us": round(floor_memory_us, 3),
        "memory_ratio": round(memory_us / floor_memory_us, 3),
        "predicted_us": round(sum(k["predicted_us"] for k in kernels), 3),
        "floor_us": round(floor_memory_us + model["launch_us"], 3),
        "sampling": "none: every access of every warp recorded",
        # the atomic update's class-sum slots (classes of 2+ rows): no launch of their own;
        # their atomic adds (measured: the update kernel's atomic sectors) and their zeroing
        # by the forward kernel and read-back by the last row (slots x D x acc bytes each)
        "slot_classes": info["slot_classes"],
        "slot_atomic_bytes": sum(
            k["atomic_sectors"] * SECTOR for k in kernels if k["kernel"].startswith("alpha_update")
        ),
        "slot_zero_and_readback_bytes": 0
        if not any(k["kernel"].startswith("alpha_update_atomic") for k in kernels)
        else 2 * info["slot_classes"] * D * info["acc_bytes"],
        "emulated_seconds": round(info["emulated_seconds"], 2),
        "model": dict(model),
    }


def analyse(B, D, C, dtype="float32", deterministic=False, model=None) -> Dict[str, Any]:
    model = dict(DEFAULTS, **(model or {}))
    records, info = run_step(B, D, C, dtype, deterministic)
    kernels = kernel_table(records, model)
    step = summarise(B, D, kernels, info, model)
    step.update(shape=[B, D, C], dtype=dtype, deterministic=deterministic)
    return {"kernels": kernels, "step": step}


def _fmt_table(res: Dict[str, Any]) -> str:
    head = (
        f"{'kernel':44} {'launch':>6} {'ld req':>9} {'st req':>9} {'ld sect':>10} "
        f"{'st sect':>10} {'min sect':>10} {'eff':>6} {'atomics':>9} {'max/addr':>8} "
        f"{'MB':>9} {'pred us':>9}"
    )
    lines = [head, "-" * len(head)]
    for k in res["kernels"]:
        eff = "-" if k["sector_efficiency"] is None else f"{100 * k['sector_efficiency']:.0f}%"
        lines.append(
            f"{k['kernel'][:44]:44} {k['launches']:>6} {k['load_requests']:>9} "
            f"{k['store_requests']:>9} {k['load_sectors']:>10} {k['store_sectors']:>10} "
            f"{k['min_sectors']:>10} {eff:>6} {k['atomics']:>9} "
            f"{k['max_atomics_per_address']:>8} {k['bytes'] / 1e6:>9.3f} {k['predicted_us']:>9.2f}"
        )
    s = res["step"]
    m = s["model"]
    lines += [
        "",
        f"step: {s['launches']} launches ({s['our_launches']} of the op's, "
        f"{s['aten_launches']} ATen ops, bytes not modelled), "
        f"{s['bytes'] / 1e6:.3f} MB moved vs {s['floor_bytes'] / 1e6:.3f} MB it must move "
        f"({s['classes_in_batch']} classes in the batch): memory {s['memory_us']:.2f} us vs "
        f"{s['floor_memory_us']:.2f} us ({s['memory_ratio']:.2f}x)",
        f"predicted {s['predicted_us']:.2f} us vs floor {s['floor_us']:.2f} us "
        f"(H100 model: {m['bandwidth'] / 1e12:.2f} TB/s, {m['launch_us']:g} us per launch, "
        f"{m['atomic_ns']:g} ns per same-address atomic); sampling: {s['sampling']}; "
        f"emulated in {s['emulated_seconds']} s",
    ]
    return "\n".join(lines)


# The benchmark's shapes (bench/compare.py), each in float32 and bfloat16, on the default
# and the deterministic path: the table of bench/RESULTS.md and docs/cuda_emulation.md.
GRID_SHAPES = [
    (128, 2, 10),
    (512, 512, 10_000),
    (1024, 512, 100_000),
    (65_536, 128, 100_000),
    (65_536, 512, 100_000),
]


def grid(model=None) -> List[Dict[str, Any]]:
    """analyse() at every shape, dtype and path of the benchmark grid."""
    return [
        analyse(B, D, C, dtype, det, model)
        for B, D, C in GRID_SHAPES
        for dtype in ("float32", "bfloat16")
        for det in (False, True)
    ]


def _short(kernel: str) -> str:
    name = kernel.split("<")[0]
    return name[: -len("_kernel")] if name.endswith("_kernel") else name


def markdown(results: List[Dict[str, Any]]) -> str:
    """The grid as a markdown table: one row per shape, dtype and path."""
    lines = [
        "| B / D / C | dtype | path | launches | MB moved | MB floor | memory vs floor "
        "| predicted µs | floor µs | sector efficiency per kernel (<80 % in bold) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        s = res["step"]
        B, D, C = s["shape"]
        effs = []
        for k in res["kernels"]:
            if k["kind"] == "op" or k["kernel"] == "cudaMemsetAsync" or not k["bytes"]:
                continue
            e = k["sector_efficiency"]
            effs.append(
                f"{_short(k['kernel'])} {100 * e:.0f}%"
                if e >= 0.8
                else f"{_short(k['kernel'])} **{100 * e:.0f}%** ({k['bytes'] / 1e6:.2f} MB)"
            )
        lines.append(
            f"| {B:,} / {D:,} / {C:,} | {s['dtype']} | "
            f"{'sorted' if s['deterministic'] else 'default'} | "
            f"{s['our_launches']}+{s['aten_launches']} | {s['bytes'] / 1e6:.2f} | "
            f"{s['floor_bytes'] / 1e6:.2f} | {s['memory_ratio']:.2f}× | "
            f"{s['predicted_us']:.1f} | {s['floor_us']:.1f} | {', '.join(effs)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", help="B,D,C")
    ap.add_argument(
        "--grid",
        action="store_true",
        help="every shape, dtype and path of the benchmark (about 4 min): a markdown table",
    )
    ap.add_argument("--dtype", default="float32", help="features' dtype (float32, bfloat16...)")
    ap.add_argument("--deterministic", action="store_true", help="the sorted center paths")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bandwidth", type=float, default=DEFAULTS["bandwidth"], help="bytes/s")
    ap.add_argument("--launch-us", type=float, default=DEFAULTS["launch_us"])
    ap.add_argument("--atomic-ns", type=float, default=DEFAULTS["atomic_ns"])
    args = ap.parse_args(argv)
    model = {"bandwidth": args.bandwidth, "launch_us": args.launch_us, "atomic_ns": args.atomic_ns}
    if args.grid:
        results = grid(model)
        print(json.dumps(results, indent=1) if args.json else markdown(results))
        return
    if not args.shape:
        ap.error("--shape B,D,C (or --grid)")
    try:
        B, D, C = (int(v) for v in args.shape.replace("x", ",").split(","))
    except ValueError:
        ap.error("--shape: B,D,C (three integers)")
    res = analyse(B, D, C, args.dtype, args.deterministic, model)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        path = "deterministic" if args.deterministic else "default"
        print(f"B={B:,} D={D:,} C={C:,} {args.dtype}, {path} path")
        print(_fmt_table(res))


if __name__ == "__main__":
    main()
    # The emulated device's backward runs on a torch autograd worker thread, which may
    # still be dropping the step's graph (a Python object) while the interpreter
    # finalises: it then dies taking the GIL, and the process aborts ("terminate called
    # without an active exception") after a complete, correct output. Nothing is left to
    # clean up here, so leave without finalising.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
