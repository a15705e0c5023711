"""Facts about the machine a run or a benchmark ran on: the CPU's name and the
environment recorded in metrics.json and the benchmark's JSON. `python -m centerloss_ext`
prints them too. Only torch and the standard library are imported here."""

from __future__ import annotations

import os
import platform
from typing import Any, Dict

import torch


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the record of a run."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> Dict[str, Any]:
    """Where a run ran: torch, Python, the device (the GPU's name, or the CPU's name and
    core count) and torch's CPU threads."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu: {cpu_name()}, {os.cpu_count()} cores"
        ),
        "cpu_threads": torch.get_num_threads(),
    }
