"""A missing optional package of the "train" group is one line naming the group, exit 2,
before any work (issue 13, item 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HIDE_TQDM = (
    "import sys, runpy; sys.modules['tqdm'] = None; sys.argv[0] = 'x'; "
    "runpy.run_module('centerloss_ext.train.{}', run_name='__main__')"
)


@pytest.mark.parametrize("module", ["mnist", "faces", "openset"])
def test_missing_train_package_is_one_line(module, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", HIDE_TQDM.format(module), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "tqdm missing" in lines[0] and 'pip install ".[train]"' in lines[0]


def test_imported_as_a_library_it_raises():
    code = (
        "import sys; sys.modules['tqdm'] = None\n"
        "try:\n    import centerloss_ext.train.mnist.cli\nexcept ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ImportError: centerloss-mnist: tqdm missing" in out.stdout, out.stdout + out.stderr
