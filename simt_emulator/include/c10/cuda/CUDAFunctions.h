// Emulation stand-in for torch's c10/cuda/CUDAFunctions.h (see ../../simt_host.h).
#pragma once
#include "simt_host.h"

namespace c10 {
namespace cuda {
using ::simt::device_synchronize;
using ::simt::memcpy_and_sync;
}  // namespace cuda
}  // namespace c10
