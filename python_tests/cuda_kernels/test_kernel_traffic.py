"""The memory-traffic model of the SIMT emulator (simt_emulator/traffic.cpp,
docs/cuda_emulation.md "Memory traffic") against hand-computed sector counts.

Small test kernels (below) are compiled as the `traffic` build compiles csrc/cuda/*.cu
(clang with SanitizerCoverage's load/store hooks, simt.h force-included) and linked with
the emulator's runtime and traffic.cpp into a program that prints the model's records;
about a minute to build on 2 cores, once per session. A last test runs
scripts/kernel_traffic.py at a small shape when the traffic build of the library exists
(python simt_emulator/build.py --variant traffic). Needs clang++-14 and Boost.Context.

    .venv/bin/python -m pytest -q -p no:cacheprovider \
        python_tests/cuda_kernels/test_kernel_traffic.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMU = os.path.join(ROOT, "simt_emulator")
TRAFFIC_LIB = os.path.join(ROOT, "build", "emu", "traffic", "libcenterloss_simt.so")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("clang++-14") is None or shutil.which("g++") is None,
        reason="the traffic model needs clang++-14 and g++",
    ),
]

# Each kernel runs as one launch of its own name; addresses are in device allocations
# (registered with the model as the simt device's allocator does), 512-byte aligned.
KERNELS = r"""
#include <cstdint>
#include <cstdio>
#include <cstdlib>

template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {  // as csrc/cuda/row_math.cuh's load4/store4
  T v[4];
};

// 32 lanes copy a 128-float row as float4: 1 load and 1 store request of 16 sectors each.
__global__ void vec4_row(const float* x, float* out) {
  const int lane = threadIdx.x;
  const Vec4<float> q = *reinterpret_cast<const Vec4<float>*>(x + 4 * lane);
  Vec4<float> r;
  for (int i = 0; i < 4; ++i) r.v[i] = q.v[i] * 2.0f;
  *reinterpret_cast<Vec4<float>*>(out + 4 * lane) = r;
}

// Lane i reads x[8 i]: 32 sectors for 128 bytes (4 sectors' worth): 12.5 %.
__global__ void strided(const float* x, float* out) {
  const int lane = threadIdx.x;
  out[lane] = x[8 * lane];
}

// A warp per 2-float row (as the row kernels at D = 2): lanes 0 and 1 of each warp
// read 8 bytes: 8 rows, 8 requests of 1 sector for 64 bytes (2 sectors): 25 %.
__global__ void two_wide(const float* x, float* out, int rows) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t row = warp; row < rows; row += blockDim.x / 32)
    for (int k = lane; k < 2; k += 32) out[row * 2 + k] = x[row * 2 + k] + 1.0f;
}

// The same 32 x 32 sum, coalesced (lane = column) and planted uncoalesced (lane = row).
// (n = 32 at run time: a loop the compiler cannot unroll and vectorise by itself)
__global__ void sum_coalesced(const float* x, float* out, int n) {
  const int lane = threadIdx.x;
  float s = 0;
  for (int r = 0; r < n; ++r) s += x[r * 32 + lane];
  out[lane] = s;
}
__global__ void sum_uncoalesced(const float* x, float* out, int n) {
  const int lane = threadIdx.x;
  float s = 0;
  for (int c = 0; c < n; ++c) s += x[lane * 32 + c];
  out[lane] = s;
}

// 64 threads add into one counter (64 atomics on one address); the shared array and the
// locals are not device memory.
__global__ void atomics_and_shared(unsigned* counter, float* out) {
  __shared__ float tile[64];
  volatile float local[4];
  for (int i = 0; i < 4; ++i) local[i] = float(threadIdx.x + i);
  tile[threadIdx.x] = local[threadIdx.x % 4];
  __syncthreads();
  atomicAdd(counter, 1u);
  if (threadIdx.x == 0) out[0] = tile[63];
}

// 64 threads add into one float: 2 atomic requests (a warp each) and no load (a float
// atomicAdd is one read-modify-write, as on the GPU, not a load and a CAS).
__global__ void float_atomics(float* sum) { atomicAdd(sum, 1.0f); }

