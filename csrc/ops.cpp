// The op schemas, declared once for every device (kernels: cpu/, cuda/; fake
// kernels and autograd: centerloss_ext/ops.py).
#include <torch/library.h>

// `deterministic` picks, where a device has both, the kernel whose results are
// bit-identical run to run over the fastest one (CUDA: sorted sums instead of atomics).
// The CPU kernels are deterministic always. Python passes
// torch.are_deterministic_algorithms_enabled() unless told otherwise.
TORCH_LIBRARY(centerloss, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // Per-sample loss reduced as asked, and (need_diff) the rows x_i - c_{y_i} that
  // backward needs, in the accumulation type (float32, or float64 when features or
  // centers are float64): never rounded to 16 bits. Centers are only read.
  m.def(
      "forward(Tensor features, Tensor labels, Tensor centers, int reduction, "
      "bool need_diff) -> (Tensor loss, Tensor diff)",
      tags);
  // The training step of alpha mode in one pass: forward with the pre-update centers,
  // then the paper's center update on the classes present in the batch.
  m.def(
      "forward_update_(Tensor(a!) centers, Tensor features, Tensor labels, "
      "int reduction, float alpha, bool need_diff, bool deterministic=False) "
      "-> (Tensor loss, Tensor diff)",
      tags);
  // The paper's center update alone (eq. 4).
  m.def(
      "update_centers_(Tensor(a!) centers, Tensor features, Tensor labels, "
      "float alpha, bool deterministic=False) -> ()",
      tags);
  // d loss / d features from the saved diff rows, in out_dtype (the features' dtype;
  // None: diff's dtype).
  m.def(
      "backward_features(Tensor grad_loss, Tensor diff, int reduction, "
      "ScalarType? out_dtype=None) -> Tensor",
      tags);
  // d loss / d centers (dense, num_classes x D) from the saved diff rows.
  m.def(
      "backward_centers(Tensor grad_loss, Tensor diff, Tensor labels, int reduction, "
      "int num_classes, ScalarType centers_dtype, bool deterministic=False) -> Tensor",
      tags);
}
