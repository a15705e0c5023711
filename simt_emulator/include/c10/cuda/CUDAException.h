// Emulation stand-in for torch's c10/cuda/CUDAException.h: the C10_CUDA_* checks are
// defined in ../../simt_host.h over the emulator's runtime API.
#pragma once
#include "simt_host.h"
