// Shared declarations of the centerloss ops: what every device's kernels see.
// Schemas live in ops.cpp; kernels in cpu/ and cuda/.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>

#include <type_traits>

namespace centerloss {

// Reduction codes are at::Reduction's: 0 none, 1 mean, 2 sum.
enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

// Throws unless `reduction` is 0, 1 or 2.
Reduction to_reduction(int64_t reduction);

// Static checks shared by every op and device (SPEC "Bad input"): ranks, dtypes,
// widths, batch sizes and devices. Reads no tensor data, so costs nothing on CUDA.
void check_inputs(const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centers);

// Throws unless alpha is finite and in [0, 1].
void check_alpha(double alpha);

// Throws IndexError naming the first label outside [0, num_classes).
// CPU only: reads `n` values from host memory.
template <typename index_t>
void check_label_range_host(const index_t* labels, int64_t n, int64_t num_classes);

// The IndexError for labels[index] = value outside [0, num_classes), on every device.
[[noreturn]] void throw_bad_label(int64_t index, int64_t value, int64_t num_classes);

// Whether the CUDA kernels report a bad label as an exception, which costs one host
// sync per call (see README). Off, bad labels still never touch memory or centers: the
// loss turns NaN and the centers stay as they were. Returns the previous setting.
bool set_cuda_label_check(bool enabled);
bool cuda_label_check_enabled();

// The loss dtype: the features' dtype, or float32 for 16-bit features.
at::ScalarType loss_dtype(at::ScalarType features_dtype);

// The accumulation dtype: float64 if features or centers are float64, else float32.
at::ScalarType acc_dtype(at::ScalarType features_dtype, at::ScalarType centers_dtype);

// The same as a C++ type, for the kernels of every device.
template <typename scalar_t, typename center_t>
using acc_type =
    std::conditional_t<std::is_same_v<scalar_t, double> || std::is_same_v<center_t, double>, double,
                       float>;

// Rows of the label-sorted batch per chunk, the unit of the per-class sums on every
// device: a class's rows are summed chunk by chunk in index order, and a class spanning
// several chunks leaves one partial sum per chunk (its slots), added up in chunk order.
// Fixed, so the summation order (and thus every result) does not depend on threads.
constexpr int64_t kChunkRows = 64;

// Per-row scale of the incoming gradient of the loss: g_i (none), g (sum), g / B (mean).
// `g` points at grad_loss (in g_t, on the kernels' device); one definition for the CPU
// and the CUDA kernels.
template <typename g_t>
struct GradScale {
  const g_t* g;
  int64_t stride;  // 0 for mean/sum (one value), grad_loss.stride(0) for none
  double inv_b;    // 1/B for mean, 1 otherwise
  template <typename acc_t>
  C10_HOST_DEVICE acc_t at(int64_t row) const {
    return static_cast<acc_t>(g[row * stride]) * static_cast<acc_t>(inv_b);
  }
};

// The GradScale of `grad_loss` (already of dtype g_t) for a batch of B rows.
template <typename g_t>
GradScale<g_t> grad_scale(const at::Tensor& grad_loss, Reduction reduction, int64_t B) {
  const bool none = reduction == Reduction::None;
  const double inv_b = reduction == Reduction::Mean && B > 0 ? 1.0 / static_cast<double>(B) : 1.0;
  return {grad_loss.const_data_ptr<g_t>(), none ? grad_loss.stride(0) : 0, inv_b};
}

// An allocator of uninitialised memory: at::detail::empty_cpu / empty_cuda, which
// (unlike at::empty) never pay the fill of torch.use_deterministic_algorithms, for
// tensors whose every element the kernels write.
using EmptyFn = at::Tensor (*)(at::IntArrayRef size, const at::TensorOptions& options);

// Outputs (loss, diff) allocated for the shapes of the forward ops: loss is 0-dim
// (mean, sum) or (B,) (none); diff is (B, D) when need_diff, else (0, D), in the
// accumulation dtype (acc_dtype), so that backward and the center sums read the
// differences unrounded (16-bit features: twice the bytes of a 16-bit copy).
std::tuple<at::Tensor, at::Tensor> alloc_forward_outputs(const at::Tensor& features,
                                                         at::ScalarType centers_dtype,
                                                         Reduction reduction, bool need_diff,
                                                         EmptyFn empty);

// Checks the backward ops' inputs: grad_loss matches the reduction, diff is (B, D).
void check_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& diff,
                           Reduction reduction);

// ... and for backward_centers: labels (B,) of an integer dtype, num_classes >= 0.
void check_backward_centers_inputs(const at::Tensor& grad_loss, const at::Tensor& diff,
                                   const at::Tensor& labels, Reduction reduction,
                                   int64_t num_classes);

}  // namespace centerloss
