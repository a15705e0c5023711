// CUDA kernels of the centerloss ops: composes the launchers of kernels.h into the op
// functions of ops_cuda.h (registered for the CUDA key in registration.cu; the emulated
// build of emu/ registers the same functions for its own device).
//
// A training step of alpha mode (forward_update_ + backward_features) is three kernel
// launches on the default path (forward rows, atomic update, grad rows) plus one
// cudaMemsetAsync of a workspace header and O(C) counts; nothing is sized by C x D. The
// deterministic path (deterministic=True, or 16-bit centers) replaces the atomic update
// by a stable sort of the labels and two fixed-order summation kernels.
//
// Bad labels: the forward kernel records the first out-of-range row and never reads
// past the centers; every center-writing kernel checks that record on the device and
// writes nothing when it is set. The host then reads it back (one sync) to raise the
// IndexError; set_cuda_label_check(false) skips that read, and CUDA-graph capture
// skips it always (memory stays safe either way).
#include "kernels.h"
#include "ops_cuda.h"

#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>

namespace centerloss {
namespace cuda {

WorkspaceBuffer::WorkspaceBuffer(const at::Tensor& like, int64_t num_classes, bool with_counts,
                                 int64_t num_partials, size_t partial_size) {
  constexpr int64_t header = 16;  // bad (8 bytes), blocks_done (4), padding (4)
  const int64_t counts_bytes = with_counts ? (4 * num_classes + 7) / 8 * 8 : 0;
  const int64_t total = header + counts_bytes + num_partials * static_cast<int64_t>(partial_size);
  storage = at::empty({total}, like.options().dtype(at::kByte));
  uint8_t* base = storage.data_ptr<uint8_t>();
  ws.bad = reinterpret_cast<unsigned long long*>(base);
  ws.blocks_done = reinterpret_cast<unsigned int*>(base + 8);
  ws.counts = with_counts ? reinterpret_cast<int*>(base + header) : nullptr;
  ws.partials = base + header + counts_bytes;
  C10_CUDA_CHECK(cudaMemsetAsync(base, 0, header + counts_bytes,
                                 at::cuda::getCurrentCUDAStream()));
}

int64_t row_blocks(int64_t rows) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return std::max<int64_t>(1, std::min(wanted, sms * 8));  // 8 blocks of 256 fill an SM
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
  throw_bad_label(index, labels[index].item<int64_t>(), num_classes);
}

size_t acc_size(const at::Tensor& x, const at::Tensor& c) {
  return at::elementSize(acc_dtype(x.scalar_type(), c.scalar_type()));
}

// 16-bit centers take the sorted path: atomics would round every single addition.
bool use_sorted_path(bool deterministic, at::ScalarType centers_dtype) {
  return deterministic || at::isReducedFloatingType(centers_dtype);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& features,
                                                const at::Tensor& labels,
                                                const at::Tensor& centers, int64_t reduction,
                                                bool need_diff) {
  check_inputs(features, labels, centers);
  const Reduction red = to_reduction(reduction);
  c10::cuda::CUDAGuard guard(features.device());
  auto [loss, diff] = alloc_forward_outputs(features, centers.scalar_type(), red, need_diff);
  const int64_t B = features.size(0);
  if (B == 0) {
    if (red != Reduction::None) loss.zero_();
    return {loss, diff};
  }
  at::Tensor x = features.contiguous(), y = labels.contiguous(), c = centers.contiguous();
  const int64_t blocks = row_blocks(B);
  WorkspaceBuffer wb(x, c.size(0), /*with_counts=*/false, blocks, acc_size(x, c));
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
                                                      bool with_loss, double alpha,
                                                      bool need_diff, bool deterministic) {
  check_inputs(features, labels, centers);
  check_alpha(alpha);
  c10::cuda::CUDAGuard guard(features.device());
  auto [loss, diff_out] = alloc_forward_outputs(features, centers.scalar_type(), red, need_diff);
  const int64_t B = features.size(0), D = features.size(1);
  if (B == 0) {
    if (with_loss && red != Reduction::None) loss.zero_();
    return {loss, diff_out};
  }
  at::Tensor x = features.contiguous(), y = labels.contiguous(), c = centers.contiguous();
  const bool sorted = use_sorted_path(deterministic, c.scalar_type());
  // The update reads the diff rows, so they are written even when backward needs none.
  at::Tensor diff = need_diff ? diff_out : at::empty({B, D}, diff_out.options());
  at::Tensor finite = at::empty({B}, x.options().dtype(at::kByte));
  const int64_t blocks = row_blocks(B);
  WorkspaceBuffer wb(x, c.size(0), /*with_counts=*/!sorted, blocks, acc_size(x, c));
  launch_forward_rows(x, y, c, with_loss ? red : Reduction::Mean, with_loss ? &loss : nullptr,
                      &diff, &finite, wb.ws, blocks);
  if (sorted) {
    launch_alpha_update_sorted(diff, y, finite, c, alpha, wb.ws);
  } else {
    launch_alpha_update_atomic(diff, y, finite, c, alpha, wb.ws);
  }
  throw_if_bad_label(wb.ws, y, c.size(0));
  if (!c.is_same(centers)) centers.copy_(c);
  return {loss, diff_out};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_update_cuda(at::Tensor& centers,
                                                       const at::Tensor& features,
                                                       const at::Tensor& labels,
                                                       int64_t reduction, double alpha,
                                                       bool need_diff, bool deterministic) {
  return forward_and_update(centers, features, labels, to_reduction(reduction),
                            /*with_loss=*/true, alpha, need_diff, deterministic);
}

void update_centers_cuda(at::Tensor& centers, const at::Tensor& features,
                         const at::Tensor& labels, double alpha, bool deterministic) {
  forward_and_update(centers, features, labels, Reduction::Mean, /*with_loss=*/false, alpha,
                     /*need_diff=*/false, deterministic);
}

at::Tensor backward_features_cuda(const at::Tensor& grad_loss, const at::Tensor& diff,
                                  int64_t reduction, std::optional<at::ScalarType> out_dtype) {
  const Reduction red = to_reduction(reduction);
  check_backward_inputs(grad_loss, diff, red);
  c10::cuda::CUDAGuard guard(diff.device());
  at::Tensor d = diff.contiguous();
  at::Tensor out = at::empty_like(d, d.options().dtype(out_dtype.value_or(d.scalar_type())));
  launch_grad_features(grad_loss.to(loss_dtype(d.scalar_type())), d, red, out);
  return out;
}

at::Tensor backward_centers_cuda(const at::Tensor& grad_loss, const at::Tensor& diff,
                                 const at::Tensor& labels, int64_t reduction,
                                 int64_t num_classes, at::ScalarType centers_dtype,
                                 bool deterministic) {
  const Reduction red = to_reduction(reduction);
  check_backward_centers_inputs(grad_loss, diff, labels, red, num_classes);
  c10::cuda::CUDAGuard guard(diff.device());
  at::Tensor d = diff.contiguous(), y = labels.contiguous();
  at::Tensor g = grad_loss.to(loss_dtype(d.scalar_type()));
  // A dense gradient, as for nn.Embedding: zero rows for the classes not in the batch.
  at::Tensor out = at::zeros({num_classes, d.size(1)}, d.options().dtype(centers_dtype));
  if (use_sorted_path(deterministic, centers_dtype)) {
    launch_grad_centers_sorted(g, d, y, red, out);
  } else {
    launch_grad_centers_atomic(g, d, y, red, out);
  }
  return out;
}

}  // namespace cuda
}  // namespace centerloss
