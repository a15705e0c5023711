// The default (non-deterministic) center paths, for diff rows and centers of one dtype T
// (float or double), T being then the accumulation type. The alpha update forms each
// class's sum in T, from the class's list of rows of x (linked by the forward kernel,
// each d = x - c formed again as it did) or, for a
// class of more than kWalkRows rows, with atomic adds into a slot of the workspace, and
// adds it to the center once: one rounding per center element, as in the sorted path;
// the order of the additions (the list's, the atomics') varies run to run. The center gradient adds
// each row into the dense gradient with atomics. Anything else (16-bit centers, float64 features
// with float32 centers) takes the sorted path, where sums are formed in the accumulation type and
// rounded once.
#include <ATen/Dispatch.h>

#include "kernels.h"

namespace centerloss {
namespace cuda {
namespace {

// Columns k .. k + kPerLane - 1 of one class of n rows: the rows' d = x - c, formed in T
// exactly as the forward kernel formed them (so the same values as its diff rows, read
// here from x: half the bytes for 16-bit features), summed in list order in T; then the
// center moves by scale times the sum, one rounding. row_of(j) gives the j-th row and is
// called by every lane (the warp walk shuffles); `active` lanes load and store.
template <int kPerLane, typename T, typename feat_t, typename RowOf>
__device__ __forceinline__ void update_class_columns(const feat_t* __restrict__ x,
                                                     T* __restrict__ cr, int64_t k, bool active,
                                                     int64_t D, int n, T scale, RowOf row_of) {
  T cv[kPerLane] = {}, acc[kPerLane] = {};
  if (active) load_cols<kPerLane>(cr + k, cv);
  for (int j = 0; j < n; ++j) {
    const int64_t r = row_of(j);
    if (!active) continue;
    T v[kPerLane];
    load_cols<kPerLane>(x + r * D + k, v);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] += v[i] - cv[i];
  }
  if (!active) return;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) cv[i] = cv[i] + scale * acc[i];
  store_cols<kPerLane>(cr + k, cv);
}

// The class of `head` (n rows, n <= kWalkRows), summed by the whole warp (G = 32): the
// lanes walk the list together, lane j keeping its j-th row; then per column block of
// kPerLane elements a lane (4: aligned rows, as vectors) the warp sums the n rows.
template <int kPerLane, typename T, typename feat_t>
__device__ __forceinline__ void walk_class_warp(const feat_t* __restrict__ x,
                                                const int* __restrict__ next, T* __restrict__ cr,
                                                int64_t head, int n, int64_t D, T scale) {
  const int lane = threadIdx.x % kWarp;
  int idx = static_cast<int>(head), my_row = 0;
  for (int j = 0; j < n; ++j) {
    if (lane == j) my_row = idx;
    if (j + 1 < n) idx = next[idx] - 1;
  }
  auto row_of = [&](int j) { return static_cast<int64_t>(__shfl_sync(0xffffffffu, my_row, j)); };
  for (int64_t k0 = 0; k0 < D; k0 += kPerLane * kWarp) {
    const int64_t k = k0 + lane * kPerLane;
    update_class_columns<kPerLane>(x, cr, k, k < D, D, n, scale, row_of);
  }
}

// The same for a narrow row (G < 32 lanes, lane `sub` of them): the row's lanes walk the
// list, each for its own columns (one pass when the row is aligned, as lanes_per_row
// chose G; a walk per pass otherwise).
template <int kPerLane, typename T, typename feat_t>
__device__ __forceinline__ void walk_class_lanes(const feat_t* __restrict__ x,
                                                 const int* __restrict__ next, T* __restrict__ cr,
                                                 int64_t head, int n, int64_t D, int G, int sub,
                                                 T scale) {
  for (int64_t k = sub * kPerLane; k < D; k += kPerLane * G) {
    int64_t r = head;
    auto row_of = [&](int j) {
      if (j > 0) r = next[r] - 1;
      return r;
    };
    update_class_columns<kPerLane>(x, cr, k, true, D, n, scale, row_of);
  }
}

// ptxas-spill-ok: alpha_update_atomic_kernel: 24-44 bytes stored, 16-44 loaded (ptxas
// keeps it at 32-48 registers; 0 for float features with float centers on sm_80, and for
// double centers on sm_90) since the walk reads x with four inlined walk variants: stack
// slots that stay in L1, in a kernel whose every row is a read of D elements from memory.
// G lanes a row (lanes_per_row). Each class's sum is formed in T (the accumulation type)
// and added to its center once, so each center element is rounded once per call, as on
// the CPU and the sorted path: a class of at most kWalkRows rows by its list's head (the
// row linked last in the forward kernel), which reads the center and each of the class's
// rows of x once; a larger class through its slot, which every row adds its diff row
// into with atomics and the last to arrive applies.
template <typename T, typename feat_t>
__global__ void __launch_bounds__(kBlock)
    alpha_update_atomic_kernel(const feat_t* __restrict__ x, const T* __restrict__ diff, Labels y,
                               const uint8_t* __restrict__ finite, T* __restrict__ c, int64_t B,
                               int64_t D, int G, bool vec, T alpha, Workspace ws) {
  if (*ws.bad != 0) return;  // a bad label anywhere: leave every center as it was
  const int lane = threadIdx.x % kWarp, sub = lane % G;
  const int64_t per_warp = kWarp / G;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock * per_warp;
  T* sums = static_cast<T*>(ws.sums);
  for (int64_t base =
           (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp) * per_warp;
       base < B; base += step) {
    const int64_t row = base + lane / G;
    const bool mine = row < B && finite[row];
    const int64_t label = mine ? y[row] : 0;
    const int n = mine ? ws.counts[label] : 0;
    // The paper's rule moves c_j by alpha * sum(d_i) / (1 + n_j).
    const T scale = alpha / static_cast<T>(1 + n);
    T* cr = c + label * D;
    const bool walk = mine && n <= kWalkRows && ws.heads[label] == row + 1;
    const bool slotted = mine && n > kWalkRows;
    if (walk && G == kWarp) {  // one row a warp: the whole warp walks
      if (vec) {
        walk_class_warp<4>(x, ws.next, cr, row, n, D, scale);
      } else {
        walk_class_warp<1>(x, ws.next, cr, row, n, D, scale);
      }
    } else if (walk) {
      if (vec) {
        walk_class_lanes<4>(x, ws.next, cr, row, n, D, G, sub, scale);
      } else {
        walk_class_lanes<1>(x, ws.next, cr, row, n, D, G, sub, scale);
      }
    }
    if (!__any_sync(0xffffffffu, slotted)) continue;
    // A class of more than kWalkRows rows: its rows add into its slot, the last applies it.
    const int slot = slotted ? ws.slot_of[label] : 0;
    T* sr = sums + static_cast<int64_t>(slot) * D;
    if (slotted)
      for (int64_t k = sub; k < D; k += G) atomicAdd(sr + k, diff[row * D + k]);
    __threadfence();  // this warp's additions, visible before its rows' arrivals count
    __syncwarp();
    unsigned int arrived = 0;
    if (slotted && sub == 0) arrived = atomicAdd(ws.slot_done + slot, 1u) + 1;
    arrived = __shfl_sync(0xffffffffu, arrived, lane - sub);
    if (!slotted || arrived != static_cast<unsigned int>(n)) continue;
    __threadfence();            // every other row's additions, visible to the reads below
    const volatile T* vs = sr;  // past L1: other SMs wrote it
    for (int64_t k = sub; k < D; k += G) cr[k] = cr[k] + scale * vs[k];
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

// Centers (and diff rows) of T, float or double, and features of any float type whose
// accumulation type with T is T; a template, so that `if constexpr` leaves the other
// pairs (float64 features with float32 centers: the sorted path's) uninstantiated.
template <typename T>
void launch_update_for(const at::Tensor& x, const at::Tensor& diff, const at::Tensor& labels,
                       const at::Tensor& finite, at::Tensor& c, double alpha, const Workspace& ws) {
  const int64_t B = diff.size(0), D = diff.size(1);
  const int G = lanes_per_row(D);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "centerloss_update_atomic_x", [&] {
        using feat_t = scalar_t;
        if constexpr (std::is_same_v<acc_type<feat_t, T>, T>) {
          const bool vec = D % 4 == 0 && aligned4(x.const_data_ptr(), sizeof(feat_t)) &&
                           aligned4(diff.const_data_ptr(), sizeof(T)) &&
                           aligned4(c.const_data_ptr(), sizeof(T));
          const int64_t blocks = row_blocks(alpha_update_atomic_kernel<T, feat_t>, B, G);
          alpha_update_atomic_kernel<T, feat_t><<<blocks, kBlock, 0, stream>>>(
              x.const_data_ptr<feat_t>(), diff.const_data_ptr<T>(), labels_view(labels),
              finite.const_data_ptr<uint8_t>(), c.data_ptr<T>(), B, D, G, vec,
              static_cast<T>(alpha), ws);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else {
          TORCH_INTERNAL_ASSERT(false, "atomic update: features ", x.scalar_type(),
                                " sum in another type than centers ", c.scalar_type());
        }
      });
}

}  // namespace

void launch_alpha_update_atomic(const at::Tensor& x, const at::Tensor& diff,
                                const at::Tensor& labels, const at::Tensor& finite, at::Tensor& c,
                                double alpha, const Workspace& ws) {
  if (diff.size(0) == 0) return;
  TORCH_INTERNAL_ASSERT(diff.scalar_type() == c.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "centerloss_update_atomic", [&] {
    launch_update_for<scalar_t>(x, diff, labels, finite, c, alpha, ws);
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
