// The deterministic center paths. Rows are sorted by label (stable: index order within a
// class), cut into fixed windows of kWindow rows; a block sums each class's rows of its
// window column by column, in order. A class that lies inside one window is finished
// there; one that crosses windows leaves partial sums in slots, added up in window order
// by a second kernel. Every sum has one fixed order, so results are bit-identical run to
// run, and no center is read by one block while another writes it.
#include "kernels.h"

#include <ATen/Dispatch.h>

namespace centerloss {
namespace cuda {
namespace {

constexpr int kWindow = 64;   // rows per window: fixed, so the summation order is too
constexpr int kColumns = 128; // threads per block; blockIdx.y tiles the D columns

// Partial sums of classes that cross window boundaries. head: the first piece of a
// window when its class began in an earlier window; tail: the last piece when its class
// goes on into the next window (a window wholly inside one class has only a head).
template <typename acc_t>
struct Slots {
  acc_t* head;            // (windows, D)
  acc_t* tail;            // (windows, D)
  int* head_n;            // rows counted in the head piece
  int* tail_n;
  uint8_t* head_goes_on;  // the head's class goes on into the next window
  uint8_t* has_tail;
};

// Row sources: the value a row adds to its class's sum, and whether it counts.
template <typename scalar_t, typename acc_t>
struct UpdateRows {  // alpha rule: d_i of finite rows
  const scalar_t* diff;
  const uint8_t* finite;
  int64_t D;
  __device__ bool counts(int64_t row, int64_t) const { return finite[row]; }
  __device__ acc_t value(int64_t row, int64_t col) const {
    return static_cast<acc_t>(diff[row * D + col]);
  }
};

template <typename scalar_t, typename acc_t, typename g_t>
struct GradRows {  // d loss / d c: -s_i d_i
  const scalar_t* diff;
  GradScale<g_t> g;
  int64_t D, C;
  __device__ bool counts(int64_t, int64_t label) const { return label >= 0 && label < C; }
  __device__ acc_t value(int64_t row, int64_t col) const {
    return -g.template operator()<acc_t>(row) * static_cast<acc_t>(diff[row * D + col]);
  }
};

// Finishers: what a class's complete sum (over n counted rows) becomes.
template <typename center_t, typename acc_t>
struct AlphaFinish {
  center_t* c;
  int64_t D;
  acc_t alpha;
  __device__ void operator()(int64_t label, int64_t col, acc_t sum, int n) const {
    if (n == 0) return;  // only non-finite rows: as if absent
    center_t* p = c + label * D + col;
    *p = static_cast<center_t>(static_cast<acc_t>(*p) + alpha * sum / static_cast<acc_t>(1 + n));
  }
};

template <typename center_t, typename acc_t>
struct GradFinish {
  center_t* grad_c;
  int64_t D;
  __device__ void operator()(int64_t label, int64_t col, acc_t sum, int n) const {
    if (n > 0) grad_c[label * D + col] = static_cast<center_t>(sum);
  }
};

template <typename acc_t, typename Rows, typename Finish>
__global__ void __launch_bounds__(kColumns)
    window_kernel(const int64_t* __restrict__ sorted, const int64_t* __restrict__ order,
                  int64_t B, int64_t D, Rows rows, Finish finish, Slots<acc_t> slots,
                  const unsigned long long* bad) {
  if (bad && *bad != 0) return;  // a bad label anywhere: write nothing
  __shared__ int64_t label[kWindow];
  __shared__ int64_t row[kWindow];
  __shared__ bool counted[kWindow];
  const int64_t w = blockIdx.x;
  const int64_t p0 = w * kWindow;
  const int n = static_cast<int>(min(static_cast<int64_t>(kWindow), B - p0));
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    label[t] = sorted[p0 + t];
    row[t] = order[p0 + t];
    counted[t] = rows.counts(row[t], label[t]);
  }
  __syncthreads();
  const bool from_left = p0 > 0 && sorted[p0 - 1] == label[0];
  const bool to_right = p0 + n < B && sorted[p0 + n] == label[n - 1];
  const int64_t col = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const bool active = col < D;
  if (threadIdx.x == 0 && blockIdx.y == 0) slots.has_tail[w] = 0;

