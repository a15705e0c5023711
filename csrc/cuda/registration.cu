// Binds the CUDA op functions (ops_cuda.h) to the centerloss schemas for the CUDA key.
#include "ops_cuda.h"

#include <torch/library.h>

namespace centerloss {
namespace cuda {

TORCH_LIBRARY_IMPL(centerloss, CUDA, m) {
  m.impl("forward", &forward_cuda);
  m.impl("forward_update_", &forward_update_cuda);
  m.impl("update_centers_", &update_centers_cuda);
  m.impl("backward_features", &backward_features_cuda);
  m.impl("backward_centers", &backward_centers_cuda);
}

}  // namespace cuda
}  // namespace centerloss
