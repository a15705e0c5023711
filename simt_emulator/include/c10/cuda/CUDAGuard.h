// Emulation stand-in for torch's c10/cuda/CUDAGuard.h (see ../../simt_host.h).
#pragma once
#include "simt_host.h"

namespace c10 {
namespace cuda {
using CUDAGuard = ::simt::DeviceGuard;
using OptionalCUDAGuard = ::simt::OptionalDeviceGuard;
}  // namespace cuda
}  // namespace c10
