// Kernels with planted races, and their correct twins, for the race detector's own tests
// (python_tests/cuda_kernels/test_race_detector.py). Built into the `race` variant only,
// like csrc/cuda/*.cu (launches rewritten, compiled under ThreadSanitizer); the test calls
// simt_race_planted(name) through ctypes, in a subprocess per case.
#include <cstdlib>
#include <cstring>

namespace planted {

constexpr int kThreads = 64;

// Each thread writes its slot of shared memory, then reads its neighbour's: without the
// barrier, thread t's read of slot t + 1 races with thread t + 1's write.
__global__ void shared_neighbour_kernel(int* out, bool sync) {
  __shared__ int slot[kThreads];
  const int t = threadIdx.x;
  slot[t] = t * 3;
  if (sync) __syncthreads();
  out[blockIdx.x * kThreads + t] = slot[(t + 1) % kThreads];
}

// Thread 0 of every block adds 1 to one global counter: a plain read-modify-write races
// between blocks; atomicAdd does not.
__global__ void global_count_kernel(int* count, bool atomic) {
  if (threadIdx.x != 0) return;
  if (atomic) {
    atomicAdd(count, 1);
  } else {
    *count = *count + 1;
  }
}

// Block 0 publishes data and sets a flag; block 1 reads the flag and, when set, the data.
// Racy: a plain store and a plain load of the flag (no fence, no atomic). Correct: the
// producer fences then sets the flag atomically; the consumer reads it atomically, then
// fences before it reads the data.
__global__ void flag_kernel(int* data, int* flag, int* out, bool fenced) {
  const int t = threadIdx.x;
  if (blockIdx.x == 0) {
    data[t] = t + 1;
    __syncthreads();
    if (t != 0) return;
    if (fenced) {
      __threadfence();
      atomicExch(flag, 1);
    } else {
      *flag = 1;
    }
  } else {
    __shared__ int seen;
    if (t == 0) {
      if (fenced) {
        seen = atomicAdd(flag, 0);
        __threadfence();
      } else {
        seen = *flag;
      }
    }
    __syncthreads();
    if (seen) out[t] = const_cast<volatile int*>(data)[t];
  }
}

// The last-block-done pattern: every block writes its partial, counts itself in with an
// atomic, and the last block to arrive sums the partials. Correct: __threadfence() before
// the count and after it (forward_rows_kernel's loss reduction). `fenced` false: the same
// atomics without the fences, which do not order the partials (a race).
__global__ void last_block_kernel(int* partials, unsigned* done, int* total, bool fenced) {
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = static_cast<int>(blockIdx.x) + 1;
    if (fenced) __threadfence();
    is_last = atomicAdd(done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last || threadIdx.x != 0) return;
  if (fenced) __threadfence();
  int s = 0;
  for (unsigned b = 0; b < gridDim.x; ++b) s += const_cast<volatile int*>(partials)[b];
  *total = s;
}

int* zeroed(size_t n) {
  void* p = nullptr;
  if (posix_memalign(&p, 512, n * sizeof(int)) != 0) std::abort();
  std::memset(p, 0, n * sizeof(int));
  return static_cast<int*>(p);
}

}  // namespace planted

// Runs the planted kernel `name`; returns 0, or -1 for an unknown name.
extern "C" __attribute__((visibility("default"))) int simt_race_planted(const char* name) {
  using namespace planted;
  const bool ok = std::strstr(name, "_ok") != nullptr;  // the correct twin
  const int blocks = 4;
  int* a = zeroed(blocks * kThreads);
  int* b = zeroed(blocks * kThreads);
  int* c = zeroed(blocks * kThreads);
  int rc = 0;
  if (std::strncmp(name, "shared", 6) == 0) {
    shared_neighbour_kernel<<<blocks, kThreads>>>(a, ok);
  } else if (std::strncmp(name, "global", 6) == 0) {
    global_count_kernel<<<blocks, kThreads>>>(a, ok);
  } else if (std::strncmp(name, "flag", 4) == 0) {
    flag_kernel<<<2, kThreads>>>(a, b, c, ok);
  } else if (std::strncmp(name, "last_block", 10) == 0) {
    last_block_kernel<<<blocks, kThreads>>>(a, reinterpret_cast<unsigned*>(b), c, ok);
  } else {
    rc = -1;
  }
  std::free(a);
  std::free(b);
  std::free(c);
  return rc;
}
