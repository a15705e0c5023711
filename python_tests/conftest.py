"""Shared fixtures: devices, dtypes and their tolerances, and hypothesis profiles.

The CUDA kernels run on a GPU ("cuda") or, with CENTERLOSS_SIMT_LIB naming a library built
by simt_emulator/build.py (make test-cuda-emu), on the SIMT emulator's "simt" device: the
same .cu sources, run on the CPU. CUDA_DEVICE names whichever is there; tests marked `cuda`
are skipped when neither is, tests marked `gpu` (graph capture, the CUDA profiler, CUDA
memory stats) whenever there is no real GPU."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
EMULATED = False
if not HAS_CUDA and os.environ.get("CENTERLOSS_SIMT_LIB"):
    # simt_emulator/ is a test tool at the repository root, not in the package: pyproject's
    # pythonpath puts the root on sys.path; a run that skips that config (another rootdir,
    # -c elsewhere) finds it from here (appended, so an installed centerloss_ext still wins)
    try:
        from simt_emulator import loader as emulation
    except ImportError:
        sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from simt_emulator import loader as emulation

    emulation.load()
    EMULATED = True
CUDA_DEVICE = "cuda" if HAS_CUDA else "simt" if EMULATED else "cuda"

DEVICES = ["cpu", pytest.param(CUDA_DEVICE, marks=pytest.mark.cuda)]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = [torch.float16, torch.bfloat16]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    no_kernels = pytest.mark.skip(
        reason="needs a CUDA GPU or the SIMT emulator (make test-cuda-emu)"
    )
    no_gpu = pytest.mark.skip(reason="needs real CUDA hardware (not emulated)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_gpu)
        elif "cuda" in item.keywords and not EMULATED:
            item.add_marker(no_kernels)


def sync() -> None:
    """Waits for the device's queued work (nothing to wait for under emulation)."""
    if HAS_CUDA:
        torch.cuda.synchronize()


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param