extern "C" const char* simt_traffic_report();

static void* device_alloc(size_t n) {
  void* p = std::aligned_alloc(512, (n + 511) / 512 * 512);
  simt_traffic_alloc(p, n);
  return p;
}

int main() {
  auto* x = static_cast<float*>(device_alloc(4096 * sizeof(float)));
  auto* out = static_cast<float*>(device_alloc(4096 * sizeof(float)));
  auto* counter = static_cast<unsigned*>(device_alloc(sizeof(unsigned)));
  for (int i = 0; i < 4096; ++i) x[i] = float(i);
  *counter = 0;
  vec4_row<<<1, 32>>>(x, out);
  strided<<<1, 32>>>(x, out);
  two_wide<<<1, 256>>>(x, out, 8);
  const int n = std::atoi(std::getenv("ROWS"));
  sum_coalesced<<<1, 32>>>(x, out, n);
  sum_uncoalesced<<<1, 32>>>(x, out, n);
  atomics_and_shared<<<1, 64>>>(counter, out);
  out[8] = 0.0f;
  float_atomics<<<1, 64>>>(out + 8);
  std::printf("%s\n", simt_traffic_report());
  return *counter == 64 && out[8] == 64.0f ? 0 : 1;
}
"""


@pytest.fixture(scope="session")
def records(tmp_path_factory):
    sys.path.insert(0, ROOT)
    from simt_emulator import build, rewrite_launches

    out = tmp_path_factory.mktemp("traffic")
    src = out / "kernels.cpp"
    src.write_text(rewrite_launches.rewrite(KERNELS, "kernels.cu"))
    common = ["-std=c++20", "-O2", "-DSIMT_TRAFFIC", "-I" + EMU]
    objs = []
    for path, cxx, extra in [
        (str(src), "clang++-14", ["-include", os.path.join(EMU, "simt.h")]),
        (os.path.join(EMU, "simt_runtime.cpp"), "g++", []),
        (os.path.join(EMU, "traffic.cpp"), "g++", []),
    ]:
        obj = str(out / (os.path.basename(path) + ".o"))
        flags = build.CU_FLAGS["traffic"] if cxx.startswith("clang") else []
        subprocess.run([cxx, *common, *extra, *flags, "-c", path, "-o", obj], check=True)
        objs.append(obj)
    exe = str(out / "kernels")
    subprocess.run(["g++", *objs, "-o", exe, "-lboost_context", "-lpthread"], check=True)
    env = dict(os.environ, SIMT_WORKERS="1", SIMT_SEED="1", ROWS="32")
    run = subprocess.run([exe], env=env, capture_output=True, text=True, check=True)
    return {r["name"]: r for r in json.loads(run.stdout)}


def _eff(r):
    sectors = r["load_sectors"] + r["store_sectors"] + r["atomic_sectors"]
    need = sum(-(-r[f"{k}_bytes"] // 32) for k in ("load", "store", "atomic"))
    return need / sectors


def test_vec4_row_is_one_request_of_16_sectors(records):
    r = records["vec4_row"]
    assert (r["load_requests"], r["load_sectors"], r["load_bytes"]) == (1, 16, 512)
    assert (r["store_requests"], r["store_sectors"], r["store_bytes"]) == (1, 16, 512)
    assert _eff(r) == 1.0


def test_strided_access(records):
    r = records["strided"]
    assert (r["load_requests"], r["load_sectors"], r["load_bytes"]) == (1, 32, 128)
    assert (r["store_requests"], r["store_sectors"]) == (1, 4)
    assert _eff(r) == pytest.approx((4 + 4) / (32 + 4))


def test_two_wide_rows_a_warp_each(records):
    r = records["two_wide"]
    assert (r["load_requests"], r["load_sectors"], r["load_bytes"]) == (8, 8, 64)
    assert (r["store_requests"], r["store_sectors"], r["store_bytes"]) == (8, 8, 64)
    assert _eff(r) == pytest.approx(4 / 16)


def test_planted_uncoalesced_access_shows(records):
    good, bad = records["sum_coalesced"], records["sum_uncoalesced"]
    assert (good["load_requests"], good["load_sectors"]) == (32, 32 * 4)
    assert (bad["load_requests"], bad["load_sectors"]) == (32, 32 * 32)
    assert good["load_bytes"] == bad["load_bytes"] == 4096
    assert _eff(good) == 1.0
    assert _eff(bad) < 0.15


def test_atomics_per_address_and_no_stack_or_shared(records):
    r = records["atomics_and_shared"]
    assert r["atomic_accesses"] == 64 and r["max_atomics_per_address"] == 64
    assert r["atomic_requests"] == 2 and r["atomic_sectors"] == 2  # one per warp
    assert r["load_accesses"] == 0  # tile[] and local[] are not device memory
    assert (r["store_accesses"], r["store_bytes"]) == (1, 4)  # out[0] only


def test_float_atomic_is_not_also_a_load(records):
    r = records["float_atomics"]
    assert (r["atomic_accesses"], r["atomic_requests"], r["atomic_sectors"]) == (64, 2, 2)
    assert r["load_accesses"] == 0 and r["store_accesses"] == 0


needs_traffic_lib = pytest.mark.skipif(
    not os.path.exists(TRAFFIC_LIB), reason="python simt_emulator/build.py --variant traffic"
)


def _script_json(shape: str, *options: str) -> dict:
    """scripts/kernel_traffic.py --shape SHAPE --json, in its own process (it loads the
    traffic build of the emulator, which must not meet another build in this one)."""
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "kernel_traffic.py")]
        + ["--shape", shape, "--json", *options],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout)


@needs_traffic_lib
def test_script_at_the_mnist_shape():
    res = _script_json("128,2,10")
    keys = {
        "kernel",
        "launches",
        "load_requests",
        "store_requests",
        "load_sectors",
        "store_sectors",
        "min_sectors",
        "sector_efficiency",
        "atomics",
        "max_atomics_per_address",
        "bytes",
        "predicted_us",
    }
    kernels = {k["kernel"]: k for k in res["kernels"]}
    assert all(keys <= set(k) for k in kernels.values())
    assert res["step"]["our_launches"] <= 4  # memset + forward + update + grad rows
    grad = next(k for n, k in kernels.items() if n.startswith("grad_features_kernel"))
    # Narrow rows: 2 lanes a row, 16 rows a warp, 8 warps. Loads: the diff rows (1 KB) in
    # 8 requests of 4 sectors, and the mean's one scale, a request of a sector per warp;
    # stores: the gradient rows, 8 requests of 4 sectors (a warp a row: 128 and 128).
    assert (grad["load_requests"], grad["load_sectors"]) == (16, 40)
    assert (grad["store_requests"], grad["store_sectors"]) == (8, 32)
    assert res["step"]["predicted_us"] > res["step"]["floor_us"]


@needs_traffic_lib
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_default_step_targets_at_many_classes(dtype):
    """B = 4,096, D = 128, C = 100k: every class has at most 32 rows, so the update sums
    each one by walking its list (no atomics, each row of x and each center read once:
    for bfloat16 features, 2 bytes an element where the float32 diff row would be 4);
    every kernel >= 80 % sector efficiency and the step within 1.5x of its bytes' time."""
    B, D = 4096, 128
    res = _script_json(f"{B},{D},100000", "--dtype", dtype)
    kernels = {k["kernel"].split("<")[0]: k for k in res["kernels"]}
    update = kernels["alpha_update_atomic_kernel"]
    assert update["atomics"] == 0
    # Below what reading the float32 diff rows (B x D x 4) and each center twice costs,
    # before the labels, flags and lists (about 5 sectors a row: 160 B); for float32 x,
    # the same as those rows.
    row_bytes = B * D * (2 if dtype == "bfloat16" else 4)
    centers = 2 * res["step"]["classes_in_batch"] * D * 4
    assert row_bytes + centers < update["bytes"] < row_bytes + centers + 192 * B
    for name in ("forward_rows_kernel", "alpha_update_atomic_kernel", "grad_features_kernel"):
        assert kernels[name]["sector_efficiency"] >= 0.8, name
    assert res["step"]["memory_ratio"] <= 1.5
    assert res["step"]["our_launches"] == 4
