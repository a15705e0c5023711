#!/usr/bin/env bash
# Debian packages the tests and the demo need: GoogleTest for the C++ tests, Boost.Context
# and gcovr for the SIMT emulation of the CUDA kernels (make test-cuda-emu), clang 14 for its
# traffic model, libtsan2 for its race detector (make test-cuda-race), and Fashion-MNIST
# (the demo's data). Installs only what is missing; needs root for that.
set -euo pipefail
missing=()
[ -f /usr/include/gtest/gtest.h ] || missing+=(libgtest-dev)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
[ -f /usr/include/boost/context/fiber.hpp ] || missing+=(libboost-context-dev)
command -v gcovr >/dev/null || missing+=(gcovr)
# clang 14's sanitizer-coverage load/store hooks for the memory-traffic model
# (scripts/kernel_traffic.py, python_tests/cuda_kernels/test_kernel_traffic.py)
command -v clang++-14 >/dev/null || missing+=(clang-14)
# ThreadSanitizer's runtime for the race detector's build (make test-cuda-race)
[ -f "$(g++ -print-file-name=libtsan.so 2>/dev/null)" ] || missing+=(libtsan2)
command -v cmake >/dev/null || missing+=(cmake)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
