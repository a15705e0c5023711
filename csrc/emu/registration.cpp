// Binds the CUDA op functions (../cuda/ops_cuda.h, compiled from the unchanged .cu files)
// to the centerloss schemas for the emulated device, as ../cuda/registration.cu does for
// the CUDA key.
#include "../cuda/ops_cuda.h"

#include <torch/library.h>

namespace centerloss {
namespace cuda {

TORCH_LIBRARY_IMPL(centerloss, PrivateUse1, m) { register_ops(m); }

}  // namespace cuda
}  // namespace centerloss
