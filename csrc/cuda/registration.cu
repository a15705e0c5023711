// Binds the CUDA op functions (ops_cuda.h) to the centerloss schemas for the CUDA key.
#include <torch/library.h>

#include "ops_cuda.h"

namespace centerloss {
namespace cuda {

TORCH_LIBRARY_IMPL(centerloss, CUDA, m) { register_ops(m); }

}  // namespace cuda
}  // namespace centerloss
