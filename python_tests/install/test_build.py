"""The install itself: the ops exist, `python -m centerloss_ext` reports the build,
and a torch other than the one built against is refused with a rebuild message."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import centerloss_ext
from centerloss_ext import _build_info, _loader

OPS = ("forward", "forward_update_", "update_centers_", "backward_features", "backward_centers")


def test_ops_are_registered_with_cpu_and_meta_kernels():
    for op in OPS:
        assert hasattr(torch.ops.centerloss, op)
        for key in ("CPU", "Meta"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"centerloss::{op}", key)


def test_cuda_kernels_registered_when_built_with_cuda():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert all(has(f"centerloss::{op}", "CUDA") for op in OPS) == _build_info.WITH_CUDA


def test_python_m_prints_build_facts():
    out = subprocess.run(
        [sys.executable, "-m", "centerloss_ext"], capture_output=True, text=True, check=True
    ).stdout
    assert f"built against torch: {_build_info.TORCH_VERSION}" in out
    assert f"centerloss_ext: {centerloss_ext.__version__}" in out
    assert "CUDA compiled in" in out and "kernels registered" in out


def test_other_torch_version_is_refused(monkeypatch):
    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match="built against torch 1.0.0.*rebuild"):
        _loader.load()
