// Host-side stand-ins for the ATen/c10 CUDA API the CUDA sources call, implemented by the
// emulator (simt_runtime.cpp, device.cpp). The headers beside this one (ATen/cuda/...,
// c10/cuda/...) shadow torch's own and map the real names onto these with using-
// declarations, so no symbol of torch's CUDA libraries is ever redefined.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/Exception.h>

#include <optional>

namespace simt {

// The single in-order stream of the emulated device.
struct Stream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
  c10::DeviceIndex device_index() const { return 0; }
  int64_t id() const { return 0; }
  void synchronize() const {}
};
inline Stream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
inline Stream getDefaultCUDAStream(c10::DeviceIndex = -1) { return {}; }

// H100-like limits (simt_runtime.cpp: cudaGetDeviceProperties).
cudaDeviceProp* getCurrentDeviceProperties();
cudaDeviceProp* getDeviceProperties(c10::DeviceIndex device);

// Device guards: one emulated device, nothing to switch.
class DeviceGuard {
 public:
  explicit DeviceGuard(c10::Device) {}
  explicit DeviceGuard(c10::DeviceIndex) {}
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
};
class OptionalDeviceGuard {
 public:
  OptionalDeviceGuard() = default;
  explicit OptionalDeviceGuard(std::optional<c10::Device>) {}
  explicit OptionalDeviceGuard(c10::Device) {}
  void set_device(c10::Device) {}
  void set_index(c10::DeviceIndex) {}
};

// Graph capture cannot be emulated: the stream is never capturing.
enum class CaptureStatus : int { None = 0, Active = 1, Invalidated = 2 };
inline CaptureStatus currentStreamCaptureStatusMayInitCtx() { return CaptureStatus::None; }

// A device-to-host read-back (counted: see host_reads()).
void memcpy_and_sync(void* dst, const void* src, int64_t nbytes, cudaMemcpyKind kind,
                     cudaStream_t stream);
void device_synchronize();

// Allocation without PyTorch's deterministic fill of uninitialised memory, as
// at::detail::empty_cuda does on a GPU.
at::TensorBase empty_cuda(c10::IntArrayRef size, const c10::TensorOptions& options);
at::TensorBase empty_cuda(c10::IntArrayRef size, c10::ScalarType dtype,
                          std::optional<c10::Device> device,
                          std::optional<c10::MemoryFormat> memory_format);
at::TensorBase empty_cuda(c10::IntArrayRef size, std::optional<c10::ScalarType> dtype,
                          std::optional<c10::Layout> layout, std::optional<c10::Device> device,
                          std::optional<bool> pin_memory,
                          std::optional<c10::MemoryFormat> memory_format);

}  // namespace simt

#define C10_CUDA_CHECK(EXPR)                                                              \
  do {                                                                                    \
    const cudaError_t simt_err_ = (EXPR);                                                 \
    TORCH_CHECK(simt_err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(simt_err_)); \
  } while (0)
#define C10_CUDA_CHECK_WARN(EXPR) C10_CUDA_CHECK(EXPR)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
#define C10_CUDA_IGNORE_ERROR(EXPR) (void)(EXPR)
#define AT_CUDA_CHECK(EXPR) C10_CUDA_CHECK(EXPR)
