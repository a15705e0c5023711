// The forward rows kernel: reads x and the gathered centers once and writes everything
// the rest of the step needs (loss, diff rows, finite flags, per-class counts, and the
// zeroed class-sum slots of the atomic update).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "kernels.h"

namespace centerloss {
namespace cuda {
namespace {

// Registers (scripts/ptxas_check.sh, 2026-12-07): 40-56 for every dtype pair, no spill;
// <double, double> on sm_80 takes 64 since the class-sum slot was added (was 48 and an
// 8-byte spill): 4 blocks of 8 warps per SM instead of 5, for float64 rows only.
// ptxas-spill-ok: forward_rows_kernel: a stack slot, if one comes back, stays in L1,
// against a row of x and of c read from memory per warp; not worth a separate kernel.
template <typename scalar_t, typename center_t>
__global__ void __launch_bounds__(kBlock)
    forward_rows_kernel(const scalar_t* __restrict__ x, Labels y, const center_t* __restrict__ c,
                        int64_t B, int64_t D, int64_t C, bool vec, int reduction,
                        loss_type<scalar_t>* __restrict__ loss,
                        acc_type<scalar_t, center_t>* __restrict__ diff,
                        uint8_t* __restrict__ finite, Workspace ws) {
  using acc_t = acc_type<scalar_t, center_t>;
  using loss_t = loss_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  acc_t my_loss = 0;  // lane 0's running sum of its rows' losses (mean/sum)

  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       row < B; row += warps) {
    const int64_t label = y[row];
    acc_t* dr = diff ? diff + row * D : nullptr;
    if (label < 0 || label >= C) {  // never read c[label]: record the row, zero its diff
      if (lane == 0) {
        atomicMax(ws.bad, static_cast<unsigned long long>(B - row));
        if (reduction == 0) loss[row] = std::numeric_limits<loss_t>::quiet_NaN();
        if (finite) finite[row] = 0;
      }
      if (dr)
        for (int64_t k = lane; k < D; k += kWarp) dr[k] = acc_t(0);
      continue;
    }
    const scalar_t* xr = x + row * D;
    const center_t* cr = c + label * D;
    acc_t ss = 0, probe = 0;  // probe: d * 0 is NaN exactly when d is inf or NaN
    if (vec) {
      for (int64_t k = lane * 4; k < D; k += 4 * kWarp) {
        acc_t xv[4], cv[4], d[4];
        load4(xr + k, xv);
        load4(cr + k, cv);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          d[i] = xv[i] - cv[i];
          ss += d[i] * d[i];
          probe += d[i] * acc_t(0);
        }
        if (dr) store4(dr + k, d);
      }
    } else {
      for (int64_t k = lane; k < D; k += kWarp) {
        const acc_t d = static_cast<acc_t>(xr[k]) - static_cast<acc_t>(cr[k]);
        ss += d * d;
        probe += d * acc_t(0);
        if (dr) dr[k] = d;
      }
    }
    ss = warp_sum(ss);
    probe = warp_sum(probe);
    int slot = -1;  // set when this row is its class's second finite row: it opens the slot
    if (lane == 0) {
      const acc_t l = acc_t(0.5) * ss;
      if (reduction == 0) {
        loss[row] = static_cast<loss_t>(l);
      } else {
        my_loss += l;
      }
      const bool ok = probe == acc_t(0);
      if (finite) finite[row] = ok;
      if (ws.counts && ok && atomicAdd(ws.counts + label, 1) == 1) {
        slot = static_cast<int>(atomicAdd(ws.slots_used, 1u));
        ws.slot_of[label] = slot;
        ws.slot_done[slot] = 0;
      }
    }
    if (ws.counts) {  // the atomic update's class sum starts at zero (read in the next launch)
      slot = __shfl_sync(0xffffffffu, slot, 0);
      if (slot >= 0) {
        acc_t* sr = static_cast<acc_t*>(ws.sums) + static_cast<int64_t>(slot) * D;
        for (int64_t k = lane; k < D; k += kWarp) sr[k] = acc_t(0);
      }
    }
  }
  if (reduction == 0 || loss == nullptr) return;

  // Reduce the loss in this launch: warp partials -> block partial -> the last block
  // to finish sums the block partials in block order (bit-identical run to run).
  __shared__ acc_t warp_part[kWarpsPerBlock];
  __shared__ bool is_last;
  if (lane == 0) warp_part[threadIdx.x / kWarp] = my_loss;
  __syncthreads();
  acc_t* partials = static_cast<acc_t*>(ws.partials);
  if (threadIdx.x == 0) {
    acc_t s = 0;
    for (int w = 0; w < kWarpsPerBlock; ++w) s += warp_part[w];
    partials[blockIdx.x] = s;
    __threadfence();
    is_last = atomicAdd(ws.blocks_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last || threadIdx.x >= kWarp) return;
  __threadfence();
  double s = 0;  // fixed order: lane l takes blocks l, l+32, ...; then a fixed shuffle tree
  for (int64_t b = lane; b < gridDim.x; b += kWarp)
    s += static_cast<double>(const_cast<volatile acc_t*>(partials)[b]);
  s = warp_sum(s);
  if (lane == 0) {
    if (*const_cast<volatile unsigned long long*>(ws.bad) != 0)
      s = std::numeric_limits<double>::quiet_NaN();
    if (reduction == 1) s /= static_cast<double>(B);
    *loss = static_cast<loss_t>(s);
  }
}

}  // namespace

int64_t forward_rows_blocks(const at::Tensor& x, const at::Tensor& c) {
  int64_t blocks = 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "centerloss_forward_grid", [&] {
        using feat_t = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, c.scalar_type(), "centerloss_forward_grid_c",
            [&] { blocks = row_blocks(forward_rows_kernel<feat_t, scalar_t>, x.size(0)); });
      });
  return blocks;
}

void launch_forward_rows(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& c,
                         Reduction reduction, at::Tensor* loss, at::Tensor* diff,
                         at::Tensor* finite, const Workspace& ws, int64_t blocks) {
  const int64_t B = x.size(0), D = x.size(1), C = c.size(0);
  if (B == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "centerloss_forward", [&] {
        using feat_t = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, c.scalar_type(), "centerloss_forward_c", [&] {
              using center_t = scalar_t;
              using loss_t = loss_type<feat_t>;
              using acc_t = acc_type<feat_t, center_t>;
              const bool vec = D % 4 == 0 && aligned4(x.const_data_ptr(), sizeof(feat_t)) &&
                               aligned4(c.const_data_ptr(), sizeof(center_t)) &&
                               (!diff || aligned4(diff->const_data_ptr(), sizeof(acc_t)));
              forward_rows_kernel<feat_t, center_t><<<blocks, kBlock, 0, stream>>>(
                  x.const_data_ptr<feat_t>(), labels_view(labels), c.const_data_ptr<center_t>(), B,
                  D, C, vec, static_cast<int>(reduction), loss ? loss->data_ptr<loss_t>() : nullptr,
                  diff ? diff->data_ptr<acc_t>() : nullptr,
                  finite ? finite->data_ptr<uint8_t>() : nullptr, ws);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
      });
}

}  // namespace cuda
}  // namespace centerloss
