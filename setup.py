"""Builds centerloss_ext and its compiled ops (centerloss_ext._C).

    pip install torch          # first: the extension is compiled against this torch
    pip install .              # or -e . to work on the source; ".[bench]", ".[train]" too

pip runs this through the in-tree build backend (build_backend/centerloss_build.py),
which finds the target environment's torch and puts it on the path before this file
runs; with --no-build-isolation, or `python setup.py ...` (make build), torch is
importable anyway. CENTERLOSS_TORCH_PYTHON=/path/to/env/bin/python names the environment
whose torch to build against when the backend cannot find it.

Environment switches:
    CENTERLOSS_CPU_ONLY=1   build the CPU kernels only (CUDA is otherwise compiled whenever
                            torch is a CUDA build and nvcc is found, GPU or not)
    FORCE_CUDA=1            compile the CUDA kernels even when torch has no CUDA runtime
                            (a CPU-only torch); needs nvcc
    TORCH_CUDA_ARCH_LIST    CUDA archs to compile for (default "8.0;9.0+PTX")
    MAX_JOBS                parallel compile jobs (ninja)
    CENTERLOSS_TORCH_PYTHON the python whose torch to build against (the build backend's
                            override, when it cannot find the target environment's torch)
    DEBUG=1                 -O0 -g, no optimisation
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _find_cuda_home() -> None:
    # torch guesses CUDA_HOME from `which nvcc`; a wrapper script in /usr/local/bin
    # makes that /usr/local. Prefer the real toolkit folder when there is one.
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


_find_cuda_home()
try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:
    sys.exit(
        f"centerloss_ext: PyTorch must be importable while building ({e}). Install "
        "torch first (pip install torch), then pip install . ; to build against the "
        "torch of another environment, set CENTERLOSS_TORCH_PYTHON=/path/to/env/bin/python."
    )


def _nvidia_include_dirs() -> list:
    # torch's CUDA headers include cuBLAS/cuSPARSE/cuSOLVER headers that a bare
    # toolkit may lack; torch's pip dependencies ship them under site-packages/nvidia.
    site = os.path.dirname(os.path.dirname(torch.__file__))
    return sorted(
        d for d in glob.glob(os.path.join(site, "nvidia", "*", "include")) if os.path.isdir(d)
    )


def _with_cuda(cuda_sources: list) -> bool:
    if _env_flag("CENTERLOSS_CPU_ONLY") or not cuda_sources:
        return False
    if _env_flag("FORCE_CUDA"):
        if CUDA_HOME is None:
            sys.exit(
                "centerloss_ext: FORCE_CUDA=1 but no CUDA toolkit (nvcc) was found; set CUDA_HOME."
            )
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _build_info(with_cuda: bool, archs: str) -> str:
    # Read at import: a torch other than the one built against must not load _C.
    return (
        "# Written by setup.py at build time; do not edit.\n"
        f"VERSION = {VERSION!r}\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
        f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n"
        f"CUDA_ARCHS = {(archs if with_cuda else None)!r}\n"
    )


class BuildExt(BuildExtension):
    """torch's BuildExtension, which also writes _build_info.py next to the built _C
    (the source package for in-place and editable builds, build/lib for wheels), so
    the two always describe the same build."""

    build_info = ""

    def run(self):
        super().run()
        folder = os.path.dirname(self.get_ext_fullpath("centerloss_ext._C"))
        with open(os.path.join(folder, "_build_info.py"), "w") as f:
            f.write(self.build_info)


# Optional dependency groups: bench/compare.py, the training scripts
# (centerloss_ext.train), and the Python test suite (which runs both).
EXTRAS = {
    "bench": ["tqdm", "matplotlib"],
    "train": ["torchvision", "numpy", "matplotlib", "scikit-learn", "tqdm", "pillow"],
}
EXTRAS["test"] = sorted(
    set(EXTRAS["bench"] + EXTRAS["train"] + ["pytest", "hypothesis", "expecttest"])
)


def _extension():
    sources = sorted(
        glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
    )
    cuda_sources = sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cu"))
        + glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
    )
    with_cuda = _with_cuda(cuda_sources)
    debug = _env_flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is OpenMP inside torch's headers: without -fopenmp it runs serially.
    # The extension then links libgomp.so.1, which resolves to the copy torch loaded.
    extra = {"cxx": opt + ["-fopenmp", "-Wall"]}
    link = ["-fopenmp"]
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS) if with_cuda else ""
    BuildExt.build_info = _build_info(with_cuda, archs)
    if not with_cuda:
        return CppExtension(
            "centerloss_ext._C", sources, extra_compile_args=extra, extra_link_args=link
        )
    extra["nvcc"] = opt + ["-lineinfo"]  # -lineinfo: profilers map back to source lines
    return CUDAExtension(
        "centerloss_ext._C",
        sources + cuda_sources,
        include_dirs=_nvidia_include_dirs(),
        extra_compile_args=extra,
        extra_link_args=link,
    )


setup(
    name="centerloss_ext",
    version=VERSION,
    description="Fused C++/CUDA Center Loss (Wen et al., ECCV 2016) for PyTorch",
    packages=find_packages(include=["centerloss_ext", "centerloss_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    # what the parts beyond the library need (each names its group when one is missing):
    # pip install ".[bench]" / ".[train]" / ".[test]"; requirements.txt pins them all
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "centerloss-mnist = centerloss_ext.train.mnist.cli:main",
            "centerloss-faces = centerloss_ext.train.faces.cli:main",
            "centerloss-openset = centerloss_ext.train.openset.cli:main",
        ]
    },
)
