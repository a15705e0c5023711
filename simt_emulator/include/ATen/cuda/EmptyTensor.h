// Emulation stand-in for torch's ATen/cuda/EmptyTensor.h (see ../../simt_host.h).
#pragma once
#include "simt_host.h"

namespace at {
namespace detail {
using ::simt::empty_cuda;
}  // namespace detail
}  // namespace at
