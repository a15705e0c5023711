// Binds the CUDA op functions (../cuda/ops_cuda.h, compiled from the unchanged .cu files)
// to the centerloss schemas for the emulated device, as ../cuda/registration.cu does for
// the CUDA key.
#include "../cuda/ops_cuda.h"

#include <torch/library.h>

namespace centerloss {
namespace cuda {

TORCH_LIBRARY_IMPL(centerloss, PrivateUse1, m) {
  m.impl("forward", &forward_cuda);
  m.impl("forward_update_", &forward_update_cuda);
  m.impl("update_centers_", &update_centers_cuda);
  m.impl("backward_features", &backward_features_cuda);
  m.impl("backward_centers", &backward_centers_cuda);
}

}  // namespace cuda
}  // namespace centerloss
