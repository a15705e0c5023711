// Row-wise building blocks of the CUDA kernels (the counterpart of cpu/row_math.h):
// loss and accumulation types, warp sums, vector row access, label views, uninitialised
// allocations and the launch geometry of the row kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../center_loss.h"

namespace centerloss {
namespace cuda {

// The loss dtype: the features' own, float32 for 16-bit features.
template <typename scalar_t>
using loss_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

constexpr int kWarp = 32;
constexpr int kBlock = 256;  // threads per block of the row kernels: 8 warps, a row each
constexpr int kWarpsPerBlock = kBlock / kWarp;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// A sum over the G lanes of each aligned group of G lanes (G a power of two <= 32):
// every lane of the warp must call it; G = 32 is warp_sum, in the same order.
template <typename T>
__device__ __forceinline__ T group_sum(T v, int G) {
  for (int offset = G / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Narrow rows: the row kernels give each row G lanes (a power of two) and a warp 32 / G
// rows at a time, so that a warp's request covers 32 / G consecutive rows, not one row
// of D elements in a 32-lane request (at D = 2: 2 of 32 lanes busy, 8 bytes a sector).
// G is the fewest lanes that cover the row in one pass of 4-element vectors (D % 4 == 0)
// or of elements, at most 32. A performance choice only: every kernel loops over its
// row's elements with stride G (4 G), so any G is correct.
inline int lanes_per_row(int64_t D) {
  const int64_t per_lane = D % 4 == 0 ? 4 : 1;
  const int64_t need = (D + per_lane - 1) / per_lane;
  int g = 1;
  while (g < need && g < kWarp) g <<= 1;
  return g;
}

// Every row kernel walks its rows in grid-stride steps: warp w of the grid takes rows
// base .. base + 32 / G - 1, lane l the row base + l / G as its lane l % G of that row.
// The loop bound is the warp's, so all its lanes run the same steps and warp primitives
// may follow inside the loop; a lane past the last row is inactive, not gone.

// Four consecutive elements moved as one aligned vector (16 bytes for float, 8 for
// 16-bit types): the rows kernels use it when D % 4 == 0 and the bases are aligned.
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

template <typename acc_t, typename T>
__device__ __forceinline__ void load4(const T* p, acc_t out[4]) {
  const Vec4<T> q = *reinterpret_cast<const Vec4<T>*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = static_cast<acc_t>(q.v[i]);
}

template <typename acc_t, typename T>
__device__ __forceinline__ void store4(T* p, const acc_t in[4]) {
  Vec4<T> q;
#pragma unroll
  for (int i = 0; i < 4; ++i) q.v[i] = static_cast<T>(in[i]);
  *reinterpret_cast<Vec4<T>*>(p) = q;
}

// kPerLane (4 or 1) consecutive elements: one aligned vector, or one element.
template <int kPerLane, typename acc_t, typename T>
__device__ __forceinline__ void load_cols(const T* p, acc_t out[kPerLane]) {
  if constexpr (kPerLane == 4) {
    load4(p, out);
  } else {
    out[0] = static_cast<acc_t>(p[0]);
  }
}

template <int kPerLane, typename acc_t, typename T>
__device__ __forceinline__ void store_cols(T* p, const acc_t in[kPerLane]) {
  if constexpr (kPerLane == 4) {
    store4(p, in);
  } else {
    p[0] = static_cast<T>(in[0]);
  }
}

inline bool aligned4(const void* p, size_t elem_size) {
  return reinterpret_cast<uintptr_t>(p) % (4 * elem_size) == 0;
}

// Labels arrive as int64 or int32; exactly one of the two pointers is set. A uniform
// branch per row costs less than a template instantiation per index type.
struct Labels {
  const int64_t* i64 = nullptr;
  const int32_t* i32 = nullptr;
  __device__ __forceinline__ int64_t operator[](int64_t i) const {
    return i64 ? i64[i] : static_cast<int64_t>(i32[i]);
  }
};

inline Labels labels_view(const at::Tensor& labels) {
  Labels l;
  if (labels.scalar_type() == at::kLong) {
    l.i64 = labels.const_data_ptr<int64_t>();
  } else {
    l.i32 = labels.const_data_ptr<int32_t>();
  }
  return l;
}

// Device memory the kernels write in full before reading: at::detail::empty_cuda, which
// never pays the fill that at::empty adds under torch.use_deterministic_algorithms
// (a launch and a write of every byte).
inline at::Tensor empty_cuda(at::IntArrayRef size, const at::TensorOptions& options) {
  return at::detail::empty_cuda(size, options);
}

// Blocks for a grid-stride loop of `kernel` (kBlock threads, G lanes a row) over `rows`
// rows: as many as fit on the device at once by the occupancy API (the kernel's register
// and shared-memory use decide how many blocks an SM holds), fewer for small batches.
// Fixed for a device, a kernel and B, so the forward kernel's loss partials (and the
// loss) are bit-identical run to run.
template <typename Kernel>
int64_t row_blocks(Kernel kernel, int64_t rows, int G = kWarp) {
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBlock, 0));
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t rows_per_block = static_cast<int64_t>(kWarpsPerBlock) * (kWarp / G);
  const int64_t wanted = (rows + rows_per_block - 1) / rows_per_block;
  return std::max<int64_t>(1, std::min(wanted, sms * std::max(per_sm, 1)));
}

// The largest grid.y and grid.z of a launch (grid.x goes to 2^31 - 1).
constexpr int64_t kMaxGridY = 65535;

}  // namespace cuda
}  // namespace centerloss
