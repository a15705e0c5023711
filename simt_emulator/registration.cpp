// Binds the CUDA op functions (csrc/cuda/ops_cuda.h, compiled from the unchanged .cu files)
// to the centerloss schemas for the emulated device, as csrc/cuda/registration.cu does for
// the CUDA key.
#include <torch/library.h>

#include "ops_cuda.h"  // csrc/cuda/ is on build.py's include path

namespace centerloss {
namespace cuda {

TORCH_LIBRARY_IMPL(centerloss, PrivateUse1, m) { register_ops(m); }

}  // namespace cuda
}  // namespace centerloss
