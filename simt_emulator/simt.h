// SIMT emulation of CUDA's execution model for a host C++ compiler (g++), so the
// unchanged csrc/cuda/*.cu sources run on the CPU (see docs/cuda_emulation.md).
//
// Force-included (-include) before every emulated source, after rewrite_launches.py has
// turned `kernel<<<grid, block, shmem, stream>>>(args)` into ::simt::launch(...):
//  - a launch runs its blocks one after another on a few OS threads (SIMT_WORKERS), in an
//    order shuffled by SIMT_SEED; each block runs its threads as fibers (Boost.Context) that
//    switch only at barriers, again in a seeded random order;
//  - __shared__ variables are per-OS-thread statics, which is per block since a block
//    never leaves its OS thread;
//  - __syncthreads() and every warp primitive (__shfl_*_sync, __ballot_sync, ...) are
//    barriers: a thread that never arrives (divergent barrier, exited lane in a shuffle
//    mask) stops the process with a message instead of hanging;
//  - atomics are std::atomic_ref operations, __threadfence() a sequentially consistent fence.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// --- keywords --------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__ static

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

// --- the runtime's types (values as in CUDA's driver_types.h) ----------------------------
struct simt_stream;
typedef simt_stream* cudaStream_t;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorInvalidConfiguration = 9,
};
typedef cudaError_t cudaError;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

// The fields of cudaDeviceProp the sources may read, with an H100 SXM's values.
struct cudaDeviceProp {
  char name[256];
  int major, minor;
  int multiProcessorCount;
  int maxThreadsPerBlock;
  int maxThreadsPerMultiProcessor;
  int maxBlocksPerMultiProcessor;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int warpSize;
  int regsPerBlock, regsPerMultiprocessor;
  size_t sharedMemPerBlock, sharedMemPerMultiprocessor, sharedMemPerBlockOptin;
  size_t totalGlobalMem;
  int l2CacheSize;
};

namespace simt {

// --- per-thread state (set by the scheduler before it resumes a fiber) -------------------
struct Block;
struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  int linear;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  Block* block;
  bool race_fenced = false;  // the race variant: a __threadfence() ran (race.cpp)
};
ThreadState& current();
ThreadState* current_or_null();  // nullptr outside a kernel's threads

// Block-wide barrier of __syncthreads().
void syncthreads();
// Warp barrier over the lanes of `mask`: every lane of the mask must call it with the same
// mask. Publishes `value` (up to 8 bytes) and returns the value published by `src_lane`.
uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane, const char* what);
// Warp barrier that also combines a predicate over the mask's lanes (votes).
unsigned warp_ballot(unsigned mask, bool predicate, const char* what);
[[noreturn]] void fail(const char* fmt, ...);

// --- launches -----------------------------------------------------------------------------
struct LaunchConfig {
  dim3 grid, block;
  size_t shmem;
  cudaStream_t stream;
  LaunchConfig(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr)
      : grid(g), block(b), shmem(s), stream(st) {}
};

// Runs `body` once per thread of the grid; false (and the launch error set for
// cudaGetLastError) when the configuration is one a GPU refuses.
using BlockBody = void (*)(void* closure);
bool run_grid(const char* name, const LaunchConfig& cfg, BlockBody body, void* closure);

template <typename Fn, typename... A>
void launch(const LaunchConfig& cfg, const char* name, Fn fn, A&&... args) {
  // Kernel arguments are evaluated and copied once, as by a real launch.
  using Params = std::tuple<std::decay_t<A>...>;
  Params params(std::forward<A>(args)...);
  struct Closure {
    Fn* fn;
    Params* args;
  } closure{&fn, &params};
  run_grid(
      name, cfg,
      [](void* c) {
        auto* cl = static_cast<Closure*>(c);
        auto local = *cl->args;  // every thread gets its own copy of the arguments
        std::apply(*cl->fn, local);
      },
      &closure);
}

// Kernel launches so far, counting the device ops the emulated device runs for ATen
// (fills, copies on the device, sorts...) as one launch each, as a GPU would.
uint64_t launch_count();
void count_device_op();
// With SIMT_TRACE=1, prints every launch and device op to stderr.
void trace(const char* kind, const char* name);

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a wide type");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace simt

// --- built-in variables -----------------------------------------------------------------
#define threadIdx (::simt::current().thread_idx)
#define blockIdx (::simt::current().block_idx)
#define blockDim (::simt::current().block_dim)
#define gridDim (::simt::current().grid_dim)
constexpr int warpSize = 32;

// --- the race detector's hooks (the `race` variant, SIMT_RACE=1: race.cpp under
// ThreadSanitizer; docs/cuda_emulation.md, "Race detection"): a fence, and each atomic ------
#if SIMT_RACE
namespace simt::race {
void fence();                // acquires what fenced atomics published
void atomic(const void* p);  // after a fence: publishes (releases) what this thread did
}  // namespace simt::race
#define SIMT_RACE_FENCE() ::simt::race::fence()
#define SIMT_RACE_ATOMIC(p) ::simt::race::atomic(p)
#else
#define SIMT_RACE_FENCE() ((void)0)
#define SIMT_RACE_ATOMIC(p) ((void)0)
#endif