  // Every thread walks the same pieces (uniform control flow); each owns one column.
  for (int start = 0; start < n;) {
    const int64_t L = label[start];
    acc_t sum = 0;
    int cnt = 0, end = start;
    for (; end < n && label[end] == L; ++end) {
      if (!counted[end]) continue;
      ++cnt;
      if (active) sum += rows.value(row[end], col);
    }
    const bool first = start == 0 && from_left;
    const bool last = end == n && to_right;
    if (!first && !last) {
      if (active) finish(L, col, sum, cnt);
    } else if (first) {
      if (active) slots.head[w * D + col] = sum;
      if (threadIdx.x == 0 && blockIdx.y == 0) {
        slots.head_n[w] = cnt;
        slots.head_goes_on[w] = last;
      }
    } else {
      if (active) slots.tail[w * D + col] = sum;
      if (threadIdx.x == 0 && blockIdx.y == 0) {
        slots.tail_n[w] = cnt;
        slots.has_tail[w] = 1;
      }
    }
    start = end;
  }
}

// One block per window that holds the start of a class crossing into later windows:
// tail + the heads that follow, in window order.
template <typename acc_t, typename Finish>
__global__ void __launch_bounds__(kColumns)
    cross_window_kernel(const int64_t* __restrict__ sorted, int64_t B, int64_t D,
                        Finish finish, Slots<acc_t> slots, const unsigned long long* bad) {
  if (bad && *bad != 0) return;
  const int64_t w = blockIdx.x;
  if (!slots.has_tail[w]) return;
  const int64_t L = sorted[min((w + 1) * kWindow, B) - 1];
  const int64_t col = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const bool active = col < D;
  acc_t sum = active ? slots.tail[w * D + col] : acc_t(0);
  int cnt = slots.tail_n[w];
  for (int64_t v = w + 1;; ++v) {
    if (active) sum += slots.head[v * D + col];
    cnt += slots.head_n[v];
    if (!slots.head_goes_on[v]) break;
  }
  if (active) finish(L, col, sum, cnt);
}

// Sorts the labels, allocates the slots and runs both kernels.
template <typename acc_t, typename Rows, typename Finish>
void run_sorted(const at::Tensor& labels, int64_t D, Rows rows, Finish finish,
                const unsigned long long* bad) {
  const int64_t B = labels.size(0);
  if (B == 0 || D == 0) return;  // nothing to sum (and a zero grid dimension is an error)
  // Stable: within a class, rows keep index order (the CPU's order too).
  auto [sorted, order] = at::sort(labels.to(at::kLong), std::optional<bool>(true), /*dim=*/0,
                                  /*descending=*/false);
  const int64_t windows = (B + kWindow - 1) / kWindow;
  auto opts = labels.options();
  at::Tensor sums = at::empty({2, windows, D}, opts.dtype(c10::CppTypeToScalarType<acc_t>::value));
  at::Tensor meta_n = at::empty({2, windows}, opts.dtype(at::kInt));
  at::Tensor meta_flags = at::empty({2, windows}, opts.dtype(at::kByte));
  Slots<acc_t> slots{sums.data_ptr<acc_t>(), sums.data_ptr<acc_t>() + windows * D,
                     meta_n.data_ptr<int>(), meta_n.data_ptr<int>() + windows,
                     meta_flags.data_ptr<uint8_t>(), meta_flags.data_ptr<uint8_t>() + windows};
  const dim3 grid(static_cast<unsigned>(windows), static_cast<unsigned>((D + kColumns - 1) / kColumns));
  auto stream = at::cuda::getCurrentCUDAStream();
  window_kernel<acc_t><<<grid, kColumns, 0, stream>>>(sorted.const_data_ptr<int64_t>(),
                                                      order.const_data_ptr<int64_t>(), B, D,
                                                      rows, finish, slots, bad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cross_window_kernel<acc_t><<<grid, kColumns, 0, stream>>>(sorted.const_data_ptr<int64_t>(), B,
                                                            D, finish, slots, bad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_alpha_update_sorted(const at::Tensor& diff, const at::Tensor& labels,
                                const at::Tensor& finite, at::Tensor& c, double alpha,
                                const Workspace& ws) {
  const int64_t D = diff.size(1);
  AT_DISPATCH_FLOATING_TYPES(diff.scalar_type(), "centerloss_update_sorted", [&] {
    using feat_t = scalar_t;  // diff rows: the forward kernel's, in the accumulation type
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "centerloss_update_sorted_c", [&] {
      using center_t = scalar_t;
      using acc_t = acc_type<feat_t, center_t>;
      run_sorted<acc_t>(labels, D,
                        UpdateRows<feat_t, acc_t>{diff.const_data_ptr<feat_t>(),
                                                  finite.const_data_ptr<uint8_t>(), D},
                        AlphaFinish<center_t, acc_t>{c.data_ptr<center_t>(), D,
                                                     static_cast<acc_t>(alpha)},
                        ws.bad);
    });
  });
}

void launch_grad_centers_sorted(const at::Tensor& grad_loss, const at::Tensor& diff,
                                const at::Tensor& labels, Reduction reduction,
                                at::Tensor& grad_c) {
  const int64_t B = diff.size(0), D = diff.size(1);
  const bool none = reduction == Reduction::None;
  const double inv_b = reduction == Reduction::Mean && B > 0 ? 1.0 / static_cast<double>(B) : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, diff.scalar_type(), "centerloss_grad_c_sorted", [&] {
    using feat_t = scalar_t;
    using g_t = loss_type<feat_t>;
    const GradScale<g_t> g{grad_loss.const_data_ptr<g_t>(), none ? grad_loss.stride(0) : 0, inv_b};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_c.scalar_type(), "centerloss_grad_c_sorted_c", [&] {
      using center_t = scalar_t;
      using acc_t = acc_type<feat_t, center_t>;
      run_sorted<acc_t>(labels, D,
                        GradRows<feat_t, acc_t, g_t>{diff.const_data_ptr<feat_t>(), g, D,
                                                     grad_c.size(0)},
                        GradFinish<center_t, acc_t>{grad_c.data_ptr<center_t>(), D}, nullptr);
    });
  });
}

}  // namespace cuda
}  // namespace centerloss
