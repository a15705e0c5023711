// The emulated device: PyTorch's PrivateUse1 backend, renamed "simt" by
// simt_emulator/loader.py. Its memory is host memory, so the emulated CUDA kernels
// read and write it directly; every ATen op without a kernel here runs on the CPU through
// at::native::cpu_fallback (copies in and out), and counts as one device launch.
//
// Also the host half of the stand-ins in include/ (streams, properties, read-backs,
// at::detail::empty_cuda) and counters the tests read through ctypes.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/EmptyTensor.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/set_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "simt.h"
#include "simt_host.h"

namespace simt {
namespace {

constexpr c10::DeviceType kDevice = c10::DeviceType::PrivateUse1;

std::atomic<int64_t> g_allocated{0}, g_peak{0};
std::atomic<uint64_t> g_host_reads{0};
thread_local int t_in_fallback = 0;  // copies made by the CPU fallback are not read-backs

// Host memory aligned as the CUDA caching allocator aligns (512 bytes), of the exact size
// asked (so ASan's redzones sit right behind it), filled with 0xFF bytes (NaN, -1) unless
// SIMT_POISON=0: code that reads memory it never wrote gets garbage, as on a GPU.
struct Allocator final : c10::Allocator {
  static bool poison() {
    static const bool on = [] {
      const char* v = std::getenv("SIMT_POISON");
      return !(v && std::strcmp(v, "0") == 0);
    }();
    return on;
  }
  static void release(void* ctx) {
    auto* header = static_cast<int64_t*>(ctx);
    if (simt_traffic_free) simt_traffic_free(static_cast<char*>(ctx) + 512);
    g_allocated -= header[0];
    std::free(header);
  }
  c10::DataPtr allocate(size_t n) override {
    // The size lives in a 512-byte header in front of the data (the data stays aligned).
    void* raw = nullptr;
    if (posix_memalign(&raw, 512, 512 + n) != 0 || raw == nullptr)
      TORCH_CHECK(false, "simt device: out of host memory allocating ", n, " bytes");
    auto* header = static_cast<int64_t*>(raw);
    header[0] = static_cast<int64_t>(n);
    char* data = static_cast<char*>(raw) + 512;
    if (poison() && n) std::memset(data, 0xFF, n);
    if (simt_traffic_alloc) simt_traffic_alloc(data, n);  // the traffic variant's hook
    const int64_t now = (g_allocated += static_cast<int64_t>(n));
    int64_t peak = g_peak.load();
    while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
    }
    return {data, raw, &release, c10::Device(kDevice, 0)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};
Allocator g_allocator;

struct GuardImpl final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return kDevice; }
  c10::Device exchangeDevice(c10::Device) const override { return {kDevice, 0}; }
  c10::Device getDevice() const override { return {kDevice, 0}; }
  void setDevice(c10::Device) const override {}
  void uncheckedSetDevice(c10::Device) const noexcept override {}
  c10::Stream getStream(c10::Device d) const override {
    return c10::Stream(c10::Stream::DEFAULT, d);
  }
  c10::Stream getDefaultStream(c10::Device d) const override {
    return c10::Stream(c10::Stream::DEFAULT, d);
  }
  c10::Stream exchangeStream(c10::Stream s) const override { return s; }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
  void record(void**, const c10::Stream&, const c10::DeviceIndex,
              const c10::EventFlag) const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}
};

// What PyTorch asks of a PrivateUse1 backend beyond kernels (autograd's engine asks
// for a primary context; random ops run on the CPU through the fallback).
struct Hooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    return at::detail::getDefaultCPUGenerator();
  }
  at::Device getDeviceFromPtr(void*) const override { return {kDevice, 0}; }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t n) const override {
    at::native::resize_bytes_cpu(storage.unsafeGetStorageImpl(), n);
  }
};

// A CPU tensor over the same memory, sizes and strides (no copy).
at::Tensor cpu_alias(const at::Tensor& t) {
  if (t.device().type() != kDevice) return t;
  return at::from_blob(
      t.data_ptr(), t.sizes(), t.strides(), [](void*) {}, t.options().device(at::kCPU));
}

bool deterministic_fill() {
  return at::globalContext().deterministicAlgorithms() &&
         at::globalContext().deterministicFillUninitializedMemory();
}

// What torch's empty_cuda does in deterministic mode: fill (one kernel) the new memory.
at::Tensor maybe_fill(at::Tensor t) {
  if (deterministic_fill() && t.numel() > 0) {
    count_device_op();
    trace("op", "fill of empty memory (deterministic mode)");
    at::native::fill_empty_deterministic_(t);
  }
  return t;
}

at::Tensor empty_memory_format(c10::IntArrayRef size, std::optional<at::ScalarType> dtype,
                               std::optional<at::Layout> layout, std::optional<at::Device> device,
                               std::optional<bool> pin,
                               std::optional<at::MemoryFormat> memory_format) {
  const c10::DispatchKeySet ks(c10::DispatchKey::PrivateUse1);
  return maybe_fill(at::detail::empty_generic(size, &g_allocator, ks, c10::dtype_or_default(dtype),
                                              memory_format));
}

at::Tensor empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride,
                         std::optional<at::ScalarType> dtype, std::optional<at::Layout>,
                         std::optional<at::Device>, std::optional<bool>) {
  const c10::DispatchKeySet ks(c10::DispatchKey::PrivateUse1);
  return maybe_fill(at::detail::empty_strided_generic(size, stride, &g_allocator, ks,
                                                      c10::dtype_or_default(dtype)));
}

