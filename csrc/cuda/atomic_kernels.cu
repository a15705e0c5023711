// The default (non-deterministic) center paths, for diff rows and centers of one dtype T
// (float or double), T being then the accumulation type. The alpha update forms each
// class's sum with atomic adds into a slot of the workspace (opened and zeroed by the
// forward kernel) and the class's last row adds it to the center: one rounding per
// center element, as in the sorted path; the order of the additions into a slot varies
// run to run. The center gradient adds each row into the dense gradient with atomics.
// Anything else (16-bit centers, float64 features with float32 centers) takes the sorted
// path, where sums are formed in the accumulation type and rounded once.
#include <ATen/Dispatch.h>

#include "kernels.h"

namespace centerloss {
namespace cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kBlock)
    alpha_update_atomic_kernel(const T* __restrict__ diff, Labels y,
                               const uint8_t* __restrict__ finite, T* __restrict__ c, int64_t B,
                               int64_t D, T alpha, Workspace ws) {
  if (*ws.bad != 0) return;  // a bad label anywhere: leave every center as it was
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  T* sums = static_cast<T*>(ws.sums);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       row < B; row += warps) {
    if (!finite[row]) continue;
    const int64_t label = y[row];
    const int n = ws.counts[label];
    // The paper's rule moves c_j by alpha * sum(d_i) / (1 + n_j).
    const T scale = alpha / static_cast<T>(1 + n);
    const T* dr = diff + row * D;
    T* cr = c + label * D;
    if (n == 1) {  // the class's only row: its share, rounded once, by its only writer
      for (int64_t k = lane; k < D; k += kWarp) cr[k] = cr[k] + scale * dr[k];
      continue;
    }
    // Two or more rows: the sum is formed in the class's slot (T is the accumulation
    // type), and the last row to add its share applies it, so each center element is
    // rounded once per step, as on the CPU and the sorted path.
    const int slot = ws.slot_of[label];
    T* sr = sums + static_cast<int64_t>(slot) * D;
    for (int64_t k = lane; k < D; k += kWarp) atomicAdd(sr + k, dr[k]);
    __threadfence();  // this warp's additions, visible before its arrival is counted
    __syncwarp();
    unsigned int arrived = 0;
    if (lane == 0) arrived = atomicAdd(ws.slot_done + slot, 1u) + 1;
    arrived = __shfl_sync(0xffffffffu, arrived, 0);
    if (arrived != static_cast<unsigned int>(n)) continue;
    __threadfence();            // every other row's additions, visible to the reads below
    const volatile T* vs = sr;  // past L1: other SMs wrote it
    for (int64_t k = lane; k < D; k += kWarp) cr[k] = cr[k] + scale * vs[k];
  }
}

template <typename T, typename g_t>
__global__ void __launch_bounds__(kBlock)
    grad_centers_atomic_kernel(const T* __restrict__ diff, Labels y, GradScale<g_t> g,
                               T* __restrict__ grad_c, int64_t B, int64_t D, int64_t C,
                               Workspace ws) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       row < B; row += warps) {
    const int64_t label = y[row];
    if (label < 0 || label >= C) {  // never written: recorded for the host's IndexError
      if (lane == 0) atomicMax(ws.bad, static_cast<unsigned long long>(B - row));
      continue;
    }
    const T s = -g.template at<T>(row);
    const T* dr = diff + row * D;
    T* out = grad_c + label * D;
    for (int64_t k = lane; k < D; k += kWarp) atomicAdd(out + k, s * dr[k]);
  }
}

}  // namespace

void launch_alpha_update_atomic(const at::Tensor& diff, const at::Tensor& labels,
                                const at::Tensor& finite, at::Tensor& c, double alpha,
                                const Workspace& ws) {
  const int64_t B = diff.size(0), D = diff.size(1);
  if (B == 0) return;
  TORCH_INTERNAL_ASSERT(diff.scalar_type() == c.scalar_type());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "centerloss_update_atomic", [&] {
    const int64_t blocks = row_blocks(alpha_update_atomic_kernel<scalar_t>, B);
    alpha_update_atomic_kernel<scalar_t><<<blocks, kBlock, 0, stream>>>(
        diff.const_data_ptr<scalar_t>(), labels_view(labels), finite.const_data_ptr<uint8_t>(),
        c.data_ptr<scalar_t>(), B, D, static_cast<scalar_t>(alpha), ws);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch_grad_centers_atomic(const at::Tensor& grad_loss, const at::Tensor& diff,
                                const at::Tensor& labels, Reduction reduction, at::Tensor& grad_c,
                                const Workspace& ws) {
  const int64_t B = diff.size(0), D = diff.size(1);
  if (B == 0) return;
  TORCH_INTERNAL_ASSERT(diff.scalar_type() == grad_c.scalar_type());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad_c.scalar_type(), "centerloss_grad_c_atomic", [&] {
    using g_t = scalar_t;  // grad_loss arrives in the loss dtype of diff's: scalar_t
    const int64_t blocks = row_blocks(grad_centers_atomic_kernel<scalar_t, g_t>, B);
    grad_centers_atomic_kernel<scalar_t, g_t>
        <<<blocks, kBlock, 0, stream>>>(diff.const_data_ptr<scalar_t>(), labels_view(labels),
                                        grad_scale<g_t>(grad_loss, reduction, B),
                                        grad_c.data_ptr<scalar_t>(), B, D, grad_c.size(0), ws);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace centerloss
