"""bench/RESULTS.md's measured blocks are rendered from the committed runs in bench/results/
by `bench/compare.py --render`: the committed page is exactly its rendering (a hand edit
inside the markers fails here), rendering twice changes nothing, the prose outside the
markers is kept, and a small hand-made run renders to known Markdown."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench import compare, report

BENCH = Path(compare.__file__).resolve().parent
PAGE = BENCH / "RESULTS.md"
RESULTS = BENCH / "results"


def _empty_blocks(text: str) -> str:
    """The page with every rendered block's content removed, markers kept."""
    return re.sub(
        f"({report.BEGIN.pattern}).*?({re.escape(report.END)})", r"\1\n\4", text, flags=re.S
    )


def test_committed_page_is_the_rendering_of_the_committed_json():
    text = PAGE.read_text()
    rendered, used = report.render_page(text, RESULTS, PAGE.parent)
    assert rendered == text, (
        "bench/RESULTS.md differs from its rendering: edit the prose "
        "outside the markers, then run python bench/compare.py --render"
    )
    assert sorted(used) == sorted(p.name for p in RESULTS.glob("*.json")), (
        "every committed run has a block on the page"
    )
    for name in used:
        for kind in ("run", "tables"):
            assert f"from {name} ({kind}): do not edit" in text, (name, kind)


def test_rendering_is_idempotent_and_fills_emptied_blocks():
    text = PAGE.read_text()
    emptied = _empty_blocks(text)
    assert emptied != text and "| centerloss_ext |" not in emptied
    once, _ = report.render_page(emptied, RESULTS, PAGE.parent)
    twice, _ = report.render_page(once, RESULTS, PAGE.parent)
    assert once == twice == text


def test_the_tables_are_what_the_run_itself_wrote(tmp_path):
    """The page's tables block is compare.md of the same JSON, byte for byte."""
    meta, reports = report.read_json(RESULTS / "cpu-float32.json")
    table = report.markdown(reports, on_cuda=False)
    assert "\n" + table.strip("\n") + "\n" in PAGE.read_text()
    assert "| distance matrix | 1.33 s | 13.98 ms | 1.33 s | 782.6 | 3911.7× | 5248.1× |" in table


def _copy_page(tmp_path: Path) -> Path:
    (tmp_path / "results").mkdir()
    for p in RESULTS.glob("*.json"):
        shutil.copy(p, tmp_path / "results" / p.name)
    return Path(shutil.copy(PAGE, tmp_path / "RESULTS.md"))


def test_cli_check_catches_a_hand_edit_and_render_repairs_it(tmp_path, capsys):
    page = _copy_page(tmp_path)
    assert compare.main(["--render", str(page), "--check"]) == 0
    text = page.read_text()
    edited = text.replace("| centerloss_ext | 348.0 µs |", "| centerloss_ext | 300.0 µs |", 1)
    assert edited != text
    page.write_text(edited)
    capsys.readouterr()
    assert compare.main(["--render", str(page), "--check"]) == 1
    assert "+| centerloss_ext | 348.0 µs |" in capsys.readouterr().out
    assert page.read_text() == edited  # --check writes nothing
    assert compare.main(["--render", str(page)]) == 0
    assert page.read_text() == text


def test_cli_prose_edits_outside_the_markers_are_kept(tmp_path):
    page = _copy_page(tmp_path)
    text = page.read_text().replace("# Measured figures", "# Measured figures, edited", 1)
    page.write_text(text)
    out = tmp_path / "elsewhere.md"
    assert compare.main(["--render", str(page), "--out", str(out)]) == 0
    assert out.read_text() == text and page.read_text() == text


def test_cli_render_with_no_argument_checks_bench_results_md():
    assert compare.main(["--render", "--check"]) == 0


