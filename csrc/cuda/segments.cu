// The deterministic center paths (the counterpart of cpu/segments.*), taken too by every
// dtype pair the atomic paths do not take. Rows are sorted by label (stable: index order
// within a class) and cut into chunks of kChunkRows rows, the CPU's unit as well. A block
// sums each class's rows of its chunk column by column, in order. A class inside one
// chunk is finished there; a class split over several chunks leaves one partial sum per
// chunk in its slots (a chunk's first piece: rows of a class that began in an earlier
// chunk; its last piece: rows of a class that goes on into the next). The last block to
// write a piece of a split class (any chunk, any column tile; a counter per class, from
// the workspace's one memset) adds the class's slots up in chunk order, the CPU's, and
// finishes it. Every sum has one fixed order, so results are bit-identical run to run,
// and no center is read by one block while another writes it.
//
// Launches: a copy of int32 labels to int64 (int32 labels only), at::sort's own and the
// chunk kernel. Wide rows: the chunk kernel loops over column tiles beyond a fixed
// number of tiles per launch (never a grid over the 65535 limit).
#include <ATen/Dispatch.h>

#include "kernels.h"

namespace centerloss {
namespace cuda {
namespace {

constexpr int kColumns = 128;  // threads of a chunk block: one column each
// Column tiles per launch (grid.y), far below the 65535 limit: wider rows (D > 65536)
// loop over tiles, which still leaves thousands of blocks per chunk.
constexpr int64_t kMaxTiles = 512;
static_assert(kMaxTiles <= kMaxGridY);
// A split class's counter reaches kArrived when every block holding a piece of it has
// added its piece: the block that starts it adds kArrived - (blocks - 1), the others 1.
constexpr int kArrived = 1 << 30;

// The slots of the split classes, two per chunk, and their arrival counters.
template <typename acc_t>
struct Slots {
  acc_t* first;         // (chunks, D): the chunk's first piece, when its class began earlier
  acc_t* last;          // (chunks, D): the chunk's last piece, when its class goes on
  int* first_n;         // rows counted in the first piece
  int* last_n;          // ... in the last piece
  int* arrived;         // per class (zeroed): the blocks that have written a piece of it
  int64_t num_classes;  // labels outside [0, num_classes) (backward's bad rows) never count
};

// The run of class L in the sorted labels, given a position p of it: its last position
// (below B) and its first; by bisection, a read of 8 bytes per step.
__device__ int64_t run_last(const int64_t* __restrict__ sorted, int64_t B, int64_t p, int64_t L) {
  int64_t lo = p, hi = B;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] == L) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__device__ int64_t run_first(const int64_t* __restrict__ sorted, int64_t p, int64_t L) {
  int64_t lo = -1, hi = p;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] == L) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

// A split class the block found itself last to write: its chunks w0 .. w1.
struct SplitRun {
  int64_t label, w0, w1;
  int n;  // rows counted over all its pieces
};

// Row sources: the value a row adds to its class's sum (given the class's `center`
// element as the finisher's start() read it), and whether it counts.
template <typename feat_t, typename acc_t>
struct UpdateRows {       // alpha rule: d_i = x_i - c of finite rows (the forward kernel's flags)
  const feat_t* x;        // d formed again in acc_t, bit for bit the forward kernel's diff row,
  const uint8_t* finite;  // from x: 2 bytes an element for 16-bit features, not 4
  int64_t D;
  __device__ bool counts(int64_t row, int64_t) const { return finite[row]; }
  __device__ acc_t value(int64_t row, int64_t col, acc_t center) const {
    return static_cast<acc_t>(x[row * D + col]) - center;
  }
};

template <typename diff_t, typename acc_t, typename g_t>
struct GradRows {  // d loss / d c: -s_i d_i; rows with out-of-range labels are recorded
  const diff_t* diff;
  GradScale<g_t> g;
  int64_t B, D, C;
  unsigned long long* bad;
  __device__ bool counts(int64_t row, int64_t label) const {
    if (label >= 0 && label < C) return true;
    atomicMax(bad, static_cast<unsigned long long>(B - row));
    return false;
  }
  __device__ acc_t value(int64_t row, int64_t col, acc_t) const {
    return -g.template at<acc_t>(row) * static_cast<acc_t>(diff[row * D + col]);
  }
};

// Finishers: what a class's complete sum (over n counted rows) becomes; start() is read
// once per class and column before its rows (a valid label only) and handed to both.
template <typename center_t, typename acc_t>
struct AlphaFinish {
  center_t* c;
  int64_t D;
  acc_t alpha;
  __device__ acc_t start(int64_t label, int64_t col) const {
    return static_cast<acc_t>(c[label * D + col]);
  }
  __device__ void operator()(int64_t label, int64_t col, acc_t sum, int n, acc_t center) const {
    if (n == 0) return;  // only non-finite rows: as if absent
    c[label * D + col] = static_cast<center_t>(center + alpha * sum / static_cast<acc_t>(1 + n));
  }
};

template <typename center_t, typename acc_t>
struct GradFinish {
  center_t* grad_c;
  int64_t D;
  __device__ acc_t start(int64_t, int64_t) const { return acc_t(0); }  // labels not checked yet
  __device__ void operator()(int64_t label, int64_t col, acc_t sum, int n, acc_t) const {
    if (n > 0) grad_c[label * D + col] = static_cast<center_t>(sum);
  }
};

// One block per chunk (blockIdx.x) and column tile (blockIdx.y, striding by gridDim.y).
// ptxas-spill-ok: chunk_kernel: 20 bytes stored, 36 loaded, in the center gradient's
// instantiations on sm_80 (ptxas keeps them at 32 registers; none on sm_90, none in the
// update's): since the block that arrives last at a split class sums it here, a few
// stack slots that stay in L1 beside rows read from memory.
template <typename acc_t, typename Rows, typename Finish>
__global__ void __launch_bounds__(kColumns)
    chunk_kernel(const int64_t* __restrict__ sorted, const int64_t* __restrict__ order, int64_t B,
                 int64_t D, Rows rows, Finish finish, Slots<acc_t> slots,
                 const unsigned long long* stop) {
  if (stop != nullptr && *stop != 0) return;  // a bad label anywhere: write nothing
  __shared__ int64_t label[kChunkRows];
  __shared__ int64_t row[kChunkRows];
  __shared__ bool counted[kChunkRows];
  const int64_t w = blockIdx.x;
  const int64_t p0 = w * kChunkRows;
  const int n = static_cast<int>(min(kChunkRows, B - p0));
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    label[t] = sorted[p0 + t];
    row[t] = order[p0 + t];
    counted[t] = rows.counts(row[t], label[t]);
  }
  __syncthreads();
  const bool from_left = p0 > 0 && sorted[p0 - 1] == label[0];
  const bool to_right = p0 + n < B && sorted[p0 + n] == label[n - 1];