// --- synchronisation and warp primitives ----------------------------------------------------
inline void __syncthreads() { ::simt::syncthreads(); }
inline void __threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  SIMT_RACE_FENCE();
}
inline void __threadfence_block() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  SIMT_RACE_FENCE();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::simt::warp_exchange(mask, 0, ::simt::current().linear % 32, "__syncwarp");
}

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = ::simt::current().linear % 32;
  const int s = (lane & ~(width - 1)) + (src & (width - 1));
  return ::simt::from_bits<T>(::simt::warp_exchange(mask, ::simt::to_bits(v), s, "__shfl_sync"));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::simt::current().linear % 32;
  int s = lane ^ lane_mask;
  if ((s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;  // outside the segment: own value
  return ::simt::from_bits<T>(
      ::simt::warp_exchange(mask, ::simt::to_bits(v), s, "__shfl_xor_sync"));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::simt::current().linear % 32;
  int s = lane + static_cast<int>(delta);
  if ((s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;
  return ::simt::from_bits<T>(
      ::simt::warp_exchange(mask, ::simt::to_bits(v), s, "__shfl_down_sync"));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::simt::current().linear % 32;
  int s = lane - static_cast<int>(delta);
  if (s < 0 || (s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;
  return ::simt::from_bits<T>(::simt::warp_exchange(mask, ::simt::to_bits(v), s, "__shfl_up_sync"));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return ::simt::warp_ballot(mask, pred != 0, "__ballot_sync");
}
inline int __any_sync(unsigned mask, int pred) {
  return ::simt::warp_ballot(mask, pred != 0, "__any_sync") != 0;
}
inline int __all_sync(unsigned mask, int pred) {
  return ::simt::warp_ballot(mask, pred != 0, "__all_sync") == mask;
}

// --- the traffic model's hooks (simt_emulator/traffic.cpp, linked into the `traffic` variant
// only; weak, so null everywhere else): launches and device ops, memsets, device
// allocations, and each atomic's address (SIMT_TRAFFIC: the variant's define) -----------------
extern "C" {
__attribute__((weak, visibility("default"))) void simt_traffic_event(const char* kind,
                                                                     const char* name,
                                                                     size_t bytes);
__attribute__((weak, visibility("default"))) void simt_traffic_alloc(const void* p, size_t n);
__attribute__((weak, visibility("default"))) void simt_traffic_free(const void* p);
__attribute__((weak, visibility("default"))) void simt_traffic_atomic(const void* p, size_t n);
}
#if defined(SIMT_TRAFFIC)
#define SIMT_COUNT_ATOMIC(p) ::simt_traffic_atomic(p, sizeof(*(p)))
#else
#define SIMT_COUNT_ATOMIC(p) ((void)0)
#endif

// --- atomics (return the old value, as CUDA's do) ---------------------------------------------
template <typename T>
T atomicAdd(T* p, T v) {
  SIMT_COUNT_ATOMIC(p);
  SIMT_RACE_ATOMIC(p);
#if defined(__clang__)
  // One read-modify-write instruction (atomicrmw fadd, expanded after the IR passes):
  // atomic_ref's floating-point fetch_add is a load and a CAS loop, and the traffic
  // build's load hook would count that load as a second request of the atomic.
  if constexpr (std::is_floating_point_v<T>) return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
#endif
  return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
template <typename T>
T atomicSub(T* p, T v) {
  SIMT_COUNT_ATOMIC(p);
  SIMT_RACE_ATOMIC(p);
  return std::atomic_ref<T>(*p).fetch_sub(v, std::memory_order_relaxed);
}
template <typename T>
T atomicExch(T* p, T v) {
  SIMT_COUNT_ATOMIC(p);
  SIMT_RACE_ATOMIC(p);
  return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed);
}
template <typename T>
T atomicMax(T* p, T v) {
  SIMT_COUNT_ATOMIC(p);
  SIMT_RACE_ATOMIC(p);
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  while (old < v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}
template <typename T>
T atomicMin(T* p, T v) {
  SIMT_COUNT_ATOMIC(p);
  SIMT_RACE_ATOMIC(p);
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  while (v < old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}
template <typename T>
T atomicCAS(T* p, T expected, T desired) {
  SIMT_COUNT_ATOMIC(p);
  SIMT_RACE_ATOMIC(p);
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired, std::memory_order_relaxed);
  return expected;
}

// --- math and bit built-ins --------------------------------------------------------------------
template <typename T, typename U>
constexpr std::common_type_t<T, U> min(T a, U b) {
  return b < a ? b : a;
}
template <typename T, typename U>
constexpr std::common_type_t<T, U> max(T a, U b) {
  return a < b ? b : a;
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }

// --- the runtime API the sources call ------------------------------------------------------
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);

namespace simt {
// Blocks of `threads` threads that fit on one SM by the thread and block limits alone
// (registers and shared memory are not modelled).
int occupancy_blocks_per_sm(int threads, size_t dynamic_shmem);
}  // namespace simt

template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int threads,
                                                          size_t dynamic_shmem) {
  *blocks = ::simt::occupancy_blocks_per_sm(threads, dynamic_shmem);
  return *blocks > 0 ? cudaSuccess : cudaErrorInvalidValue;
}
