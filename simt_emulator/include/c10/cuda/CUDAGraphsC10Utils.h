// Emulation stand-in for torch's c10/cuda/CUDAGraphsC10Utils.h (see ../../simt_host.h).
#pragma once
#include "simt_host.h"

namespace c10 {
namespace cuda {
using CaptureStatus = ::simt::CaptureStatus;
using ::simt::currentStreamCaptureStatusMayInitCtx;
}  // namespace cuda
}  // namespace c10