  // Walks the chunk's pieces (runs of one class) for column `col`; col < 0: counts only.
  auto walk = [&](int64_t col) {
    for (int start = 0; start < n;) {
      const int64_t L = label[start];
      const acc_t center = col >= 0 ? finish.start(L, col) : acc_t(0);
      acc_t sum = 0;
      int cnt = 0, end = start;
      for (; end < n && label[end] == L; ++end) {
        if (!counted[end]) continue;
        ++cnt;
        if (col >= 0) sum += rows.value(row[end], col, center);
      }
      const bool first = start == 0 && from_left;
      const bool last = end == n && to_right;
      if (col < 0) {
        if (first) {
          slots.first_n[w] = cnt;
        } else if (last) {
          slots.last_n[w] = cnt;
        }
      } else if (first) {
        slots.first[w * D + col] = sum;
      } else if (last) {
        slots.last[w * D + col] = sum;
      } else {
        finish(L, col, sum, cnt, center);
      }
      start = end;
    }
  };
  if (blockIdx.y == 0 && threadIdx.x == 0) walk(-1);
  for (int64_t col = static_cast<int64_t>(blockIdx.y) * kColumns + threadIdx.x; col < D;
       col += static_cast<int64_t>(gridDim.y) * kColumns)
    walk(col);

  // Split classes: the block arrives at the counter of each class it holds a piece of
  // (its first piece: a class from the left; its last piece: one that starts here and goes
  // on); the last block to arrive sums the class's slots. Uniform per block.
  const bool starts_split = to_right && !(from_left && label[0] == label[n - 1]);
  if (!from_left && !starts_split) return;
  __shared__ SplitRun runs[2];
  __shared__ int num_runs;
  __threadfence();  // this thread's slot columns (and counts), visible before the arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    num_runs = 0;
    auto counts_here = [&](int64_t L) { return L >= 0 && L < slots.num_classes; };
    if (from_left && counts_here(label[0])) {
      const int64_t L = label[0];
      if (atomicAdd(slots.arrived + L, 1) + 1 == kArrived) {
        const bool goes_on = to_right && label[n - 1] == L;
        runs[num_runs++] = {L, run_first(sorted, p0 - 1, L) / kChunkRows,
                            goes_on ? run_last(sorted, B, p0 + n, L) / kChunkRows : w, 0};
      }
    }
    if (starts_split && counts_here(label[n - 1])) {
      const int64_t L = label[n - 1];
      int64_t w1 = -1;
      int add = 1;
      if (blockIdx.y == 0) {  // the class's start: it knows how many blocks will arrive
        w1 = run_last(sorted, B, p0 + n, L) / kChunkRows;
        add = kArrived - static_cast<int>((w1 - w + 1) * gridDim.y - 1);
      }
      if (atomicAdd(slots.arrived + L, add) + add == kArrived) {
        if (w1 < 0) w1 = run_last(sorted, B, p0 + n, L) / kChunkRows;
        runs[num_runs++] = {L, w, w1, 0};
      }
    }
    __threadfence();  // every other block's pieces, visible to the reads below
    for (int r = 0; r < num_runs; ++r) {
      const volatile int* last_n = slots.last_n;
      const volatile int* first_n = slots.first_n;
      int cnt = last_n[runs[r].w0];
      for (int64_t j = runs[r].w0 + 1; j <= runs[r].w1; ++j) cnt += first_n[j];
      runs[r].n = cnt;
    }
  }
  __syncthreads();
  __threadfence();
  for (int r = 0; r < num_runs; ++r) {
    const SplitRun run = runs[r];
    const volatile acc_t* last = slots.last;  // past L1: other SMs wrote them
    const volatile acc_t* first = slots.first;
    for (int64_t col = threadIdx.x; col < D; col += kColumns) {  // every column of the class
      acc_t sum = last[run.w0 * D + col];
      for (int64_t j = run.w0 + 1; j <= run.w1; ++j) sum += first[j * D + col];
      finish(run.label, col, sum, run.n, finish.start(run.label, col));
    }
  }
}

