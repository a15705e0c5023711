#!/usr/bin/env bash
# Builds the C++ library and its GoogleTest tests with CMake against the torch of
# $PYTHON, then runs them with ctest.
set -euo pipefail
PYTHON=${PYTHON:-python3}
BUILD=${BUILD:-build/cmake}
prefix=$("$PYTHON" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
args=(-DCMAKE_PREFIX_PATH="$prefix")
if "$PYTHON" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
  # A CUDA build of torch makes find_package(Torch) look for the CUDA toolkit. Point it
  # at the real toolkit, and at torch's pip-shipped NVRTC when the toolkit lacks one.
  cuda=${CUDA_HOME:-/usr/local/cuda}
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="$cuda")
  if ! ls "$cuda"/lib64/libnvrtc.so* >/dev/null 2>&1; then
    nvrtc=$("$PYTHON" - <<'PY'
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
print((sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so*"))) or [""])[0])
PY
)
    [ -n "$nvrtc" ] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
  fi
  # torch's CMake would otherwise probe for a GPU with a CUDA test program
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$BUILD" "${generator[@]}" "${args[@]}" >/dev/null
cmake --build "$BUILD" -j "${MAX_JOBS:-2}"
ctest --test-dir "$BUILD" --output-on-failure