// Copies between this device and the CPU, or within this device (one device launch).
at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool) {
  const bool from_device = self.device().type() == kDevice;
  const bool to_device = dst.device().type() == kDevice;
  if (from_device && to_device) {
    count_device_op();
    trace("op", "copy (device to device)");
  } else if (from_device && !t_in_fallback) {
    ++g_host_reads;
  }
  cpu_alias(dst).copy_(cpu_alias(self));
  return dst;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  dst.resize_(self.sizes());
  return copy_from(self, dst, false);
}

const at::Tensor& resize(const at::Tensor& self, c10::IntArrayRef size,
                         std::optional<at::MemoryFormat> memory_format) {
  at::TensorImpl* impl = self.unsafeGetTensorImpl();
  impl->set_sizes_contiguous(size);
  const auto nbytes = at::detail::computeStorageNbytesContiguous(size, impl->dtype().itemsize(),
                                                                 impl->storage_offset());
  at::native::maybe_resize_storage_cpu(impl, nbytes);  // reallocates with our allocator
  if (memory_format.has_value()) {
    TORCH_CHECK(*memory_format != at::MemoryFormat::Preserve, "resize_: unsupported memory format ",
                *memory_format);
    impl->empty_tensor_restride(*memory_format);
  }
  return self;
}

at::Tensor& set_storage(at::Tensor& self, c10::Storage storage, int64_t offset,
                        c10::IntArrayRef size, c10::IntArrayRef stride) {
  return at::native::set_storage_cpu_(self, storage, offset, size, stride);
}

at::Tensor& set_source_storage(at::Tensor& self, c10::Storage storage) {
  const int64_t n = static_cast<int64_t>(storage.nbytes() / self.dtype().itemsize());
  return set_storage(self, storage, 0, {n}, {});
}

// .item(): a device-to-host read, as on a GPU.
at::Scalar local_scalar_dense(const at::Tensor& self) {
  if (!t_in_fallback) ++g_host_reads;
  return cpu_alias(self).item();
}

void fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  count_device_op();
  trace("op", op.schema().operator_name().name.c_str());
  ++t_in_fallback;
  try {
    at::native::cpu_fallback(op, stack);
  } catch (...) {
    --t_in_fallback;
    throw;
  }
  --t_in_fallback;
}

C10_REGISTER_GUARD_IMPL(PrivateUse1, GuardImpl);

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&fallback>());
}

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", empty_memory_format);
  m.impl("empty_strided", empty_strided);
  m.impl("_copy_from", copy_from);
  m.impl("_copy_from_and_resize", copy_from_and_resize);
  m.impl("resize_", resize);
  m.impl("set_.source_Storage", set_source_storage);
  m.impl("set_.source_Storage_storage_offset", set_storage);
  m.impl("_local_scalar_dense", local_scalar_dense);
  // views share the device memory: the generic implementations
  m.impl("as_strided", at::native::as_strided_tensorimpl);
  m.impl("view", at::native::view);
  m.impl("_reshape_alias", at::native::_reshape_alias);
}

struct RegisterBackend {
  RegisterBackend() {
    c10::SetAllocator(kDevice, &g_allocator);
    static Hooks hooks;
    at::RegisterPrivateUse1HooksInterface(&hooks);
  }
} g_register_backend;

}  // namespace

// --- host half of the stand-ins -------------------------------------------------------------
cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp prop = [] {
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    return p;
  }();
  return &prop;
}
cudaDeviceProp* getDeviceProperties(c10::DeviceIndex) { return getCurrentDeviceProperties(); }

void memcpy_and_sync(void* dst, const void* src, int64_t nbytes, cudaMemcpyKind kind,
                     cudaStream_t) {
  if (kind == cudaMemcpyDeviceToHost) ++g_host_reads;
  if (nbytes) std::memmove(dst, src, static_cast<size_t>(nbytes));
}
void device_synchronize() {}

at::TensorBase empty_cuda(c10::IntArrayRef size, const c10::TensorOptions& options) {
  const c10::DispatchKeySet ks(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_generic(size, &g_allocator, ks, options.dtype().toScalarType(),
                                   options.memory_format_opt());
}
at::TensorBase empty_cuda(c10::IntArrayRef size, c10::ScalarType dtype, std::optional<c10::Device>,
                          std::optional<c10::MemoryFormat> mf) {
  const c10::DispatchKeySet ks(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_generic(size, &g_allocator, ks, dtype, mf);
}
at::TensorBase empty_cuda(c10::IntArrayRef size, std::optional<c10::ScalarType> dtype,
                          std::optional<c10::Layout>, std::optional<c10::Device>,
                          std::optional<bool>, std::optional<c10::MemoryFormat> mf) {
  const c10::DispatchKeySet ks(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_generic(size, &g_allocator, ks, c10::dtype_or_default(dtype), mf);
}

}  // namespace simt

// --- counters for the tests (ctypes) ----------------------------------------------------------
extern "C" {
__attribute__((visibility("default"))) uint64_t simt_launch_count() { return simt::launch_count(); }
__attribute__((visibility("default"))) uint64_t simt_host_reads() {
  return simt::g_host_reads.load();
}
__attribute__((visibility("default"))) int64_t simt_memory_allocated() {
  return simt::g_allocated.load();
}
__attribute__((visibility("default"))) int64_t simt_max_memory_allocated() {
  return simt::g_peak.load();
}
__attribute__((visibility("default"))) void simt_reset_peak_memory_stats() {
  simt::g_peak = simt::g_allocated.load();
}
}
