#!/usr/bin/env bash
# Debian packages the tests and the demo need: GoogleTest for the C++ tests, Boost.Context
# and gcovr for the SIMT emulation of the CUDA kernels (make test-cuda-emu), and
# Fashion-MNIST (the demo's data). Installs only what is missing; needs root for that.
set -euo pipefail
missing=()
[ -f /usr/include/gtest/gtest.h ] || missing+=(libgtest-dev)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
[ -f /usr/include/boost/context/fiber.hpp ] || missing+=(libboost-context-dev)
command -v gcovr >/dev/null || missing+=(gcovr)
command -v cmake >/dev/null || missing+=(cmake)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
