"""`python -m centerloss_ext`: how this copy was built, which kernels it has, and the
machine it runs on (the facts in centerloss_ext._machine, which the benchmark and the
training records take from there too). The first thing to run when the install
misbehaves."""

from __future__ import annotations

import platform

import torch

OPS = ("forward", "forward_update_", "update_centers_", "backward_features", "backward_centers")


def build_facts() -> dict:
    import centerloss_ext  # noqa: F401  (loads the ops)

    from . import _build_info
    from ._machine import cpu_name

    has = torch._C._dispatch_has_kernel_for_dispatch_key
    kernels = {
        key: all(has(f"centerloss::{op}", key) for op in OPS) for key in ("CPU", "CUDA", "Meta")
    }
    return {
        "centerloss_ext": _build_info.VERSION,
        "built against torch": _build_info.TORCH_VERSION,
        "running torch": torch.__version__,
        "CUDA compiled in": _build_info.WITH_CUDA,
        "CUDA version": _build_info.CUDA_VERSION,
        "CUDA archs": _build_info.CUDA_ARCHS,
        "kernels registered (CPU/CUDA/Meta)": "/".join(
            "yes" if kernels[k] else "no" for k in ("CPU", "CUDA", "Meta")
        ),
        "GPU visible": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "CPU": cpu_name(),
        "CPU threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "location": centerloss_ext.__file__,
    }


def main() -> None:
    for key, value in build_facts().items():
        print(f"{key:>36}: {value}")


if __name__ == "__main__":
    main()
