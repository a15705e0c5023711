// Building blocks shared by the CUDA kernels: accumulation types, vector row access,
// warp sums, the per-call workspace and launch geometry.
#pragma once

#include "../center_loss.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <type_traits>

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
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

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

// Per-call device workspace, zeroed by one cudaMemsetAsync (header + counts):
//  bad: B - (first row whose label is out of range), 0 when none (atomicMax keeps the
//       first row); every kernel that writes centers returns early when it is set.
//  blocks_done: the last-block-done counter of the loss reduction.
//  counts: per-class number of finite rows (default update path only; O(C) ints).
//  partials: one loss partial per block of the forward kernel (not zeroed).
struct Workspace {
  unsigned long long* bad;
  unsigned int* blocks_done;
  int* counts;
  void* partials;
};

struct WorkspaceBuffer {
  at::Tensor storage;
  Workspace ws;
  // Allocates and zeroes what needs zeroing: O(num_classes) ints when with_counts.
  WorkspaceBuffer(const at::Tensor& like, int64_t num_classes, bool with_counts,
                  int64_t num_partials, size_t partial_size);
};

// Blocks for a grid-stride loop over `rows` rows, a warp per row: enough to fill the
// device, fixed for a device and B (so the loss partials, and thus the loss, are
// bit-identical run to run).
int64_t row_blocks(int64_t rows);

}  // namespace cuda
}  // namespace centerloss
