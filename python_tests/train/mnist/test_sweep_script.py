"""scripts/sweep_lambda_alpha.py on tiny made-up IDX data: one row per grid cell plus the
softmax-only reference, both modes, the heat maps, and --resume keeping finished rows."""

from __future__ import annotations

import importlib.util
import json

import pytest

from helpers import REPO_ROOT, idx_folder


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return idx_folder(tmp_path_factory.mktemp("idx"), train=128, test=60, compress_train=True)


SCRIPT = REPO_ROOT / "scripts" / "sweep_lambda_alpha.py"


def load():
    spec = importlib.util.spec_from_file_location("sweep_lambda_alpha", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_rows_heatmaps_and_resume(idx_dir, tmp_path, capsys):
    sweep = load()
    args = [
        "--data",
        str(idx_dir),
        "--out",
        str(tmp_path),
        "--limit-train",
        "0",
        "--lambdas",
        "0.1",
        "--alphas",
        "0.5",
        "--epochs",
        "4",
    ]
    sweep.main(args)
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    cells = {(r["lambda"], r["alpha"], r["mode"]) for r in rows}
    assert cells == {(0.0, 0.5, "alpha"), (0.1, 0.5, "alpha"), (0.1, 0.5, "optimizer")}
    for r in rows:
        assert 0 <= r["test_nearest_center_acc"] <= 1 and r["test_intra_inter_ratio"] > 0
    assert (tmp_path / "heatmaps.png").stat().st_size > 10_000
    capsys.readouterr()
    sweep.main(args + ["--alphas", "0.5,0.9", "--resume"])  # only the new α runs
    ran = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(ran) == 2 and all("α=0.9" in line for line in ran)
    assert len(json.loads((tmp_path / "sweep.json").read_text())["rows"]) == 5
