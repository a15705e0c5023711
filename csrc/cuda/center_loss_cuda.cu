// CUDA kernels of the centerloss ops: composes the launchers of kernels.h into the op
// functions of ops_cuda.h (registered for the CUDA key in registration.cu; the emulated
// build of simt_emulator/ registers the same functions for its own device).
//
// Launches per call (our own; nothing is sized by C x D):
//   forward                  memset of the workspace header, forward rows kernel.
//   forward_update_ /        memset of the header and O(C) counts, forward rows, atomic
//   update_centers_            update: 2 kernels.
//     deterministic=True,    memset of the header and O(C) counts, forward rows, then
//     or a dtype pair the      the sorted path: at::sort of the labels (torch's own
//     atomics do not take      launches; one more copy first for int32 labels), chunk
//                              kernel: 2 kernels + at::sort's.
//   backward_features        grad rows kernel: 1.
//   backward_centers         zero fill of the dense gradient, memset of the header (and
//                              the counts when sorted), then the atomic kernel (1) or
//                              the sorted path as above (1 + at::sort's).
// So a training step of alpha mode (forward_update_ + backward_features) is 3 kernels
// and one memset on the default path, 3 kernels, one memset and at::sort's launches on
// the deterministic one. Every scratch buffer (workspace, slots, sort outputs, the diff
// rows the atomic update reads) is uninitialised memory from at::detail::empty_cuda: under
// torch.use_deterministic_algorithms, at::empty would add a fill launch and a write of
// every byte to each; only the header and the counts are zeroed, by the one memset.
//
// Bad labels: the forward kernel (backward_centers: its own kernels) records the first
// out-of-range row and never reads or writes past the tensors; every center-writing
// kernel checks that record on the device and writes nothing when it is set. The host
// then reads it back (one 8-byte read, one sync) to raise the CPU's IndexError;
// set_cuda_label_check(false) skips that read, and CUDA-graph capture skips it always
// (memory stays safe either way).
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "kernels.h"
#include "ops_cuda.h"

