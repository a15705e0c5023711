// Emulation stand-in for torch's ATen/cuda/CUDAContext.h (see ../../simt_host.h).
#pragma once
#include <ATen/ATen.h>

#include "simt_host.h"

namespace at {
namespace cuda {
using CUDAStream = ::simt::Stream;
using ::simt::getCurrentCUDAStream;
using ::simt::getCurrentDeviceProperties;
using ::simt::getDefaultCUDAStream;
using ::simt::getDeviceProperties;
}  // namespace cuda
}  // namespace at
