// Host-side launchers of the CUDA kernels (one .cu file per family, compiled in
// parallel); center_loss_cuda.cu composes them into the ops.
#pragma once

#include "../center_loss.h"
#include "common.cuh"

namespace centerloss {
namespace cuda {

// forward_kernels.cu — one warp per row: d = x - c[y], per-row loss (reduced in the same
// launch by the last block, in a fixed order), the diff rows and finite flags when asked,
// per-class counts when ws.counts is set. Rows with out-of-range labels are recorded in
// ws.bad and never read c.
void launch_forward_rows(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& c,
                         Reduction reduction, at::Tensor* loss, at::Tensor* diff,
                         at::Tensor* finite, const Workspace& ws, int64_t blocks);

// atomic_kernels.cu — the default (fastest) paths, float/double centers only:
// c[y_i] += alpha * d_i / (1 + n_{y_i}) for finite rows, with atomics; nothing when ws.bad.
void launch_alpha_update_atomic(const at::Tensor& diff, const at::Tensor& labels,
                                const at::Tensor& finite, at::Tensor& c, double alpha,
                                const Workspace& ws);
// grad_c[y_i] -= s_i * d_i, with atomics (grad_c zero-filled by the caller).
void launch_grad_centers_atomic(const at::Tensor& grad_loss, const at::Tensor& diff,
                                const at::Tensor& labels, Reduction reduction,
                                at::Tensor& grad_c);

// segmented_kernels.cu — the deterministic paths: per-class sums over the label-sorted
// rows in fixed windows, each class finished by exactly one thread per column.
void launch_alpha_update_sorted(const at::Tensor& diff, const at::Tensor& labels,
                                const at::Tensor& finite, at::Tensor& c, double alpha,
                                const Workspace& ws);
void launch_grad_centers_sorted(const at::Tensor& grad_loss, const at::Tensor& diff,
                                const at::Tensor& labels, Reduction reduction,
                                at::Tensor& grad_c);

// backward_kernels.cu — grad_x = d * s (s: g_i, g or g / B).
void launch_grad_features(const at::Tensor& grad_loss, const at::Tensor& diff,
                          Reduction reduction, at::Tensor& out);

// Per-row scale of the incoming gradient, read on the device.
template <typename g_t>
struct GradScale {
  const g_t* g;
  int64_t stride;  // 0 for mean/sum (one value), grad_loss.stride(0) for none
  double inv_b;    // 1/B for mean, 1 otherwise
  template <typename acc_t>
  __device__ __forceinline__ acc_t operator()(int64_t row) const {
    return static_cast<acc_t>(g[row * stride]) * static_cast<acc_t>(inv_b);
  }
};

}  // namespace cuda
}  // namespace centerloss
