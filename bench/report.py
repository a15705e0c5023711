"""What a run produces: the stdout table, the JSON of every figure, and the plot; and
bench/RESULTS.md's measured blocks, rendered from the committed JSON (:func:`render_page`).

Derived figures, per shape:
- loss cost = step time − the baseline step's (``features.sum()`` as the loss): what the
  loss itself costs beyond the fixed price of ``backward()``;
- speedup = the variant's time / centerloss_ext's time (step, and loss cost);
- × floor = step time / the floor of :mod:`bench.floor` (GPU).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .runner import Result
from .shapes import Shape

REFERENCE_VARIANT = "centerloss_ext"  # speedups are relative to it


@dataclass
class ShapeReport:
    shape: Shape
    baseline: Result
    results: List[Result]
    classes_in_batch: int
    step_bytes: int
    floor_s: Optional[float] = None
    load_average: Optional[tuple] = None  # 1, 5, 15 min, when the shape started
    derived: Dict[str, dict] = field(default_factory=dict)

    def compute(self) -> None:
        """Fills ``derived``: loss costs, speedups and multiples of the floor."""
        base = _median(self.baseline, "step")
        base_graph = _median(self.baseline, "graph")
        ext = next((r for r in self.results if r.variant == REFERENCE_VARIANT), None)
        for r in self.results:
            d = {
                "loss_cost_s": _minus(_median(r, "step"), base),
                "graph_loss_cost_s": _minus(_median(r, "graph"), base_graph),
            }
            if self.floor_s:
                d["x_floor"] = _ratio(_median(r, "step"), self.floor_s)
                d["loss_cost_x_floor"] = _ratio(d["loss_cost_s"], self.floor_s)
                d["graph_x_floor"] = _ratio(_median(r, "graph"), self.floor_s)
            self.derived[r.variant] = d
        for r in self.results:
            d = self.derived[r.variant]
            ed = self.derived.get(REFERENCE_VARIANT, {})
            d["speedup_step"] = _ratio(_median(r, "step"), _median(ext, "step"))
            d["speedup_loss_cost"] = _ratio(d["loss_cost_s"], ed.get("loss_cost_s"))

    def as_dict(self) -> dict:
        s = self.shape
        return {
            "B": s.B,
            "D": s.D,
            "C": s.C,
            "group": s.group,
            "classes_in_batch": self.classes_in_batch,
            "floor_bytes": self.step_bytes,
            "floor_s": self.floor_s,
            "load_average": self.load_average,
            "baseline": self.baseline.as_dict(),
            "variants": [{**r.as_dict(), **self.derived.get(r.variant, {})} for r in self.results],
        }


def _median(r: Optional[Result], which: str) -> Optional[float]:
    stats = None if r is None or r.status != "ok" else getattr(r, which)
    return stats.median if stats else None


def _minus(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """a / b; None when either is missing or not positive (a loss cost lost in noise)."""
    return None if a is None or b is None or a <= 0 or b <= 0 else a / b


def fmt_time(t: Optional[float]) -> str:
    if t is None:
        return "-"
    a = abs(t)
    if a >= 1:
        return f"{t:.2f} s"
    if a >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} µs"


def _fmt_x(v: Optional[float]) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.1f}×" if v >= 10 else f"{v:.2f}×"


def _fmt_mib(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f}" if n >= 2**20 else f"{n / 2**20:.3f}"


def _head(report: ShapeReport, on_cuda: bool) -> List[str]:
    b = report.baseline
    head = [
        f"baseline step (features.sum() as the loss): {fmt_time(_median(b, 'step'))}"
        + (f", CUDA graph {fmt_time(_median(b, 'graph'))}" if on_cuda else "")
        + ("" if b.status == "ok" else f" [{b.status}: {b.note}]")
    ]
    if report.floor_s:
        head.append(
            f"floor: {report.step_bytes / 1e6:.1f} MB at the copy bandwidth "
            f"+ one launch = {fmt_time(report.floor_s)}"
        )
    return head


def _columns(on_cuda: bool) -> List[str]:
    cols = ["variant", "step", "±IQR/2", "loss cost", "peak MiB", "speedup step", "speedup loss"]
    if on_cuda:
        cols[4:4] = ["CUDA graph", "× floor"]
    return cols


def _rows(report: ShapeReport, on_cuda: bool) -> List[List[str]]:
    """One row per variant; a variant that was not timed gets [name, "status: note"]."""
    rows = []
    for r in report.results:
        d = report.derived.get(r.variant, {})
        if r.status != "ok":
            rows.append([r.variant, f"{r.status}: {r.note}"])
            continue
        row = [
            r.variant,
            fmt_time(r.step.median),
            fmt_time(r.step.iqr / 2),
            fmt_time(d.get("loss_cost_s")),
            _fmt_mib(r.peak_bytes),
            _fmt_x(d.get("speedup_step")),
            _fmt_x(d.get("speedup_loss_cost")),
        ]
        if on_cuda:
            graph = fmt_time(r.graph.median) if r.graph else ("n/a" if r.graph_note else "-")
            row[4:4] = [graph, _fmt_x(d.get("x_floor"))]
        rows.append(row)
    return rows


def _notes(report: ShapeReport) -> List[str]:
    return [
        f"CUDA graph of {r.variant}: {r.graph_note}"
        for r in report.results
        if r.status == "ok" and r.graph_note
    ]


def table(report: ShapeReport, on_cuda: bool) -> str:
    """The block of the stdout table for one shape."""
    cols, rows = _columns(on_cuda), _rows(report, on_cuda)
    widths = [
        max(len(c), *(len(row[i]) for row in rows if len(row) == len(cols)))
        for i, c in enumerate(cols)
    ]

    def line(cells: List[str]) -> str:
        if len(cells) != len(cols):  # a status line: FAILED, OOM, ...
            return "  " + cells[0].ljust(widths[0]) + "  " + cells[1]
        return "  " + "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(cells, widths))
        )

    title = f"{report.shape.label}  ({report.classes_in_batch:,} classes in the batch)"
    return "\n".join(
        [
            title,
            *("  " + h for h in _head(report, on_cuda)),
            line(cols),
            *map(line, rows),
            *("  " + n for n in _notes(report)),
        ]
    )


def markdown(reports: List[ShapeReport], on_cuda: bool) -> str:
    """The same tables in Markdown, for bench/RESULTS.md."""
    cols = _columns(on_cuda)
    out = []
    for rep in reports:
        out.append(
            f"**{rep.shape.label}** ({rep.classes_in_batch:,} classes in the batch); "
            + "; ".join(_head(rep, on_cuda))
            + "\n"
        )
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|")
        for row in _rows(rep, on_cuda):
            row = row + [""] * (len(cols) - len(row))
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        notes = [f"- {n}" for n in _notes(rep)]
        out += ["", *notes, ""] if notes else [""]
    return "\n".join(out)


def summary(reports: List[ShapeReport]) -> str:
    """The headline: one row per shape, centerloss_ext's step time and how many times faster
    it is than each other variant, on the step and (in parentheses) on the loss cost."""
    names: List[str] = []
    for rep in reports:
        names += [
            r.variant
            for r in rep.results
            if r.variant != REFERENCE_VARIANT and r.variant not in names
        ]
    cols = ["shape", f"{REFERENCE_VARIANT} step", *(f"vs {n}" for n in names)]
    out = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|",
    ]
    for rep in reports:
        by_name = {r.variant: r for r in rep.results}
        ext = by_name.get(REFERENCE_VARIANT)
        if ext is None:
            row = [rep.shape.label, "-"]
        else:
            row = [rep.shape.label, fmt_time(ext.step.median) if ext.status == "ok" else ext.status]
        for name in names:
            r, d = by_name.get(name), rep.derived.get(name, {})
            if r is None:
                row.append("-")
            elif r.status != "ok":
                row.append(r.status)
            else:
                row.append(
                    f"{_fmt_x(d.get('speedup_step'))} ({_fmt_x(d.get('speedup_loss_cost'))})"
                )
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def _utc(iso: str) -> str:
    try:
        when = datetime.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso)
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return f"{when:%Y-%m-%d %H:%M} UTC"


def run_facts(meta: dict, reports: List[ShapeReport], link: str) -> str:
    """What a run's JSON says about when, where and how it ran, as a Markdown list;
    ``link``: the path of the JSON as the page links it."""
    m = meta["machine"]
    run = f"- Run: {_utc(m.get('date'))}"
    if meta.get("wall_s") is not None:
        run += f", {meta['wall_s']:.0f} s in all"
    run += f"; `{m.get('command')}`"
    if m.get("git_commit"):
        run += f" at commit {m['git_commit']}"
    lines = [run + f"; every figure: [{link.rsplit('/', 1)[-1]}]({link})."]

    machine = (
        f"- Machine: {m.get('cpu')}, {m.get('cpu_count')} CPUs, "
        f"{m.get('torch_threads')} torch threads"
    )
    if m.get("gpu"):
        machine += f"; {m['gpu']}"
        if m.get("gpu_memory_bytes"):
            machine += f" ({m['gpu_memory_bytes'] / 2**30:.0f} GiB)"
        machine += f", CUDA {m.get('cuda')}, TF32 matmul " + (
            "on" if m.get("matmul_allow_tf32") else "off"
        )
    machine += f"; torch {m.get('torch')}, Python {m.get('python')}"
    ext = m.get("centerloss_ext") or {}
    if ext.get("centerloss_ext"):
        machine += f"; centerloss_ext {ext['centerloss_ext']}, CUDA " + (
            "compiled in" if ext.get("CUDA compiled in") else "not compiled in"
        )
    lines.append(machine + ".")

    start, end = m.get("load_average_start"), meta.get("load_average_end")
    during = [r.load_average[0] for r in reports if r.load_average]
    if start or during or end:
        parts = []
        if start:
            parts.append(f"{start[0]:.2f} at the start")
        if during:
            lo, hi = f"{min(during):.2f}", f"{max(during):.2f}"
            parts.append(f"{lo if lo == hi else lo + '–' + hi} as the shapes started")
        if end:
            parts.append(f"{end[0]:.2f} at the end")
        lines.append(f"- Load average (1 min): {', '.join(parts)}.")

    st = meta.get("settings") or {}
    timing = (
        f"- Timing: features {meta.get('dtype')}, centers float32; "
        f"{meta.get('batches_rotated')} random batches in turn; per variant "
        f"{st.get('warmup')} warm-up steps, then at least {st.get('min_runs')} timed "
        f"blocks and {st.get('min_run_time'):g} s; a variant that would take over "
        f"{st.get('budget'):g} s is reported too slow"
    )
    if m.get("device") == "cuda":
        timing += "; CUDA graphs " + ("on" if st.get("cuda_graphs") else "off")
    lines.append(timing + (" (`--quick`)." if meta.get("quick") else "."))

    floor = meta.get("floor")
    if floor:
        lines.append(
            f"- Floor: device-to-device copy "
            f"{floor['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s (read + write), "
            f"one-element kernel launch {fmt_time(floor['empty_launch_s'])}."
        )
    return (
        "\n".join(
            textwrap.fill(
                line, 90, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
            )
            for line in lines
        )
        + "\n"
    )


# bench/RESULTS.md: what lies between these markers is rendered from the JSON they name.
BEGIN = re.compile(
    r"<!-- rendered by bench/compare\.py --render from (?P<json>[^\s()]+) "
    r"\((?P<kind>[^)]*)\): do not edit -->"
)
END = "<!-- end rendered -->"
KINDS = ("run", "summary", "tables")


class PageError(ValueError):
    """A page whose markers cannot be rendered (unknown kind, no end, missing JSON)."""


def render_block(kind: str, meta: dict, reports: List[ShapeReport], link: str) -> str:
    if kind == "run":
        return run_facts(meta, reports, link)
    if kind == "summary":
        return summary(reports)
    if kind == "tables":
        return markdown(reports, meta["machine"]["device"] == "cuda")
    raise PageError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")


def render_page(text: str, results: Path, page_dir: Path) -> Tuple[str, List[str]]:
    """``text`` with every marked block rendered anew from the JSON file it names, in the
    folder ``results`` (linked relative to ``page_dir``); everything outside the markers is
    kept as it is. Returns (text, the JSON files used). Rendering twice changes nothing."""
    out, used, pos = [], [], 0
    runs: Dict[str, Tuple[dict, List[ShapeReport]]] = {}
    for begin in BEGIN.finditer(text):
        line = text.count("\n", 0, begin.start()) + 1
        end = text.find(END, begin.end())
        nested = BEGIN.search(text, begin.end())
        if end < 0 or (nested and nested.start() < end):
            raise PageError(f"line {line}: {begin.group(0)} has no {END} after it")
        name, kind = begin.group("json"), begin.group("kind")
        if name not in runs:
            path = results / name
            if not path.is_file():
                raise PageError(f"line {line}: {path} not found")
            runs[name] = read_json(path)
            used.append(name)
        link = Path(os.path.relpath(results / name, page_dir)).as_posix()
        try:
            block = render_block(kind, *runs[name], link)
        except PageError as e:
            raise PageError(f"line {line}: {e}") from None
        out += [text[pos : begin.end()], "\n\n", block.strip("\n"), "\n\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out), used


def write_json(path: Path, meta: dict, reports: List[ShapeReport]) -> None:
    path.write_text(
        json.dumps({**meta, "shapes": [r.as_dict() for r in reports]}, indent=1, default=str) + "\n"
    )


def read_json(path: Path) -> Tuple[dict, List[ShapeReport]]:
    """A run written by :func:`write_json`: (meta, reports), derived figures recomputed."""
    data = json.loads(Path(path).read_text())
    reports = []
    for s in data.pop("shapes"):
        rep = ShapeReport(
            Shape(s["B"], s["D"], s["C"], s["group"]),
            Result.from_dict(s["baseline"]),
            [Result.from_dict(v) for v in s["variants"]],
            s["classes_in_batch"],
            s["floor_bytes"],
            s["floor_s"],
            s.get("load_average"),
        )
        rep.compute()
        reports.append(rep)
    return data, reports


def plot(path: Path, reports: List[ShapeReport], title: str) -> None:
    """Step time versus batch size, one panel per (D, C), one line per variant, log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    panels: Dict[tuple, List[ShapeReport]] = {}
    for r in reports:
        panels.setdefault((r.shape.D, r.shape.C), []).append(r)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 2.0, 4.2), squeeze=False)
    for ax, ((D, C), group) in zip(axes[0], panels.items()):
        group.sort(key=lambda r: r.shape.B)
        names = [r.variant for r in group[0].results]
        for name in ["features.sum()", *names]:
            pts = []
            for rep in group:
                res = (
                    rep.baseline
                    if name == "features.sum()"
                    else next((r for r in rep.results if r.variant == name), None)
                )
                t = _median(res, "step")
                if t is not None:
                    pts.append((rep.shape.B, t * 1e3))
            if pts:
                style = ":" if name == "features.sum()" else "-"
                ax.plot(*zip(*pts), style, marker="o", label=name)
        floors = [(rep.shape.B, rep.floor_s) for rep in group if rep.floor_s]
        if floors:
            ax.plot(*zip(*[(b, f * 1e3) for b, f in floors]), "k--", label="floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        batch_sizes = sorted({rep.shape.B for rep in group})
        ax.set_xticks(batch_sizes, [f"{b:,}" for b in batch_sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size B")
        ax.set_ylabel("step time (ms)")
        ax.set_title(f"D={D:,}  C={C:,}")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = {}, []
    for ax in axes[0]:  # one legend for every panel, outside the plots
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    fig.legend([handles[lb] for lb in labels], labels, loc="center right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
