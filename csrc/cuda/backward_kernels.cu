// d loss / d features = d_i * s_i: one scaled copy of the saved diff rows.
#include <ATen/Dispatch.h>

#include "kernels.h"

namespace centerloss {
namespace cuda {
namespace {

// diff: the saved rows (the accumulation type); out: the features' dtype.
// ptxas-spill-ok: grad_features_kernel: only the float64-rows-to-16-bit instantiations
// (16-bit features with float64 centers, a rare pairing) spill, 4 bytes on sm_80 and 16
// on sm_90, at 32 registers: one stack slot that stays in L1, in a copy-bound kernel;
// every other instantiation has no spill (scripts/ptxas_check.sh).
template <typename scalar_t, typename out_t, typename g_t>
__global__ void __launch_bounds__(kBlock)
    grad_features_kernel(const scalar_t* __restrict__ diff, GradScale<g_t> g,
                         out_t* __restrict__ out, int64_t B, int64_t D, int G, bool vec) {
  using acc_t = acc_type<scalar_t, out_t>;
  const int lane = threadIdx.x % kWarp, sub = lane % G;  // G lanes a row (lanes_per_row)
  const int64_t per_warp = kWarp / G;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock * per_warp;
  // mean/sum: one scale for every row, read once (not a one-sector request per row)
  const acc_t s_all = g.stride == 0 ? g.template at<acc_t>(0) : acc_t(0);
  for (int64_t row =
           (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp) * per_warp +
           lane / G;
       row < B; row += step) {  // no warp primitive here: lanes may leave at their own row
    const acc_t s = g.stride == 0 ? s_all : g.template at<acc_t>(row);
    const scalar_t* dr = diff + row * D;
    out_t* orow = out + row * D;
    if (vec) {
      for (int64_t k = sub * 4; k < D; k += 4 * G) {
        acc_t v[4];
        load4(dr + k, v);
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] *= s;
        store4(orow + k, v);
      }
    } else {
      for (int64_t k = sub; k < D; k += G)
        orow[k] = static_cast<out_t>(static_cast<acc_t>(dr[k]) * s);
    }
  }
}

}  // namespace

void launch_grad_features(const at::Tensor& grad_loss, const at::Tensor& diff, Reduction reduction,
                          at::Tensor& out) {
  const int64_t B = diff.size(0), D = diff.size(1);
  if (B == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, diff.scalar_type(), "centerloss_grad_x", [&] {
        using g_t = loss_type<scalar_t>;
        const GradScale<g_t> g = grad_scale<g_t>(grad_loss, reduction, B);
        using diff_t = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, out.scalar_type(), "centerloss_grad_x_out", [&] {
              using out_t = scalar_t;
              const bool vec = D % 4 == 0 && aligned4(diff.const_data_ptr(), sizeof(diff_t)) &&
                               aligned4(out.const_data_ptr(), sizeof(out_t));
              const int G = lanes_per_row(D);
              const int64_t blocks = row_blocks(grad_features_kernel<diff_t, out_t, g_t>, B, G);
              grad_features_kernel<diff_t, out_t, g_t><<<blocks, kBlock, 0, stream>>>(
                  diff.const_data_ptr<diff_t>(), g, out.data_ptr<out_t>(), B, D, G, vec);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
      });
}

}  // namespace cuda
}  // namespace centerloss