def test_cli_page_options_need_page_mode():
    with pytest.raises(SystemExit):
        compare.parse_args(["--check"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--render", "run.json", "--results", "x"])


# A small hand-made run and the Markdown it must give.


def _stats(median: float, iqr: float) -> dict:
    return {
        "median": median,
        "q1": median - iqr / 2,
        "q3": median + iqr / 2,
        "mean": median,
        "blocks": 10,
        "per_block": 100,
        "method": "timeit",
        "times": [median] * 10,
    }


def _variant(name: str, median=None, iqr=0.0, peak=None, status="ok", note="") -> dict:
    return {
        "variant": name,
        "status": status,
        "note": note,
        "step": None if median is None else _stats(median, iqr),
        "cuda_graph": None,
        "cuda_graph_note": "",
        "peak_bytes": peak,
        "first_call_s": 0.01,
        "check_errors": {},
    }


def hand_made_run() -> dict:
    return {
        "machine": {
            "date": "2026-01-02T03:04:05+00:00",
            "command": "python bench/compare.py --quick",
            "git_commit": "abc1234",
            "device": "cpu",
            "torch": "2.9.0",
            "python": "3.11.7",
            "cpu": "Test CPU",
            "cpu_count": 4,
            "torch_threads": 4,
            "load_average_start": [0.5, 0.4, 0.3],
            "centerloss_ext": {"centerloss_ext": "0.1.0", "CUDA compiled in": False},
        },
        "dtype": "float32",
        "quick": True,
        "settings": {
            "min_run_time": 0.3,
            "min_runs": 10,
            "warmup": 3,
            "budget": 20.0,
            "cuda_graphs": True,
        },
        "batches_rotated": 4,
        "load_average_end": [0.75, 0.5, 0.4],
        "wall_s": 12.4,
        "shapes": [
            {
                "B": 512,
                "D": 512,
                "C": 10_000,
                "group": "face10k",
                "classes_in_batch": 499,
                "floor_bytes": 4_000_000,
                "floor_s": None,
                "load_average": [0.625, 0.4, 0.3],
                "baseline": _variant("features.sum()", 20e-6, 1e-6),
                "variants": [
                    _variant("centerloss_ext", 100e-6, 4e-6, 2**20),
                    _variant("reference", 500e-6, 20e-6, 3 * 2**20),
                    _variant(
                        "distance matrix", status="too slow", note="one step takes about 9.00 s"
                    ),
                ],
            }
        ],
    }


M = "<!-- rendered by bench/compare.py --render from run.json"
E = "<!-- end rendered -->"
HAND_PAGE = f"""# Page

Prose before.

{M} (summary): do not edit -->
stale text, replaced
{E}

{M} (run): do not edit -->
{E}
Prose between.
{M} (tables): do not edit -->{E}

Prose after.
"""

WANT = f"""# Page

Prose before.

{M} (summary): do not edit -->

| shape | centerloss_ext step | vs reference | vs distance matrix |
|---|---:|---:|---:|
| B=512 D=512 C=10,000 | 100.0 µs | 5.00× (6.00×) | too slow |

{E}

{M} (run): do not edit -->

- Run: 2026-01-02 03:04 UTC, 12 s in all; `python bench/compare.py --quick` at commit
  abc1234; every figure: [run.json](results/run.json).
- Machine: Test CPU, 4 CPUs, 4 torch threads; torch 2.9.0, Python 3.11.7; centerloss_ext
  0.1.0, CUDA not compiled in.
- Load average (1 min): 0.50 at the start, 0.62 as the shapes started, 0.75 at the end.
- Timing: features float32, centers float32; 4 random batches in turn; per variant 3
  warm-up steps, then at least 10 timed blocks and 0.3 s; a variant that would take over
  20 s is reported too slow (`--quick`).

{E}
Prose between.
{M} (tables): do not edit -->

**B=512 D=512 C=10,000** (499 classes in the batch); baseline step (features.sum() as the loss): 20.0 µs

| variant | step | ±IQR/2 | loss cost | peak MiB | speedup step | speedup loss |
|---|---:|---:|---:|---:|---:|---:|
| centerloss_ext | 100.0 µs | 2.0 µs | 80.0 µs | 1.0 | 1.00× | 1.00× |
| reference | 500.0 µs | 10.0 µs | 480.0 µs | 3.0 | 5.00× | 6.00× |
| distance matrix | too slow: one step takes about 9.00 s |  |  |  |  |  |

{E}

Prose after.
"""


@pytest.fixture
def hand_results(tmp_path) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    (results / "run.json").write_text(json.dumps(hand_made_run()))
    return results


def test_hand_made_run_renders_to_known_markdown(hand_results):
    rendered, used = report.render_page(HAND_PAGE, hand_results, hand_results.parent)
    assert used == ["run.json"]
    assert rendered == WANT
    assert report.render_page(rendered, hand_results, hand_results.parent)[0] == WANT


def test_hand_made_cuda_run_names_the_gpu_and_the_floor(hand_results):
    run = hand_made_run()
    run["machine"].update(
        device="cuda",
        gpu="NVIDIA H100 80GB HBM3",
        gpu_memory_bytes=80 * 2**30,
        cuda="13.0",
        matmul_allow_tf32=False,
    )
    run["floor"] = {
        "copy_bandwidth_bytes_per_s": 2.5e12,
        "empty_launch_s": 4e-6,
        "copy_bytes": 1 << 30,
    }
    run["shapes"][0]["floor_s"] = 5.6e-6
    (hand_results / "run.json").write_text(json.dumps(run))
    rendered, _ = report.render_page(HAND_PAGE, hand_results, hand_results.parent)
    flat = " ".join(rendered.split())
    assert "NVIDIA H100 80GB HBM3 (80 GiB), CUDA 13.0, TF32 matmul off" in flat
    assert (
        "- Floor: device-to-device copy 2500 GB/s (read + write), one-element kernel "
        "launch 4.0 µs." in flat
    )
    assert "| variant | step | ±IQR/2 | loss cost | CUDA graph | × floor | peak MiB |" in flat
    assert "| centerloss_ext | 100.0 µs | 2.0 µs | 80.0 µs | - | 17.9× |" in flat


@pytest.mark.parametrize(
    "page, error",
    [
        (f"{M} (plot): do not edit -->\n{E}\n", "unknown kind 'plot'"),
        (f"{M} (tables): do not edit -->\nno end\n", "has no <!-- end rendered -->"),
        (f"{M} (tables): do not edit -->\n{M} (run): do not edit -->\n{E}\n", "has no"),
        (
            f"x\n{M.replace('run.json', 'gone.json')} (tables): do not edit -->\n{E}\n",
            "line 2: .*gone.json not found",
        ),
    ],
)
def test_bad_markers_are_reported(hand_results, page, error):
    with pytest.raises(report.PageError, match=error):
        report.render_page(page, hand_results, hand_results.parent)


def test_cli_bad_page_exits_2_and_writes_nothing(hand_results, capsys):
    page = hand_results.parent / "page.md"
    page.write_text(f"{M} (plot): do not edit -->\n{E}\n")
    assert compare.main(["--render", str(page)]) == 2
    assert "unknown kind" in capsys.readouterr().err
    assert page.read_text() == f"{M} (plot): do not edit -->\n{E}\n"
