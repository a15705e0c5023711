// The default (non-deterministic) center paths: per-row atomic adds into the rows of
// the classes present. Fastest, but the order of the float additions varies run to run.
// Only float/double centers come here: 16-bit atomics would round every addition.
#include "kernels.h"

#include <ATen/Dispatch.h>

namespace centerloss {
namespace cuda {
namespace {

// diff: the forward kernel's rows, in the accumulation type acc_t.
template <typename acc_t, typename center_t>
__global__ void __launch_bounds__(kBlock)
    alpha_update_atomic_kernel(const acc_t* __restrict__ diff, Labels y,
                               const uint8_t* __restrict__ finite, center_t* __restrict__ c,
                               int64_t B, int64_t D, acc_t alpha, Workspace ws) {
  if (*ws.bad != 0) return;  // a bad label anywhere: leave every center as it was
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       row < B; row += warps) {
    if (!finite[row]) continue;
    const int64_t label = y[row];
    // The paper's rule moves c_j by alpha * sum(d_i) / (1 + n_j): each row adds its share.
    const acc_t scale = alpha / static_cast<acc_t>(1 + ws.counts[label]);
    const acc_t* dr = diff + row * D;
    center_t* cr = c + label * D;
    for (int64_t k = lane; k < D; k += kWarp) atomicAdd(cr + k, static_cast<center_t>(scale * dr[k]));
  }
}

template <typename scalar_t, typename center_t, typename g_t>
__global__ void __launch_bounds__(kBlock)
    grad_centers_atomic_kernel(const scalar_t* __restrict__ diff, Labels y, GradScale<g_t> g,
                               center_t* __restrict__ grad_c, int64_t B, int64_t D, int64_t C) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       row < B; row += warps) {
    const int64_t label = y[row];
    if (label < 0 || label >= C) continue;  // memory safety; forward reported it
    const center_t s = -g.template operator()<center_t>(row);
    const scalar_t* dr = diff + row * D;
    center_t* out = grad_c + label * D;
    for (int64_t k = lane; k < D; k += kWarp) atomicAdd(out + k, s * static_cast<center_t>(dr[k]));
  }
}

}  // namespace

void launch_alpha_update_atomic(const at::Tensor& diff, const at::Tensor& labels,
                                const at::Tensor& finite, at::Tensor& c, double alpha,
                                const Workspace& ws) {
  const int64_t B = diff.size(0), D = diff.size(1);
  if (B == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(diff.scalar_type(), "centerloss_update", [&] {
    using acc_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "centerloss_update_c", [&] {
      using center_t = scalar_t;
      alpha_update_atomic_kernel<acc_t, center_t><<<row_blocks(B), kBlock, 0, stream>>>(
          diff.const_data_ptr<acc_t>(), labels_view(labels), finite.const_data_ptr<uint8_t>(),
          c.data_ptr<center_t>(), B, D, static_cast<acc_t>(alpha), ws);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void launch_grad_centers_atomic(const at::Tensor& grad_loss, const at::Tensor& diff,
                                const at::Tensor& labels, Reduction reduction,
                                at::Tensor& grad_c) {
  const int64_t B = diff.size(0), D = diff.size(1);
  if (B == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool none = reduction == Reduction::None;
  const double inv_b = reduction == Reduction::Mean ? 1.0 / static_cast<double>(B) : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, diff.scalar_type(), "centerloss_grad_c", [&] {
    using feat_t = scalar_t;
    using g_t = loss_type<feat_t>;
    const GradScale<g_t> g{grad_loss.const_data_ptr<g_t>(), none ? grad_loss.stride(0) : 0, inv_b};
    AT_DISPATCH_FLOATING_TYPES(grad_c.scalar_type(), "centerloss_grad_c_c", [&] {
      using center_t = scalar_t;
      grad_centers_atomic_kernel<feat_t, center_t, g_t><<<row_blocks(B), kBlock, 0, stream>>>(
          diff.const_data_ptr<feat_t>(), labels_view(labels), g, grad_c.data_ptr<center_t>(), B,
          D, grad_c.size(0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace cuda
}  // namespace centerloss