namespace centerloss {
namespace cuda {

WorkspaceBuffer::WorkspaceBuffer(const at::Tensor& like, int64_t num_classes, PerClass per_class,
                                 int64_t num_partials, size_t partial_size) {
  constexpr int64_t header = 16;  // bad (8 bytes), blocks_done (4), slots_used (4)
  auto align8 = [](int64_t bytes) { return (bytes + 7) / 8 * 8; };
  const int64_t B = like.size(0);
  const bool with_classes = per_class == PerClass::Lists;
  const int64_t counts_bytes = per_class != PerClass::None ? align8(4 * num_classes) : 0;
  const int64_t heads_bytes = with_classes ? counts_bytes : 0;
  const int64_t next_bytes = with_classes ? align8(4 * B) : 0;
  const int64_t partials_bytes = align8(num_partials * static_cast<int64_t>(partial_size));
  // A slot per class of more than kWalkRows rows: at most B / (kWalkRows + 1), and C.
  const int64_t slots = with_classes ? std::min(B / (kWalkRows + 1), num_classes) : 0;
  const int64_t slot_of_bytes = with_classes ? align8(4 * num_classes) : 0;
  const int64_t slot_done_bytes = align8(4 * slots);
  const int64_t sums_bytes = slots * like.size(1) * static_cast<int64_t>(partial_size);
  const int64_t total = header + counts_bytes + heads_bytes + next_bytes + partials_bytes +
                        slot_of_bytes + slot_done_bytes + sums_bytes;
  storage = empty_cuda({total}, like.options().dtype(at::kByte));
  uint8_t* base = storage.data_ptr<uint8_t>();
  ws.bad = reinterpret_cast<unsigned long long*>(base);
  ws.blocks_done = reinterpret_cast<unsigned int*>(base + 8);
  ws.slots_used = reinterpret_cast<unsigned int*>(base + 12);
  uint8_t* p = base + header;
  ws.counts = per_class != PerClass::None ? reinterpret_cast<int*>(p) : nullptr;
  p += counts_bytes;
  ws.heads = with_classes ? reinterpret_cast<int*>(p) : nullptr;
  p += heads_bytes;
  ws.next = with_classes ? reinterpret_cast<int*>(p) : nullptr;
  p += next_bytes;
  ws.partials = p;  // every offset is a multiple of 8: fits each element type
  p += partials_bytes;
  ws.slot_of = with_classes ? reinterpret_cast<int*>(p) : nullptr;
  p += slot_of_bytes;
  ws.slot_done = with_classes ? reinterpret_cast<unsigned int*>(p) : nullptr;
  p += slot_done_bytes;
  ws.sums = with_classes ? p : nullptr;
  C10_CUDA_CHECK(cudaMemsetAsync(base, 0, header + counts_bytes, at::cuda::getCurrentCUDAStream()));
}

namespace {

// Raises the IndexError the forward kernel recorded, if any (one device-to-host read).
void throw_if_bad_label(const Workspace& ws, const at::Tensor& labels, int64_t num_classes) {
  if (!cuda_label_check_enabled()) return;
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None)
    return;  // no sync while capturing a graph; the kernels stay memory-safe
  unsigned long long bad = 0;
  c10::cuda::memcpy_and_sync(&bad, ws.bad, sizeof(bad), cudaMemcpyDeviceToHost,
                             at::cuda::getCurrentCUDAStream());
  if (bad == 0) return;
  const int64_t index = labels.size(0) - static_cast<int64_t>(bad);
  int64_t value = 0;  // the label itself, for the message: a second small read
  if (labels.scalar_type() == at::kLong) {
    c10::cuda::memcpy_and_sync(&value, labels.const_data_ptr<int64_t>() + index, sizeof(value),
                               cudaMemcpyDeviceToHost, at::cuda::getCurrentCUDAStream());
  } else {
    int32_t v = 0;
    c10::cuda::memcpy_and_sync(&v, labels.const_data_ptr<int32_t>() + index, sizeof(v),
                               cudaMemcpyDeviceToHost, at::cuda::getCurrentCUDAStream());
    value = v;
  }
  throw_bad_label(index, value, num_classes);
}

size_t acc_size(const at::Tensor& x, const at::Tensor& c) {
  return at::elementSize(acc_dtype(x.scalar_type(), c.scalar_type()));
}

// The atomic paths add diff rows of the centers' own dtype into the centers, which is
// the accumulation type only when both are float or both double. Anything else (16-bit
// centers, whose atomics would round every addition; float64 features or diff rows with
// float32 centers, which would be rounded to float32 term by term) takes the sorted path,
// which sums in the accumulation type and rounds once.
bool use_sorted_path(bool deterministic, at::ScalarType diff_dtype, at::ScalarType centers_dtype) {
  const bool same_float =
      diff_dtype == centers_dtype && (centers_dtype == at::kFloat || centers_dtype == at::kDouble);
  return deterministic || !same_float;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& features,
                                                const at::Tensor& labels, const at::Tensor& centers,
                                                int64_t reduction, bool need_diff) {
  check_inputs(features, labels, centers);
  const Reduction red = to_reduction(reduction);
  c10::cuda::CUDAGuard guard(features.device());
  auto [loss, diff] =
      alloc_forward_outputs(features, centers.scalar_type(), red, need_diff, empty_cuda);
  const int64_t B = features.size(0);
  if (B == 0) {
    if (red != Reduction::None) loss.zero_();
    return {loss, diff};
  }
  at::Tensor x = features.contiguous(), y = labels.contiguous(), c = centers.contiguous();
  const int64_t blocks = forward_rows_blocks(x, c);
  WorkspaceBuffer wb(x, c.size(0), PerClass::None, blocks, acc_size(x, c));
  launch_forward_rows(x, y, c, red, &loss, need_diff ? &diff : nullptr, nullptr, wb.ws, blocks);
  throw_if_bad_label(wb.ws, y, c.size(0));
  return {loss, diff};
}

namespace {

// forward_update_ and update_centers_: the forward rows kernel (loss only when
// `with_loss`), then the alpha rule from its diff rows, counts and finite flags.
std::tuple<at::Tensor, at::Tensor> forward_and_update(at::Tensor& centers,
                                                      const at::Tensor& features,
                                                      const at::Tensor& labels, Reduction red,
                                                      bool with_loss, double alpha, bool need_diff,
                                                      bool deterministic) {
  check_inputs(features, labels, centers);
  check_alpha(alpha);
  c10::cuda::CUDAGuard guard(features.device());
  auto [loss, diff_out] =
      alloc_forward_outputs(features, centers.scalar_type(), red, need_diff, empty_cuda);
  const int64_t B = features.size(0), D = features.size(1);
  if (B == 0) {
    if (with_loss && red != Reduction::None) loss.zero_();
    return {loss, diff_out};
  }
  at::Tensor x = features.contiguous(), y = labels.contiguous(), c = centers.contiguous();
  // (the atomic update's row lists hold row + 1 in an int: a larger batch sorts)
  const bool sorted = use_sorted_path(deterministic, acc_dtype(x.scalar_type(), c.scalar_type()),
                                      c.scalar_type()) ||
                      B >= std::numeric_limits<int>::max();
  // The atomic update's large classes add their diff rows, so that path has them written
  // even when backward needs none; the sorted path forms d = x - c again from x.
  at::Tensor diff = need_diff ? diff_out
                    : sorted  ? at::Tensor()
                              : empty_cuda({B, D}, diff_out.options());
  at::Tensor finite = empty_cuda({B}, x.options().dtype(at::kByte));
  const int64_t blocks = forward_rows_blocks(x, c);
  WorkspaceBuffer wb(x, c.size(0), sorted ? PerClass::Counts : PerClass::Lists, blocks,
                     acc_size(x, c));
  launch_forward_rows(x, y, c, with_loss ? red : Reduction::Mean, with_loss ? &loss : nullptr,
                      diff.defined() ? &diff : nullptr, &finite, wb.ws, blocks);
  if (sorted) {
    launch_alpha_update_sorted(x, y, finite, c, alpha, wb.ws);
  } else {
    launch_alpha_update_atomic(x, diff, y, finite, c, alpha, wb.ws);
  }
  throw_if_bad_label(wb.ws, y, c.size(0));
  if (!c.is_same(centers)) centers.copy_(c);
  return {loss, diff_out};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_update_cuda(at::Tensor& centers,
                                                       const at::Tensor& features,
                                                       const at::Tensor& labels, int64_t reduction,
                                                       double alpha, bool need_diff,
                                                       bool deterministic) {
  return forward_and_update(centers, features, labels, to_reduction(reduction),
                            /*with_loss=*/true, alpha, need_diff, deterministic);
}

void update_centers_cuda(at::Tensor& centers, const at::Tensor& features, const at::Tensor& labels,
                         double alpha, bool deterministic) {
  forward_and_update(centers, features, labels, Reduction::Mean, /*with_loss=*/false, alpha,
                     /*need_diff=*/false, deterministic);
}

at::Tensor backward_features_cuda(const at::Tensor& grad_loss, const at::Tensor& diff,
                                  int64_t reduction, std::optional<at::ScalarType> out_dtype) {
  const Reduction red = to_reduction(reduction);
  check_backward_inputs(grad_loss, diff, red);
  c10::cuda::CUDAGuard guard(diff.device());
  at::Tensor d = diff.contiguous();
  at::Tensor out = empty_cuda(d.sizes(), d.options().dtype(out_dtype.value_or(d.scalar_type())));
  launch_grad_features(grad_loss.to(loss_dtype(d.scalar_type())), d, red, out);
  return out;
}

at::Tensor backward_centers_cuda(const at::Tensor& grad_loss, const at::Tensor& diff,
                                 const at::Tensor& labels, int64_t reduction, int64_t num_classes,
                                 at::ScalarType centers_dtype, bool deterministic) {
  const Reduction red = to_reduction(reduction);
  check_backward_centers_inputs(grad_loss, diff, labels, red, num_classes);
  c10::cuda::CUDAGuard guard(diff.device());
  at::Tensor d = diff.contiguous(), y = labels.contiguous();
  at::Tensor g = grad_loss.to(loss_dtype(d.scalar_type()));
  // A dense gradient, as for nn.Embedding: zero rows for the classes not in the batch.
  // (empty_cuda + zero_: at::zeros would add the deterministic fill before the zeros.)
  at::Tensor out = empty_cuda({num_classes, d.size(1)}, d.options().dtype(centers_dtype));
  out.zero_();
  if (d.size(0) == 0) return out;
  const bool sorted = use_sorted_path(deterministic, d.scalar_type(), centers_dtype);
  WorkspaceBuffer wb(d, num_classes, sorted ? PerClass::Counts : PerClass::None,
                     /*num_partials=*/0, 0);
  if (sorted) {
    launch_grad_centers_sorted(g, d, y, red, out, wb.ws);
  } else {
    launch_grad_centers_atomic(g, d, y, red, out, wb.ws);
  }
  // Out-of-range labels: the CPU's IndexError; the partial sums in `out` are dropped.
  throw_if_bad_label(wb.ws, y, num_classes);
  return out;
}

}  // namespace cuda
}  // namespace centerloss
