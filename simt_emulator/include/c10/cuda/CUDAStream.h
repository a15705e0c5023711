// Emulation stand-in for torch's c10/cuda/CUDAStream.h (see ../../simt_host.h).
#pragma once
#include "simt_host.h"

namespace c10 {
namespace cuda {
using CUDAStream = ::simt::Stream;
using ::simt::getCurrentCUDAStream;
using ::simt::getDefaultCUDAStream;
}  // namespace cuda
}  // namespace c10
