"""`python -m centerloss_ext`, the diagnostic, and the machine facts it shares with the
benchmark and the training records (centerloss_ext._machine)."""

from __future__ import annotations

import subprocess
import sys

import torch

from centerloss_ext import _machine
from helpers import REPO_ROOT


def test_diagnostic_prints_build_and_machine_facts():
    run = subprocess.run(
        [sys.executable, "-m", "centerloss_ext"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    facts = dict(line.strip().split(": ", 1) for line in run.stdout.splitlines())
    assert facts["running torch"] == torch.__version__
    assert facts["kernels registered (CPU/CUDA/Meta)"].startswith("yes/")
    assert facts["CPU"] == _machine.cpu_name() != ""


def test_environment_names_the_cpu():
    env = _machine.environment(torch.device("cpu"))
    assert set(env) == {"torch", "python", "device", "cpu_threads"}
    assert env["device"].startswith(f"cpu: {_machine.cpu_name()}, ")


def test_benchmark_and_training_take_machine_facts_from_the_package():
    """bench/ and the training scripts must not be where machine facts live."""

    root = REPO_ROOT
    compare = (root / "bench" / "compare.py").read_text()
    assert "from centerloss_ext._machine import cpu_name" in compare
    import importlib

    for name in ("errors", "cli", "runtime", "files", "loop"):
        module = importlib.import_module(f"centerloss_ext.train.core.{name}")
        assert not hasattr(module, "cpu_name"), name
