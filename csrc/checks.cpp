// Input validation shared by the CPU and CUDA kernels. Every message names the
// argument and says what was expected (SPEC "Bad input").
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cmath>

#include "center_loss.h"

namespace centerloss {

namespace {
bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
}  // namespace

Reduction to_reduction(int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2,
                    "reduction must be 0 (none), 1 (mean) or 2 (sum); got ", reduction);
  return static_cast<Reduction>(reduction);
}

void check_inputs(const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centers) {
  TORCH_CHECK_TYPE(is_supported_float(features.scalar_type()),
                   "features must be float16, bfloat16, float32 or float64; got ",
                   features.scalar_type());
  TORCH_CHECK_TYPE(is_supported_float(centers.scalar_type()),
                   "centers must be float16, bfloat16, float32 or float64; got ",
                   centers.scalar_type());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
                   "labels must be an integer tensor (int64 or int32) of class indices; got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(features.dim() == 2, "features must be 2-D (batch, feature_dim); got shape ",
                    features.sizes());
  TORCH_CHECK_VALUE(labels.dim() == 1, "labels must be 1-D (batch,); got shape ", labels.sizes());
  TORCH_CHECK_VALUE(centers.dim() == 2,
                    "centers must be 2-D (num_classes, feature_dim); got shape ", centers.sizes());
  TORCH_CHECK_VALUE(features.size(1) == centers.size(1),
                    "features must have feature_dim = ", centers.size(1),
                    " columns (the width of centers); got ", features.size(1));
  TORCH_CHECK_VALUE(features.size(0) == labels.size(0),
                    "features and labels must have the same batch size; got ", features.size(0),
                    " features and ", labels.size(0), " labels");
  TORCH_CHECK(features.device() == labels.device() && features.device() == centers.device(),
              "features, labels and centers must be on the same device; got features on ",
              features.device(), ", labels on ", labels.device(), ", centers on ",
              centers.device());
}

void check_alpha(double alpha) {
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha >= 0.0 && alpha <= 1.0,
                    "alpha must be a finite number in [0, 1]; got ", alpha);
}

void throw_bad_label(int64_t index, int64_t value, int64_t num_classes) {
  TORCH_CHECK_INDEX(false, "labels must be in [0, num_classes) = [0, ", num_classes,
                    "); got labels[", index, "] = ", value);
  __builtin_unreachable();
}

template <typename index_t>
void check_label_range_host(const index_t* labels, int64_t n, int64_t num_classes) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = static_cast<int64_t>(labels[i]);
    if (y < 0 || y >= num_classes) throw_bad_label(i, y, num_classes);
  }
}

namespace {
std::atomic<bool> g_cuda_label_check{true};
}

bool set_cuda_label_check(bool enabled) { return g_cuda_label_check.exchange(enabled); }
bool cuda_label_check_enabled() { return g_cuda_label_check.load(); }
template void check_label_range_host<int32_t>(const int32_t*, int64_t, int64_t);
template void check_label_range_host<int64_t>(const int64_t*, int64_t, int64_t);

at::ScalarType loss_dtype(at::ScalarType features_dtype) {
  return at::isReducedFloatingType(features_dtype) ? at::kFloat : features_dtype;
}

at::ScalarType acc_dtype(at::ScalarType features_dtype, at::ScalarType centers_dtype) {
  return (features_dtype == at::kDouble || centers_dtype == at::kDouble) ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> alloc_forward_outputs(const at::Tensor& features,
                                                         at::ScalarType centers_dtype,
                                                         Reduction reduction, bool need_diff,
                                                         EmptyFn empty) {
  const int64_t B = features.size(0);
  const int64_t D = features.size(1);
  auto loss_opts = features.options().dtype(loss_dtype(features.scalar_type()));
  at::Tensor loss = reduction == Reduction::None ? empty({B}, loss_opts) : empty({}, loss_opts);
  at::Tensor diff =
      empty({need_diff ? B : 0, D},
            features.options().dtype(acc_dtype(features.scalar_type(), centers_dtype)));
  return {loss, diff};
}

void check_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& diff,
                           Reduction reduction) {
  TORCH_CHECK_VALUE(diff.dim() == 2, "diff must be 2-D (batch, feature_dim); got shape ",
                    diff.sizes());
  if (reduction == Reduction::None) {
    TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == diff.size(0),
                      "grad_loss must have shape (", diff.size(0), ",) for reduction='none'; got ",
                      grad_loss.sizes());
  } else {
    TORCH_CHECK_VALUE(grad_loss.numel() == 1,
                      "grad_loss must hold one value for reduction='mean' or 'sum'; got shape ",
                      grad_loss.sizes());
  }
  TORCH_CHECK(grad_loss.device() == diff.device(),
              "grad_loss and diff must be on the same device; got ", grad_loss.device(), " and ",
              diff.device());
}

void check_backward_centers_inputs(const at::Tensor& grad_loss, const at::Tensor& diff,
                                   const at::Tensor& labels, Reduction reduction,
                                   int64_t num_classes) {
  check_backward_inputs(grad_loss, diff, reduction);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
                   "labels must be an integer tensor (int64 or int32) of class indices; got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == diff.size(0), "labels must have shape (",
                    diff.size(0), ",); got ", labels.sizes());
  TORCH_CHECK(labels.device() == diff.device(), "labels and diff must be on the same device; got ",
              labels.device(), " and ", diff.device());
  TORCH_CHECK_VALUE(num_classes >= 0, "num_classes must be >= 0; got ", num_classes);
}

}  // namespace centerloss
