// Binds the CUDA op functions (ops_cuda.h) to the centerloss schemas for the CUDA key.
#include "ops_cuda.h"

#include <torch/library.h>

namespace centerloss {
namespace cuda {

TORCH_LIBRARY_IMPL(centerloss, CUDA, m) { register_ops(m); }

}  // namespace cuda
}  // namespace centerloss
