#!/usr/bin/env bash
# Everything to run on a GPU machine: the build, `python -m centerloss_ext`, the CUDA
# tests, compute-sanitizer memcheck and racecheck over scripts/cuda_smoke.py, and the GPU
# benchmark. Logs and figures go to $OUT (default build/gpu_check); to publish the
# benchmark, copy its compare.json to bench/results/cuda-<dtype>.json, add "run" and
# "tables" marker blocks for it to bench/RESULTS.md and run `python bench/compare.py --render`.
#
#   bash scripts/gpu_check.sh                    # every step
#   bash scripts/gpu_check.sh tests sanitize     # some steps (build is implied when needed)
#
# Steps: build, tests, sanitize, bench. Where one call has a time limit (the device tool:
# 10 minutes), run `build tests` in one call and `sanitize` and `bench` in the next: the
# build stays in place between calls on a warm machine.
set -uo pipefail
OUT=${OUT:-build/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
steps=${*:-build tests sanitize bench}
status=0
step() { echo; echo "=== $*"; }
wants() { [[ " $steps " == *" $1 "* ]]; }

if wants build || ! $PY -c 'import centerloss_ext' 2>/dev/null; then
  step "build"
  $PY -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
    || { tail -50 "$OUT/build.log"; exit 1; }
  $PY -m centerloss_ext | tee "$OUT/build_info.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
fi

if wants tests; then
  step "CUDA tests"
  $PY -m pytest -m cuda -q -p no:cacheprovider > "$OUT/pytest_cuda.txt" 2>&1 || status=1
  tail -30 "$OUT/pytest_cuda.txt"
fi

if wants sanitize; then
  step "compute-sanitizer"
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --print-limit 20 $PY scripts/cuda_smoke.py \
      > "$OUT/$tool.txt" 2>&1 || status=1
    echo "$tool:"; tail -3 "$OUT/$tool.txt"
  done
fi

if wants bench; then
  step "benchmark"
  $PY bench/compare.py --device cuda --out "$OUT/bench" > "$OUT/bench.txt" 2>&1 || status=1
  tail -60 "$OUT/bench.txt"
fi
exit $status
