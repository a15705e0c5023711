// Host-side launchers of the CUDA kernels (one .cu file per family, compiled in
// parallel); center_loss_cuda.cu composes them into the ops.
#pragma once

#include "../center_loss.h"
#include "row_math.cuh"

namespace centerloss {
namespace cuda {

// A class of at most kWalkRows finite rows is summed by the warp of its list's head,
// walking the list (each row read once, the sum in registers, no atomics); a larger one
// adds its rows into a class-sum slot with atomics (so a class of thousands of rows is
// not one warp's serial walk). At most 32: the walk gathers one row index per lane.
constexpr int kWalkRows = 32;

// Per-call device workspace, zeroed by one cudaMemsetAsync (header + counts):
//  bad: B - (first row whose label is out of range), 0 when none (atomicMax keeps the
//       first row); every kernel that writes centers returns early when it is set.
//  blocks_done: the last-block-done counter of the loss reduction.
//  slots_used: class-sum slots handed out so far (atomic update path).
//  counts: O(C) ints: per-class number of finite rows (atomic update path), or per-class
//          arrivals of the blocks holding a piece of a split class (sorted paths).
//  partials: one loss partial per block of the forward kernel (not zeroed).
// The atomic update's row lists and class sums, not zeroed (the forward kernel writes
// each entry the update kernel reads; a list is walked for exactly its class's count of
// rows, so the value its first row found in `heads` is never followed):
//  heads: per class, the row linked last (row + 1), O(C) ints.
//  next: per finite row, the row linked before it in its class (row + 1), O(B) ints.
//  slot_of: per class of more than kWalkRows rows, its slot (O(C) ints).
//  slot_done: per slot, the rows that have added their share (the last one applies it).
//  sums: per slot, a row of D sums in the accumulation type; min(B / 33, C) slots,
//        each zeroed by the row that opens it (its class's (kWalkRows + 1)-th).
struct Workspace {
  unsigned long long* bad;
  unsigned int* blocks_done;
  unsigned int* slots_used;
  int* counts;
  int* heads;
  int* next;
  void* partials;
  int* slot_of;
  unsigned int* slot_done;
  void* sums;
};

// What a call needs per class: nothing (forward, atomic center gradient), the zeroed
// counts (sorted paths), or the counts with the atomic update's row lists and slots.
enum class PerClass { None, Counts, Lists };

struct WorkspaceBuffer {
  at::Tensor storage;
  Workspace ws;
  // Allocates (uninitialised) and zeroes what needs zeroing: O(num_classes) counts unless
  // PerClass::None; Lists also lays out the row lists and class sums for `like`'s B x D
  // rows, in elements of partial_size bytes (the accumulation type).
  WorkspaceBuffer(const at::Tensor& like, int64_t num_classes, PerClass per_class,
                  int64_t num_partials, size_t partial_size);
};

// forward_kernels.cu — one warp per row: d = x - c[y] in the accumulation type, per-row
// loss (reduced in the same launch by the last block, in a fixed order), the diff rows
// and finite flags when asked, and when ws.heads is set the per-class counts, row lists
// and zeroed slots of the atomic update (G lanes a row: lanes_per_row). Rows with
// out-of-range labels are recorded in ws.bad and never read c.
void launch_forward_rows(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& c,
                         Reduction reduction, at::Tensor* loss, at::Tensor* diff,
                         at::Tensor* finite, const Workspace& ws, int64_t blocks);
// The grid of launch_forward_rows for these operands (the number of loss partials).
int64_t forward_rows_blocks(const at::Tensor& x, const at::Tensor& c);

// atomic_kernels.cu — the default (fastest) paths, for diff rows and centers of one
// dtype T, float or double (T is then the accumulation type):
// c_j += alpha * (sum of the finite d_i of class j) / (1 + n_j), the sum formed in T by
// the warp of the class's list head (n_j <= kWalkRows; it forms each d_i = x_i - c_j again
// from x, bit for bit the forward kernel's, and reads 2 bytes an element, not 4, for
// 16-bit features) or with atomics of the diff rows in the class's slot, added by its
// last row: either way each center element is rounded once per call. Nothing when ws.bad.
void launch_alpha_update_atomic(const at::Tensor& x, const at::Tensor& diff,
                                const at::Tensor& labels, const at::Tensor& finite, at::Tensor& c,
                                double alpha, const Workspace& ws);
// grad_c[y_i] -= s_i * d_i, with atomics (grad_c zero-filled by the caller); rows with
// out-of-range labels are recorded in ws.bad and skipped.
void launch_grad_centers_atomic(const at::Tensor& grad_loss, const at::Tensor& diff,
                                const at::Tensor& labels, Reduction reduction, at::Tensor& grad_c,
                                const Workspace& ws);

// segments.cu — the deterministic paths (and every dtype the atomic ones do not take):
// per-class sums over the label-sorted rows in chunks of kChunkRows, in a fixed order.
// The alpha rule reads x and forms each d_i = x_i - c_j again, bit for bit the forward
// kernel's (the chunk reads each class's center element once; 16-bit x: 2 bytes an
// element where the diff row would be 4).
void launch_alpha_update_sorted(const at::Tensor& x, const at::Tensor& labels,
                                const at::Tensor& finite, at::Tensor& c, double alpha,
                                const Workspace& ws);
// ... rows with out-of-range labels are recorded in ws.bad and left out.
void launch_grad_centers_sorted(const at::Tensor& grad_loss, const at::Tensor& diff,
                                const at::Tensor& labels, Reduction reduction, at::Tensor& grad_c,
                                const Workspace& ws);

// backward_kernels.cu — grad_x = d * s (s: g_i, g or g / B), written in out's dtype.
void launch_grad_features(const at::Tensor& grad_loss, const at::Tensor& diff, Reduction reduction,
                          at::Tensor& out);

}  // namespace cuda
}  // namespace centerloss
