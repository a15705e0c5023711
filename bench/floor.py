"""The floor: the least time any implementation of the step could take on this device.

A center-loss training step must at least read the features and labels, read and write
the center rows of the classes in the batch, and write the features' gradient: that many
bytes at the device's measured copy bandwidth, plus one kernel launch. Anything above
that is overhead (more passes, more launches, host work). The floor ignores the loss
scalar and whatever the autograd split forces on a real implementation (backward runs
after forward has returned, so it must re-read something): a lower bound, not a target
that every design can reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .timing import time_fn


def step_bytes(
    B: int,
    D: int,
    classes_in_batch: int,
    feature_bytes: int,
    center_bytes: int,
    label_bytes: int = 8,
) -> int:
    """Bytes a fused step must move: features read + gradient written (B × D each),
    labels read, and the center rows of the classes in the batch read and written."""
    return 2 * B * D * feature_bytes + B * label_bytes + 2 * classes_in_batch * D * center_bytes


def floor_seconds(nbytes: int, bandwidth: float, launch: float) -> float:
    """``nbytes`` at ``bandwidth`` (bytes/s) plus one launch of ``launch`` seconds."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive; got {bandwidth}")
    return nbytes / bandwidth + launch


@dataclass
class DeviceFloor:
    """Measured once per run: copy bandwidth (bytes read + written per second) and the
    time of the cheapest kernel launch (a one-element fill)."""

    bandwidth: float
    launch: float
    copy_bytes: int

    def seconds(self, nbytes: int) -> float:
        return floor_seconds(nbytes, self.bandwidth, self.launch)


def measure_floor(device: str, copy_bytes: int, min_run_time: float = 0.5) -> DeviceFloor:
    """Times ``dst.copy_(src)`` of ``copy_bytes`` (device to device) and a one-element
    ``zero_()`` with the timer of :func:`bench.timing.time_fn`."""
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    copy = time_fn(lambda: dst.copy_(src), device, min_run_time)
    one = torch.zeros(1, device=device)
    launch = time_fn(one.zero_, device, min_run_time)
    return DeviceFloor(
        bandwidth=2 * copy_bytes / copy.median, launch=launch.median, copy_bytes=copy_bytes
    )
