"""Is centerloss_ext worth installing? One full training step (forward, backward, center
update) of each center-loss implementation, on the same inputs, in one run.

    python bench/compare.py --quick                 # a minute or two on a laptop CPU
    python bench/compare.py --device cuda           # the full grid on the GPU
    python bench/compare.py --shapes 512x512x10000,face100k --dtype bfloat16
    python bench/compare.py --render                # bench/RESULTS.md from bench/results/*.json

Variants (bench/variants.py): centerloss_ext (the compiled op) eager and under
torch.compile, centerloss_ext.reference (plain PyTorch) eager and compiled, and the
popular distance-matrix formulation (bench/distance_matrix.py). Each is checked against
the float64 reference before it is timed (FAILED if wrong), then timed (median and spread
of many runs), its loss's own cost computed (the step minus the same step with
features.sum() as the loss), its peak memory measured and, on the GPU, its CUDA-graph
replay timed and its time compared with the floor (bench/floor.py).

Writes under --out: compare.json (every figure, device, versions), compare.md (the
tables in Markdown, for bench/RESULTS.md) and compare.png (time vs. batch size).
Exits with 1 when a variant gave a wrong answer (FAILED) or crashed; OOM and "too slow"
are reported, not errors.

--render measures nothing. Given a saved compare.json it reprints that run's tables and
rewrites its compare.md and compare.png under --out. Given a Markdown page, or nothing
(bench/RESULTS.md), it rewrites every block of the page between
``<!-- rendered by bench/compare.py --render from RUN.json (KIND): do not edit -->`` and
``<!-- end rendered -->`` from the JSON it names (found in --results, by default results/
beside the page; KIND: run, summary or tables) and leaves the rest of the page as it is;
--check writes nothing and exits with 1 when the page is not what rendering gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import difflib
import itertools
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import List, Optional

# The optional dependencies (setup.py's "bench" group), checked before any work is done.
NEEDS = ("tqdm", "matplotlib")
if __name__ == "__main__":
    _missing = [name for name in NEEDS if find_spec(name) is None]
    if _missing:
        print(
            f'bench/compare.py: {", ".join(_missing)} missing, from the optional "bench" '
            'group: pip install ".[bench]" in the centerloss_ext source folder, or '
            f"pip install {' '.join(_missing)}",
            file=sys.stderr,
        )
        sys.exit(2)

if __package__ in (None, ""):  # run as a script
    # `bench` from this repository, but centerloss_ext from the installed package when
    # there is one: the repository root goes last on the path, not first, where the
    # clone's unbuilt centerloss_ext/ would shadow the installed copy.
    _root = str(Path(__file__).resolve().parent.parent)
    sys.path[0] = _root  # not bench/ (timing.py, ...)
    import bench  # noqa: E402,F401

    sys.path[0:1] = []
    sys.path.append(_root)

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench import checks, report  # noqa: E402
from bench.floor import DeviceFloor, measure_floor, step_bytes  # noqa: E402
from bench.runner import Result, Settings, describe_failure, run_variant  # noqa: E402
from bench.shapes import QUICK, Shape, parse_shapes  # noqa: E402
from bench.variants import BASELINE, VARIANTS, Problem, Variant  # noqa: E402
from centerloss_ext._machine import cpu_name  # noqa: E402

PAGE_NAME = "bench/RESULTS.md"
PAGE = Path(__file__).resolve().parent / "RESULTS.md"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: cuda when available (default)",
    )
    p.add_argument(
        "--shapes",
        default=None,
        help="comma-separated groups (mnist, face10k, face100k, bandwidth; all) or "
        "BxDxC sizes; default: all (bandwidth on the GPU only)",
    )
    p.add_argument(
        "--quick", action="store_true", help="the issue's sizes only, short timings (CI)"
    )
    p.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="features' dtype (centers stay float32)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for compare.json, compare.md and compare.png (default "
        "out/bench); with --render PAGE: the file to write (default: the "
        "page itself)",
    )
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of: " + ", ".join(v.name for v in VARIANTS),
    )
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled variants")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    p.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds of timed runs per variant (default 1, quick 0.3)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds one variant may take at most (default 60, quick 20)",
    )
    p.add_argument(
        "--render",
        nargs="?",
        const=str(PAGE),
        default=None,
        metavar="JSON|PAGE",
        help="measure nothing. JSON (a saved compare.json): print its tables and "
        "write its compare.md and compare.png under --out. PAGE (a .md file; "
        f"with no argument {PAGE_NAME}): render its marked blocks from the "
        "JSON files they name, leaving the prose outside them as it is",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --render PAGE: the folder of the JSON files its markers name "
        "(default: results/ beside the page)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="with --render PAGE: write nothing; exit 1 when the page differs "
        "from what rendering gives",
    )
    p.add_argument(
        "--batches", type=int, default=4, help="random batches the timed steps rotate through"
    )
    args = p.parse_args(argv)
    page_mode = args.render is not None and Path(args.render).suffix == ".md"
    if (args.results or args.check) and not page_mode:
        p.error("--results and --check go with --render PAGE (a .md file, or nothing)")
    return args


def pick_variants(args: argparse.Namespace) -> List[Variant]:
    chosen = VARIANTS
    if args.variants:
        names = [n.strip() for n in args.variants.split(",")]
        unknown = [n for n in names if n not in {v.name for v in VARIANTS}]
        if unknown:
            sys.exit(f"--variants: unknown {unknown}; choose from {[v.name for v in VARIANTS]}")
        chosen = [v for v in VARIANTS if v.name in names]
    if args.no_compile:
        chosen = [v for v in chosen if not v.compiled]
    return chosen


def _git_commit() -> Optional[str]:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str) -> dict:
    from centerloss_ext.__main__ import build_facts

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "git_commit": _git_commit(),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "centerloss_ext": build_facts(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def _load_line(load: Optional[tuple], when: str) -> str:
    if not load:
        return f"load average {when}: unknown"
    line = (
        f"load average {when}: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min) "
        f"on {os.cpu_count()} CPUs"
    )
    if when.startswith("before") and load[0] > 0.5:
        line += " -- other work is running: CPU timings will be noisy"
    return line


def run_shape(
    shape: Shape,
    variants: List[Variant],
    device: str,
    dtype: torch.dtype,
    settings: Settings,
    num_batches: int,
    floor: Optional[DeviceFloor],
    progress: tqdm,
) -> report.ShapeReport:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        problem = Problem.make(shape, device, dtype, num_batches)
        want = checks.expected(problem)
    except Exception as e:  # noqa: BLE001 - inputs too big for this device: say so, go on
        status, note = describe_failure(e)
        failed = [
            Result(v.name, status, f"making the inputs: {note}") for v in [BASELINE, *variants]
        ]
        progress.update(len(failed))
        return report.ShapeReport(shape, failed[0], failed[1:], 0, 0)
    results = []
    for variant in [BASELINE, *variants]:
        progress.set_postfix_str(f"{shape.label}: {variant.name}")
        results.append(
            run_variant(variant, problem, None if variant is BASELINE else want, settings)
        )
        progress.update(1)
    classes = problem.classes_in_batch()
    nbytes = step_bytes(shape.B, shape.D, classes, dtype.itemsize, problem.centers0.element_size())
    rep = report.ShapeReport(
        shape,
        results[0],
        results[1:],
        classes,
        nbytes,
        floor.seconds(nbytes) if floor else None,
        load,
    )
    rep.compute()
    return rep


def write_outputs(meta: dict, reports: List[report.ShapeReport], out: Path) -> None:
    """The stdout tables, compare.md and compare.png of a run."""
    on_cuda = meta["machine"]["device"] == "cuda"
    print(
        "\nMedian time of one training step (forward + backward + center update); "
        "loss cost = step − baseline;\nspeedup = the variant's time / centerloss_ext's "
        "(how many times faster centerloss_ext is).\n"
    )
    for rep in reports:
        print(report.table(rep, on_cuda) + "\n")
    (out / "compare.md").write_text(report.markdown(reports, on_cuda))
    where = meta["machine"].get("gpu") or meta["machine"]["cpu"]
    report.plot(
        out / "compare.png",
        reports,
        f"{meta['machine']['device']}: {where}, features {meta['dtype']}",
    )


def exit_code(reports: List[report.ShapeReport]) -> int:
    """1 when a variant gave a wrong answer or crashed."""
    # OOM, too slow and skipped are answers; a wrong result or a crash is not.
    bad = [
        f"{rep.shape.label} {r.variant}: {r.status}"
        for rep in reports
        for r in [rep.baseline, *rep.results]
        if r.status in ("FAILED", "error")
    ]
    if bad:
        print("FAILED or broken variants:\n  " + "\n  ".join(bad))
        return 1
    return 0


def render_page(page: Path, results: Optional[Path], out: Optional[Path], check: bool) -> int:
    """--render PAGE: the page's marked blocks from the JSON they name, nothing measured."""
    results = results or page.parent / "results"
    text = page.read_text()
    try:
        new, used = report.render_page(text, results, page.parent)
    except report.PageError as e:
        print(f"{page}: {e}", file=sys.stderr)
        return 2
    unused = sorted(p.name for p in results.glob("*.json") if p.name not in used)
    if unused:
        print(
            f"{page}: no block renders {', '.join(unused)} (in {results}); add "
            "<!-- rendered by bench/compare.py --render from NAME.json (tables): do not "
            "edit --> ... <!-- end rendered --> where its tables belong",
            file=sys.stderr,
        )
    if check:
        if new == text:
            print(f"{page}: up to date with {', '.join(used) or 'no JSON'}")
            return 0
        diff = difflib.unified_diff(
            text.splitlines(), new.splitlines(), str(page), "rendered", lineterm=""
        )
        print("\n".join(itertools.islice(diff, 80)))
        print(
            f"{page} differs from its rendering: python bench/compare.py --render "
            f"{page} rewrites it (edit the prose outside the markers, or the JSON)"
        )
        return 1
    target = out or page
    target.write_text(new)
    print(f"wrote {target}: blocks rendered from {', '.join(used) or 'no JSON'}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.render is not None and Path(args.render).suffix == ".md":
        return render_page(Path(args.render), args.results, args.out, args.check)
    args.out = args.out or Path("out/bench")
    if args.render is not None:
        meta, reports = report.read_json(Path(args.render))
        args.out.mkdir(parents=True, exist_ok=True)
        write_outputs(meta, reports, args.out)
        return exit_code(reports)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batches < 1:
        sys.exit("--batches must be at least 1")
    dtype = DTYPES[args.dtype]
    if args.shapes:
        shapes = parse_shapes(args.shapes, device)
    else:
        shapes = QUICK[device] if args.quick else parse_shapes("all", device)
    variants = pick_variants(args)
    settings = Settings(
        min_run_time=args.min_run_time or (0.3 if args.quick else 1.0),
        budget=args.budget or (20.0 if args.quick else 60.0),
        cuda_graphs=not args.no_cuda_graphs,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": machine_info(device),
        "dtype": args.dtype,
        "quick": args.quick,
        "settings": dataclasses.asdict(settings),
        "batches_rotated": args.batches,
    }

    started = time.perf_counter()
    print(
        f"centerloss_ext benchmark on {device}"
        + (
            f" ({meta['machine']['gpu']})"
            if device == "cuda"
            else f" ({meta['machine']['cpu']}, {torch.get_num_threads()} torch threads)"
        )
        + f", features {args.dtype}, centers float32; torch {torch.__version__}"
    )
    print(_load_line(meta["machine"]["load_average_start"], "before the run"))
    floor = None
    if device == "cuda":
        floor = measure_floor(device, copy_bytes=1 << 30)
        meta["floor"] = {
            "copy_bandwidth_bytes_per_s": floor.bandwidth,
            "empty_launch_s": floor.launch,
            "copy_bytes": floor.copy_bytes,
        }
        print(
            f"floor: device-to-device copy {floor.bandwidth / 1e9:.0f} GB/s "
            f"(read + write), one-element kernel launch {report.fmt_time(floor.launch)}"
        )

    reports = []
    with tqdm(
        total=len(shapes) * (len(variants) + 1),
        desc="benchmark",
        unit="variant",
        file=sys.stderr,
        disable=None,
    ) as progress:
        for shape in shapes:
            reports.append(
                run_shape(shape, variants, device, dtype, settings, args.batches, floor, progress)
            )

    meta["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["wall_s"] = time.perf_counter() - started
    report.write_json(args.out / "compare.json", meta, reports)
    write_outputs(meta, reports, args.out)
    print(_load_line(meta["load_average_end"], "after the run (this run included)"))
    print(
        f"wrote compare.json, compare.md and compare.png under {args.out} ({meta['wall_s']:.0f} s)"
    )
    return exit_code(reports)


if __name__ == "__main__":
    sys.exit(main())
