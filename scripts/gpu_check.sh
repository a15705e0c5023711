#!/usr/bin/env bash
# Everything to run on a GPU machine, in one command (the device tool: one call):
#   build, `python -m centerloss_ext`, the CUDA tests, compute-sanitizer memcheck and
#   racecheck over scripts/cuda_smoke.py, and the GPU benchmark.
# Summaries go to $OUT (default build/gpu_check); copy the figures to bench/RESULTS.md.
#   device tool:  bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-build/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
status=0
step() { echo; echo "=== $*"; }

step "build"
$PY -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
$PY -m centerloss_ext | tee "$OUT/build_info.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

step "CUDA tests"
$PY -m pytest -m cuda -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.txt" | tail -30 || status=1

step "compute-sanitizer"
for tool in memcheck racecheck; do
  compute-sanitizer --tool $tool --print-limit 20 $PY scripts/cuda_smoke.py > "$OUT/$tool.txt" 2>&1 || status=1
  tail -3 "$OUT/$tool.txt"
done

step "benchmark"
if [ -f bench/compare.py ]; then
  $PY bench/compare.py --device cuda --out "$OUT/bench" 2>&1 | tee "$OUT/bench.txt" | tail -60 || status=1
fi
exit $status