// Sorts the labels, allocates the slots and runs the chunk kernel. `arrived`: a zeroed
// int per class (the workspace's counts).
template <typename acc_t, typename Rows, typename Finish>
void run_sorted(const at::Tensor& labels, int64_t D, Rows rows, Finish finish,
                const unsigned long long* stop, int* arrived, int64_t num_classes) {
  const int64_t B = labels.size(0);
  if (B == 0 || D == 0) return;  // nothing to sum (and a zero grid dimension is an error)
  const auto opts = labels.options().dtype(at::kLong);
  at::Tensor keys = labels;
  if (labels.scalar_type() != at::kLong) {
    keys = empty_cuda({B}, opts);
    keys.copy_(labels);
  }
  // Stable: within a class, rows keep index order (the CPU's order too).
  at::Tensor sorted = empty_cuda({B}, opts), order = empty_cuda({B}, opts);
  at::sort_out(sorted, order, keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const int64_t chunks = (B + kChunkRows - 1) / kChunkRows;
  at::Tensor sums = empty_cuda({2, chunks, D}, opts.dtype(c10::CppTypeToScalarType<acc_t>::value));
  at::Tensor meta_n = empty_cuda({2, chunks}, opts.dtype(at::kInt));
  Slots<acc_t> slots{sums.data_ptr<acc_t>(),
                     sums.data_ptr<acc_t>() + chunks * D,
                     meta_n.data_ptr<int>(),
                     meta_n.data_ptr<int>() + chunks,
                     arrived,
                     num_classes};
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t* sp = sorted.const_data_ptr<int64_t>();
  const dim3 grid(static_cast<unsigned>(chunks),
                  static_cast<unsigned>(std::min((D + kColumns - 1) / kColumns, kMaxTiles)));
  // A split class's counter counts up to all of the grid's blocks below kArrived (only
  // a batch of some 2^36 rows could reach it).
  TORCH_CHECK(chunks * static_cast<int64_t>(grid.y) < kArrived,
              "centerloss: the sorted path's split-class counters hold at most ", kArrived,
              " blocks; this batch needs ", chunks, " chunks x ", grid.y,
              " column tiles: split the batch");
  chunk_kernel<acc_t><<<grid, kColumns, 0, stream>>>(sp, order.const_data_ptr<int64_t>(), B, D,
                                                     rows, finish, slots, stop);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_alpha_update_sorted(const at::Tensor& x, const at::Tensor& labels,
                                const at::Tensor& finite, at::Tensor& c, double alpha,
                                const Workspace& ws) {
  const int64_t D = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "centerloss_update_sorted", [&] {
        using feat_t = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, c.scalar_type(), "centerloss_update_sorted_c", [&] {
              using center_t = scalar_t;
              using acc_t = acc_type<feat_t, center_t>;  // the forward kernel's diff rows'
              run_sorted<acc_t>(labels, D,
                                UpdateRows<feat_t, acc_t>{x.const_data_ptr<feat_t>(),
                                                          finite.const_data_ptr<uint8_t>(), D},
                                AlphaFinish<center_t, acc_t>{c.data_ptr<center_t>(), D,
                                                             static_cast<acc_t>(alpha)},
                                ws.bad, ws.counts, c.size(0));
            });
      });
}

void launch_grad_centers_sorted(const at::Tensor& grad_loss, const at::Tensor& diff,
                                const at::Tensor& labels, Reduction reduction, at::Tensor& grad_c,
                                const Workspace& ws) {
  const int64_t B = diff.size(0), D = diff.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, diff.scalar_type(), "centerloss_grad_c_sorted", [&] {
        using diff_t = scalar_t;
        using g_t = loss_type<diff_t>;
        const GradScale<g_t> g = grad_scale<g_t>(grad_loss, reduction, B);
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, grad_c.scalar_type(), "centerloss_grad_c_sorted_c", [&] {
              using center_t = scalar_t;
              using acc_t = acc_type<diff_t, center_t>;
              run_sorted<acc_t>(labels, D,
                                GradRows<diff_t, acc_t, g_t>{diff.const_data_ptr<diff_t>(), g, B, D,
                                                             grad_c.size(0), ws.bad},
                                GradFinish<center_t, acc_t>{grad_c.data_ptr<center_t>(), D},
                                nullptr, ws.counts, grad_c.size(0));
            });
      });
}

}  // namespace cuda
}  // namespace centerloss
