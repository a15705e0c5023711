"""The benchmark's machinery on tiny shapes: wrong answers are FAILED and not timed, OOM and
slow variants are reported and the run goes on, the floor arithmetic, the shape grid,
and the whole script end to end (CPU, no compilation: test_compile covers that)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import checks, compare, report
from bench.floor import floor_seconds, measure_floor, step_bytes
from bench.runner import Settings, run_variant
from bench.shapes import Shape, parse_shapes
from bench.timing import plan_blocks, stats_from_times
from bench.variants import BASELINE, VARIANTS, AlphaStep, Problem, Variant
from centerloss_ext import reference

FAST = Settings(min_run_time=0.01, min_runs=3, warmup=1, budget=30.0)


@pytest.fixture
def problem(device):
    if device == "simt":
        pytest.skip("the benchmark times real devices; emulated timings mean nothing")
    return Problem.make(Shape(48, 6, 5), device, torch.float32, num_batches=2)


class _Wrong(AlphaStep):
    """The reference with one thing spoiled."""

    def __init__(self, problem, spoil):
        super().__init__(
            reference.CenterLoss(problem.shape.C, problem.shape.D), problem, compile=False
        )
        self.spoil = spoil

    def __call__(self, x, y):
        loss = super().__call__(x, y)
        with torch.no_grad():
            if self.spoil == "loss":
                loss = loss * 1.01
            elif self.spoil == "grad":
                x.grad[0, 0] += 1.0
            else:
                self.centers[y[0]] += 0.5
        return loss


@pytest.mark.parametrize("spoil", ["loss", "grad", "centers"])
def test_wrong_answer_is_failed_and_not_timed(problem, spoil):
    variant = Variant("wrong", lambda p: _Wrong(p, spoil))
    result = run_variant(variant, problem, checks.expected(problem), FAST)
    assert result.status == "FAILED"
    assert spoil in result.note
    assert result.step is None


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.compiled], ids=lambda v: v.name)
def test_every_eager_variant_passes_its_check_and_is_timed(problem, variant):
    result = run_variant(variant, problem, checks.expected(problem), FAST)
    assert result.status == "ok", result.note
    assert max(result.errors.values()) <= checks.TOLERANCE[torch.float32]
    assert result.step.median > 0 and result.step.runs >= FAST.min_runs
    assert result.peak_bytes is None or result.peak_bytes >= 0


def test_bfloat16_features_pass_the_check():
    p = Problem.make(Shape(64, 8, 6), "cpu", torch.bfloat16, num_batches=2)
    for variant in (v for v in VARIANTS if not v.compiled):
        result = run_variant(variant, p, checks.expected(p), FAST)
        assert result.status == "ok", (variant.name, result.note)


def _raise(error):
    def build(problem):
        raise error

    return build


def test_oom_and_errors_are_reported_not_raised(problem):
    oom = run_variant(
        Variant("oom", _raise(torch.cuda.OutOfMemoryError("CUDA out of memory."))),
        problem,
        None,
        FAST,
    )
    assert oom.status == "OOM"
    err = run_variant(
        Variant("broken", _raise(NotImplementedError("no CUDA kernel"))), problem, None, FAST
    )
    assert err.status == "error" and "no CUDA kernel" in err.note


def test_too_slow_is_reported_not_timed(problem):
    result = run_variant(
        VARIANTS[0], problem, checks.expected(problem), Settings(min_run_time=0.01, budget=1e-9)
    )
    assert result.status == "too slow" and result.step is None


def test_host_memory_guard_skips_instead_of_crashing(problem):
    huge = Variant("huge", VARIANTS[0].build, working_bytes=lambda s: 1 << 60)
    result = run_variant(huge, problem, checks.expected(problem), FAST)
    assert result.status == "skipped" and "GiB" in result.note


def test_peak_memory_counts_the_distance_matrix():
    p = Problem.make(Shape(256, 4, 2000), "cpu", torch.float32, num_batches=1)
    dm = next(v for v in VARIANTS if v.name == "distance matrix")
    result = run_variant(dm, p, checks.expected(p), FAST)
    if result.peak_bytes is None:
        pytest.skip("this torch's profiler exposes no allocation events")
    assert result.peak_bytes >= 256 * 2000 * 4  # at least one B x C float32 matrix


def test_floor_arithmetic():
    # 2·B·D·4 (features in, gradient out) + B·8 (labels) + 2·U·D·4 (center rows in and out)
    assert step_bytes(B=10, D=3, classes_in_batch=4, feature_bytes=4, center_bytes=4) == (
        240 + 80 + 96
    )
    assert step_bytes(10, 3, 4, feature_bytes=2, center_bytes=4) == 120 + 80 + 96
    assert floor_seconds(2_000_000, bandwidth=1e9, launch=5e-6) == pytest.approx(2.005e-3)
    with pytest.raises(ValueError):
        floor_seconds(1, bandwidth=0, launch=0)


def test_floor_measurement_runs(device):
    floor = measure_floor(device, copy_bytes=1 << 20, min_run_time=0.01)
    assert floor.bandwidth > 0 and floor.launch > 0
    assert floor.seconds(1 << 20) > floor.launch


def test_stats_quartiles():
    s = stats_from_times([5.0, 1.0, 3.0, 2.0, 4.0], per_block=10, method="t")
    assert (s.median, s.q1, s.q3, s.runs) == (3.0, 2.0, 4.0, 50)
    assert stats_from_times([7.0], 1, "t").iqr == 0


def test_block_plan():
    # 50 µs calls: 10 ms blocks of 200 calls, 1 s in all
    assert plan_blocks(50e-6, min_run_time=1.0, min_runs=10, block_time=10e-3) == (200, 100)
    # 2 s calls: one per block, at least min_runs blocks
    assert plan_blocks(2.0, min_run_time=1.0, min_runs=10, block_time=10e-3) == (1, 10)


def test_parse_shapes():
    assert [s.B for s in parse_shapes("mnist", "cpu")] == [128, 512, 2048]
    assert parse_shapes("bandwidth", "cpu") == []
    assert [s.B for s in parse_shapes("bandwidth", "cuda")] == [16_384, 65_536]
    (s,) = parse_shapes("512x512x10000,512X512X10000", "cpu")
    assert (s.B, s.D, s.C) == (512, 512, 10_000)
    with pytest.raises(ValueError, match="neither a group"):
        parse_shapes("512x512", "cpu")


def test_report_derives_loss_cost_and_speedups(problem):
    want = checks.expected(problem)
    results = [run_variant(v, problem, want, FAST) for v in VARIANTS if not v.compiled]
    base = run_variant(BASELINE, problem, None, FAST)
    results.append(run_variant(Variant("wrong", lambda p: _Wrong(p, "loss")), problem, want, FAST))
    rep = report.ShapeReport(problem.shape, base, results, 5, 1000, floor_s=1e-6)
    rep.compute()
    ext = rep.derived["centerloss_ext"]
    assert ext["speedup_step"] == pytest.approx(1.0)
    assert ext["loss_cost_s"] == pytest.approx(results[0].step.median - base.step.median)
    ref = rep.derived["reference"]
    assert ref["speedup_step"] == pytest.approx(results[1].step.median / results[0].step.median)
    assert rep.derived["wrong"]["speedup_step"] is None
    text = report.table(rep, on_cuda=True)
    assert "FAILED" in text and "reference" in text and "CUDA graph" in text


def test_script_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        compare.main(
            [
                "--device",
                "cpu",
                "--shapes",
                "64x4x5,128x4x5",
                "--no-compile",
                "--min-run-time",
                "0.01",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "speedup" in printed and "distance matrix" in printed
    data = json.loads((out / "compare.json").read_text())
    assert data["machine"]["torch_threads"] >= 1 and len(data["shapes"]) == 2
    for shape in data["shapes"]:
        assert shape["baseline"]["status"] == "ok"
        assert {v["variant"] for v in shape["variants"]} == {
            v.name for v in VARIANTS if not v.compiled
        }
        assert all(v["status"] == "ok" for v in shape["variants"])
    assert (out / "compare.png").stat().st_size > 10_000
    assert "| distance matrix |" in (out / "compare.md").read_text()
    # --render redraws a saved run without measuring: the same tables
    again = tmp_path / "again"
    assert compare.main(["--render", str(out / "compare.json"), "--out", str(again)]) == 0
    assert (again / "compare.md").read_text() == (out / "compare.md").read_text()


def test_script_exits_nonzero_on_a_wrong_answer(tmp_path, monkeypatch):
    wrong = Variant("wrong", lambda p: _Wrong(p, "centers"))
    monkeypatch.setattr(compare, "VARIANTS", [VARIANTS[0], wrong])
    assert (
        compare.main(
            [
                "--device",
                "cpu",
                "--shapes",
                "64x4x5",
                "--min-run-time",
                "0.01",
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )


@pytest.mark.gpu
def test_cuda_graph_figure_or_reason_and_the_run_goes_on():
    p = Problem.make(Shape(48, 6, 5), "cuda", torch.float32, num_batches=2)
    want = checks.expected(p)
    base = run_variant(BASELINE, p, None, FAST)
    assert base.status == "ok" and base.graph is not None and base.graph.median > 0
    for variant in (v for v in VARIANTS if not v.compiled):
        result = run_variant(variant, p, want, FAST)
        assert result.status == "ok", (variant.name, result.note)
        assert (result.graph is None) == result.graph_note.startswith("n/a ("), variant.name
        if variant.name == "reference":  # reads label values on the host: no capture
            assert result.graph is None
        assert result.peak_bytes > 0
