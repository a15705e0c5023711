// The forward rows kernel: reads x and the gathered centers once and writes everything
// the rest of the step needs (loss, diff rows, finite flags, and for the atomic update
// the per-class counts, row lists and zeroed class-sum slots).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "kernels.h"

namespace centerloss {
namespace cuda {
namespace {

// Registers: scripts/ptxas_check.sh prints them per instantiation (docs/cuda_emulation.md).
// ptxas-spill-ok: forward_rows_kernel: a stack slot, if one comes back, stays in L1,
// against a row of x and of c read from memory per warp; not worth a separate kernel.
template <typename scalar_t, typename center_t>
__global__ void __launch_bounds__(kBlock)
    forward_rows_kernel(const scalar_t* __restrict__ x, Labels y, const center_t* __restrict__ c,
                        int64_t B, int64_t D, int64_t C, int G, bool vec, int reduction,
                        loss_type<scalar_t>* __restrict__ loss,
                        acc_type<scalar_t, center_t>* __restrict__ diff,
                        uint8_t* __restrict__ finite, Workspace ws) {
  using acc_t = acc_type<scalar_t, center_t>;
  using loss_t = loss_type<scalar_t>;
  const int lane = threadIdx.x % kWarp, sub = lane % G;  // sub: this lane's place in its row
  const int64_t per_warp = kWarp / G;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock * per_warp;
  acc_t my_loss = 0;  // each row's lane 0: its rows' losses (mean/sum)

  for (int64_t base =
           (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp) * per_warp;
       base < B; base += step) {
    const int64_t row = base + lane / G;
    const bool active = row < B;
    const int64_t label = active ? y[row] : 0;
    const bool bad = active && (label < 0 || label >= C);
    acc_t* dr = diff && active ? diff + row * D : nullptr;
    acc_t ss = 0, probe = 0;  // probe: d * 0 is NaN exactly when d is inf or NaN
    if (bad) {                // never read c[label]: record the row, zero its diff
      if (sub == 0) {
        atomicMax(ws.bad, static_cast<unsigned long long>(B - row));
        if (reduction == 0) loss[row] = std::numeric_limits<loss_t>::quiet_NaN();
        if (finite) finite[row] = 0;
      }
      if (dr)
        for (int64_t k = sub; k < D; k += G) dr[k] = acc_t(0);
    } else if (active) {
      const scalar_t* xr = x + row * D;
      const center_t* cr = c + label * D;
      if (vec) {
        for (int64_t k = sub * 4; k < D; k += 4 * G) {
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
        for (int64_t k = sub; k < D; k += G) {
          const acc_t d = static_cast<acc_t>(xr[k]) - static_cast<acc_t>(cr[k]);
          ss += d * d;
          probe += d * acc_t(0);
          if (dr) dr[k] = d;
        }
      }
    }
    ss = group_sum(ss, G);
    probe = group_sum(probe, G);
    int slot = -1;  // set when this row is its class's (kWalkRows + 1)-th: it opens the slot
    if (active && !bad && sub == 0) {
      const acc_t l = acc_t(0.5) * ss;
      if (reduction == 0) {
        loss[row] = static_cast<loss_t>(l);
      } else {
        my_loss += l;
      }
      const bool ok = probe == acc_t(0);
      if (finite) finite[row] = ok;
      if (ws.heads && ok) {  // link the row into its class's list, for the update kernel
        const int rank = atomicAdd(ws.counts + label, 1);
        ws.next[row] = atomicExch(ws.heads + label, static_cast<int>(row + 1));
        if (rank == kWalkRows) {
          slot = static_cast<int>(atomicAdd(ws.slots_used, 1u));
          ws.slot_of[label] = slot;
          ws.slot_done[slot] = 0;
        }
      }
    }
    if (ws.heads) {  // a large class's sum starts at zero (read in the next launch)
      slot = __shfl_sync(0xffffffffu, slot, lane - sub);
      if (slot >= 0) {
        acc_t* sr = static_cast<acc_t*>(ws.sums) + static_cast<int64_t>(slot) * D;
        for (int64_t k = sub; k < D; k += G) sr[k] = acc_t(0);
      }
    }
  }
  my_loss = group_sum(my_loss, kWarp);  // the warp's rows, lane 0 first (one row a warp: exact)
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
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(),
                                        "centerloss_forward_grid_c", [&] {
                                          blocks = row_blocks(forward_rows_kernel<feat_t, scalar_t>,
                                                              x.size(0), lanes_per_row(x.size(1)));
                                        });
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
                  D, C, lanes_per_row(D), vec, static_cast<int>(reduction),
                  loss ? loss->data_ptr<loss_t>() : nullptr,
                  diff ? diff->data_ptr<acc_t>() : nullptr,
                  finite ? finite->data_ptr<uint8_t>() : nullptr, ws);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
      });
}

}  // namespace cuda
}  // namespace centerloss
