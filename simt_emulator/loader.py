"""The SIMT emulator of the CUDA kernels as a PyTorch device, for tests without a GPU.

`simt_emulator/build.py` compiles the unchanged csrc/cuda/*.cu sources with g++ against a
small emulation of CUDA's execution model (simt_emulator/simt.h), and registers them for
PyTorch's PrivateUse1 key, which this module names "simt"::

    from simt_emulator import loader as emulation     # the repository root on sys.path
    emulation.load("build/emu/cov/libcenterloss_simt.so")   # or $CENTERLOSS_SIMT_LIB
    x = torch.randn(8, 4).to("simt")                          # host memory, device "simt"
    loss = CenterLoss(3, 4, device="simt")(x, labels.to("simt"))   # the CUDA kernels run

Every ATen op without an emulated kernel runs on the CPU (copies in and out). Counters:
`launch_count()` (kernel launches, plus one per ATen op the device runs, as on a GPU),
`host_reads()` (device-to-host read-backs: .item(), .cpu(), the label check),
`memory_allocated()` / `max_memory_allocated()` / `reset_peak_memory_stats()`.
See docs/cuda_emulation.md for what the emulation shows and what it cannot.
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional

import torch

DEVICE = "simt"
_lib: Optional[ctypes.CDLL] = None


class _DeviceModule:
    """torch.simt: what PyTorch asks of a device module."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def _is_in_bad_fork() -> bool:
        return False

    # Random ops run on the CPU (through the fallback) with the CPU's generator.
    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.default_generator.manual_seed(seed)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.default_generator.manual_seed(seed)

    @staticmethod
    def get_rng_state(device=None) -> torch.Tensor:
        return torch.default_generator.get_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device=None) -> None:
        torch.default_generator.set_state(state)

    @staticmethod
    def synchronize(device=None) -> None:
        pass


def load(library: Optional[str] = None) -> str:
    """Loads the emulated kernels (path, or $CENTERLOSS_SIMT_LIB) after the real extension,
    names the device "simt"; returns the device name. Loading twice is a no-op."""
    global _lib
    if _lib is not None:
        return DEVICE
    library = library or os.environ.get("CENTERLOSS_SIMT_LIB")
    if not library:
        raise ValueError(
            "no emulator library given: pass its path or set CENTERLOSS_SIMT_LIB "
            "(build it with: make emu-build)"
        )
    if not os.path.exists(library):
        raise FileNotFoundError(
            f"CENTERLOSS_SIMT_LIB={library} does not exist: build it with "
            "make emu-build (or python simt_emulator/build.py)"
        )
    import centerloss_ext  # noqa: F401  (the op schemas, and the checks the library links to)

    torch.utils.rename_privateuse1_backend(DEVICE)
    _lib = ctypes.CDLL(os.path.abspath(library))
    for name in ("simt_launch_count", "simt_host_reads"):
        getattr(_lib, name).restype = ctypes.c_uint64
    for name in ("simt_memory_allocated", "simt_max_memory_allocated"):
        getattr(_lib, name).restype = ctypes.c_int64
    torch._register_device_module(DEVICE, _DeviceModule())
    return DEVICE


def is_loaded() -> bool:
    return _lib is not None


def _need() -> ctypes.CDLL:
    if _lib is None:
        raise RuntimeError("the simt emulator is not loaded: call simt_emulator.loader.load()")
    return _lib


def launch_count() -> int:
    return int(_need().simt_launch_count())


def host_reads() -> int:
    return int(_need().simt_host_reads())


def memory_allocated() -> int:
    return int(_need().simt_memory_allocated())


def max_memory_allocated() -> int:
    return int(_need().simt_max_memory_allocated())


def reset_peak_memory_stats() -> None:
    _need().simt_reset_peak_memory_stats()


def _traffic() -> ctypes.CDLL:
    lib = _need()
    if not hasattr(lib, "simt_traffic_report"):
        raise RuntimeError(
            "this emulator library has no traffic model: build it with "
            "python simt_emulator/build.py --variant traffic"
        )
    lib.simt_traffic_report.restype = ctypes.c_char_p
    return lib


def has_traffic() -> bool:
    """Whether the loaded library is the `traffic` build (simt_emulator/traffic.cpp)."""
    return hasattr(_need(), "simt_traffic_report")


def traffic_reset() -> None:
    """Forgets the traffic model's records so far (the `traffic` build only)."""
    _traffic().simt_traffic_reset()


def traffic_report() -> list:
    """Every kernel launch, device op and memset since traffic_reset(), in order: its kind,
    name, and per load/store/atomic its warp-level requests, 32-byte sectors, distinct bytes
    and lane accesses, with the most atomics on one address (docs/cuda_emulation.md,
    "Memory traffic"). Run with SIMT_WORKERS=1."""
    import json

    return json.loads(_traffic().simt_traffic_report().decode())
