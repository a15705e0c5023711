// The CUDA op functions (center_loss_cuda.cu), one per schema of ops.cpp. Declared here
// so that registration is separate from the code it registers: registration.cu binds
// them to the CUDA key, simt_emulator/registration.cpp to the emulated device's key.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>

namespace centerloss {
namespace cuda {

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& features,
                                                const at::Tensor& labels, const at::Tensor& centers,
                                                int64_t reduction, bool need_diff);
std::tuple<at::Tensor, at::Tensor> forward_update_cuda(at::Tensor& centers,
                                                       const at::Tensor& features,
                                                       const at::Tensor& labels, int64_t reduction,
                                                       double alpha, bool need_diff,
                                                       bool deterministic);
void update_centers_cuda(at::Tensor& centers, const at::Tensor& features, const at::Tensor& labels,
                         double alpha, bool deterministic);
at::Tensor backward_features_cuda(const at::Tensor& grad_loss, const at::Tensor& diff,
                                  int64_t reduction, std::optional<at::ScalarType> out_dtype);
at::Tensor backward_centers_cuda(const at::Tensor& grad_loss, const at::Tensor& diff,
                                 const at::Tensor& labels, int64_t reduction, int64_t num_classes,
                                 at::ScalarType centers_dtype, bool deterministic);

// Binds the functions above to the centerloss schemas, for whichever key `m` is for.
inline void register_ops(torch::Library& m) {
  m.impl("forward", &forward_cuda);
  m.impl("forward_update_", &forward_update_cuda);
  m.impl("update_centers_", &update_centers_cuda);
  m.impl("backward_features", &backward_features_cuda);
  m.impl("backward_centers", &backward_centers_cuda);
}

}  // namespace cuda
}  // namespace centerloss
