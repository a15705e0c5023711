// The emulator's scheduler and runtime API (see simt.h for the model).
//
// Environment:
//   SIMT_SEED      0 or unset: blocks and threads run in index order; any other value
//                  shuffles the block order and, at every barrier, the order in which the
//                  block's threads run until their next barrier.
//   SIMT_WORKERS   OS threads that run blocks side by side (default 2).
//   SIMT_STACK_KB  stack of each emulated thread (default 64, 256 under ASan).
//   SIMT_TRACE     1: print every kernel launch and device op to stderr.
#include <algorithm>
#include <boost/context/fiber.hpp>
#include <boost/context/stack_context.hpp>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "race.h"
#include "simt.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

namespace ctx = boost::context;

namespace simt {

namespace {

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

// ASan must be told when the stack changes under it, or it reports false errors.
struct StackSwitch {
  void* fake = nullptr;
  void start(const void* bottom, size_t size) {
#if SIMT_ASAN
    __sanitizer_start_switch_fiber(&fake, bottom, size);
#else
    (void)bottom, (void)size;
#endif
  }
  void start_final(const void* bottom, size_t size) {  // the current fiber is finishing
#if SIMT_ASAN
    __sanitizer_start_switch_fiber(nullptr, bottom, size);
#else
    (void)bottom, (void)size;
#endif
  }
  void finish(const void** from_bottom = nullptr, size_t* from_size = nullptr) {
#if SIMT_ASAN
    __sanitizer_finish_switch_fiber(fake, from_bottom, from_size);
#else
    (void)from_bottom, (void)from_size;
#endif
  }
};

// Stacks are allocated once per OS thread and reused by every block it runs.
struct PooledStack {
  char* base;
  size_t size;
  ctx::stack_context allocate() {
    ctx::stack_context sc;
    sc.size = size;
    sc.sp = base + size;
    return sc;
  }
  void deallocate(ctx::stack_context&) noexcept {}
};

}  // namespace

enum class State { Ready, Waiting, Done };

struct Thread {
  ThreadState st;
  State state = State::Ready;
  ctx::fiber fiber;   // the emulated thread (valid while suspended)
  ctx::fiber caller;  // the scheduler, while the thread runs
  StackSwitch sw;
  char* stack = nullptr;
  size_t stack_size = 0;
  const void* sched_bottom = nullptr;  // the scheduler's stack, for ASan
  size_t sched_size = 0;
  const char* waiting_at = "";
  int want_src = 0;     // the lane this lane reads in the warp exchange it waits in
  uint64_t result = 0;  // what it read, set when the exchange is released
  unsigned ballot = 0;
  void* race_fiber = nullptr;         // the race variant: this thread's TSan fiber
  race::Token* race_token = nullptr;  // ... and the barrier instance it waits in
};

struct Warp {
  unsigned mask = 0;     // lanes of the exchange in progress
  unsigned arrived = 0;  // lanes that reached it
  unsigned ballot = 0;
  const char* what = nullptr;
  uint64_t values[32] = {};
  race::Token* race_token = nullptr;  // the race variant: the exchange in progress
};

constexpr const char* kSync = "__syncthreads";

struct Block {
  std::vector<Thread> threads;
  std::deque<int> ready;  // threads that can run until their next barrier
  std::vector<Warp> warps;
  int live = 0;        // threads not Done
  int at_barrier = 0;  // threads waiting in __syncthreads
  std::mt19937_64* rng = nullptr;
  bool shuffle = false;
  const char* kernel = "";
  race::Token* race_token = nullptr;  // the race variant: the __syncthreads in progress
  void* race_sched = nullptr;         // ... and the scheduler's TSan context

  void wake(int i) {
    threads[i].state = State::Ready;
    ready.push_back(i);
  }
  void release_barrier() {
    at_barrier = 0;
    race_token = nullptr;
    for (size_t i = 0; i < threads.size(); ++i)
      if (threads[i].state == State::Waiting && threads[i].waiting_at == kSync) wake(int(i));
  }
  int index(const Thread* t) const { return int(t - threads.data()); }
};

namespace {

thread_local ThreadState* g_current = nullptr;
thread_local Thread* g_thread = nullptr;
std::atomic<uint64_t> g_launches{0};
std::atomic<int> g_last_error{cudaSuccess};

// Fiber stacks, allocated once per OS thread and reused by every block it runs.
struct WorkerStacks {
  std::vector<std::unique_ptr<char[]>> stacks;
  size_t size = 0;
  char* get(size_t i, size_t bytes) {
    if (bytes != size) {
      stacks.clear();
      size = bytes;
    }
    while (stacks.size() <= i) stacks.emplace_back(new char[bytes]);
    return stacks[i].get();
  }
};
thread_local WorkerStacks t_stacks;

// Suspends the running emulated thread until the scheduler resumes it.
void suspend(Thread* t) {
  race::switch_to(t->st.block->race_sched);
  t->sw.start(t->sched_bottom, t->sched_size);
  t->caller = std::move(t->caller).resume();
  t->sw.finish(&t->sched_bottom, &t->sched_size);
}

// The running thread waits until woken (state Waiting) or lets the others run first
// (state Ready, back in the queue).
void block_here(Thread* t, bool requeue, const char* what) {
  Block* b = t->st.block;
  if (requeue) {
    t->state = State::Ready;
    b->ready.push_back(b->index(t));
  } else {
    t->state = State::Waiting;
    t->waiting_at = what;
  }
  suspend(t);
}

}  // namespace

ThreadState& current() {
  if (!g_current) fail("a device built-in (threadIdx, __syncthreads, ...) used outside a kernel");
  return *g_current;
}

ThreadState* current_or_null() { return g_current; }

void fail(const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\nsimt emulator: %s\n", msg);
  std::fflush(stderr);
  std::abort();
}

void syncthreads() {
  Thread* t = g_thread;
  Block* b = t->st.block;
  t->race_token = b->race_token = race::arrive(b->race_token);
  if (++b->at_barrier == b->live) {  // the last live thread to arrive releases the others
    b->release_barrier();
    block_here(t, /*requeue=*/true, kSync);  // ... and lets them run before it goes on
  } else {
    block_here(t, /*requeue=*/false, kSync);
  }
  race::leave(t->race_token);
}

namespace {

// Joins the warp exchange of the calling lane; when the last lane of the mask arrives,
// every lane gets the value of the lane it named and the ballot of the mask.
void warp_arrive(unsigned mask, uint64_t value, int src, bool predicate, const char* what) {
  Thread* t = g_thread;
  Block* b = t->st.block;
  const int lane = t->st.linear % 32;
  const int warp_base = t->st.linear - lane;
  Warp& w = b->warps[t->st.linear / 32];
  if (!(mask >> lane & 1u))
    fail("%s in kernel %s: lane %d calls it with mask 0x%08x, which leaves it out", what, b->kernel,
         lane, mask);
  const int warp_size = std::min<int>(32, int(b->threads.size()) - warp_base);
  if (warp_size < 32 && (mask >> warp_size) != 0)
    fail("%s in kernel %s: mask 0x%08x names lanes past the block's last thread", what, b->kernel,
         mask);
  if (w.arrived == 0) {
    w.mask = mask;
    w.what = what;
    w.ballot = 0;
  } else if (w.mask != mask || std::strcmp(w.what, what) != 0) {
    fail("kernel %s: lanes of warp %d diverge: %s(mask 0x%08x) meets %s(mask 0x%08x)", b->kernel,
         t->st.linear / 32, what, mask, w.what, w.mask);
  }
  t->race_token = w.race_token = race::arrive(w.race_token);
  w.arrived |= 1u << lane;
  w.values[lane] = value;
  t->want_src = src;
  if (predicate) w.ballot |= 1u << lane;
  if (w.arrived != w.mask) {
    block_here(t, /*requeue=*/false, what);
    race::leave(t->race_token);
    return;
  }
  w.arrived = 0;  // last lane: hand every lane its result, then release them
  w.race_token = nullptr;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    Thread& o = b->threads[warp_base + l];
    if (!(mask >> o.want_src & 1u))
      fail("%s in kernel %s: lane %d reads lane %d, which is not in mask 0x%08x", what, b->kernel,
           l, o.want_src, mask);
    o.result = w.values[o.want_src];
    o.ballot = w.ballot;
    if (l != lane) b->wake(warp_base + l);
  }
  block_here(t, /*requeue=*/true, what);
  race::leave(t->race_token);
}

}  // namespace

uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane, const char* what) {
  warp_arrive(mask, value, src_lane, false, what);
  return g_thread->result;
}

unsigned warp_ballot(unsigned mask, bool predicate, const char* what) {
  warp_arrive(mask, 0, g_thread->st.linear % 32, predicate, what);
  return g_thread->ballot;
}

namespace {

void run_block(const char* name, const LaunchConfig& cfg, uint3 bidx, BlockBody body, void* closure,
               std::mt19937_64* rng, bool shuffle, size_t stack_bytes) {
  const int n = int(cfg.block.x * cfg.block.y * cfg.block.z);
  Block b;
  b.threads.resize(n);
  b.warps.resize((n + 31) / 32);
  b.live = n;
  b.rng = rng;
  b.shuffle = shuffle;
  b.kernel = name;
  b.race_sched = race::current_fiber();
  race::block_begin();
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    const unsigned x = i % cfg.block.x, y = (i / cfg.block.x) % cfg.block.y,
                   z = i / (cfg.block.x * cfg.block.y);
    t.st = ThreadState{{x, y, z}, bidx, cfg.block, cfg.grid, i, &b};
    t.stack = t_stacks.get(race::stack_slot(i), stack_bytes);
    t.race_fiber = race::fiber_for(i);
    t.stack_size = stack_bytes;
    Thread* tp = &t;
    t.fiber = ctx::fiber(std::allocator_arg, PooledStack{t.stack, stack_bytes},
                         [tp, body, closure](ctx::fiber&& caller) {
                           tp->caller = std::move(caller);
                           tp->sw.finish(&tp->sched_bottom, &tp->sched_size);
                           race::thread_begin();
                           body(closure);
                           race::thread_end();
                           tp->state = State::Done;
                           Block* blk = tp->st.block;
                           --blk->live;
                           // an exited thread no longer holds back __syncthreads
                           if (blk->at_barrier > 0 && blk->at_barrier == blk->live)
                             blk->release_barrier();
                           race::switch_to(blk->race_sched);
                           tp->sw.start_final(tp->sched_bottom, tp->sched_size);
                           return std::move(tp->caller);
                         });
    b.ready.push_back(i);
  }
  while (!b.ready.empty()) {
    if (shuffle) {  // a random ready thread runs next
      const size_t k = (*rng)() % b.ready.size();
      std::swap(b.ready[k], b.ready.front());
    }
    const int i = b.ready.front();
    b.ready.pop_front();
    Thread& t = b.threads[i];
    g_current = &t.st;
    g_thread = &t;
    StackSwitch sw;
    race::switch_to(t.race_fiber);
    sw.start(t.stack, t.stack_size);
    t.fiber = std::move(t.fiber).resume();
    sw.finish();
    g_current = nullptr;
    g_thread = nullptr;
  }
  if (b.live > 0) {
    std::string who;
    int shown = 0;
    for (int i = 0; i < n && shown < 4; ++i)
      if (b.threads[i].state == State::Waiting) {
        who += " thread " + std::to_string(i) + " at " + b.threads[i].waiting_at + ";";
        ++shown;
      }
    fail(
        "deadlock in kernel %s, block (%u,%u,%u): %d threads wait at a barrier that the "
        "others never reach (exited, or at another barrier):%s",
        name, bidx.x, bidx.y, bidx.z, b.live, who.c_str());
  }
}

// OS threads that run blocks beside the launching thread; started once, reused.
class WorkerPool {
 public:
  explicit WorkerPool(int extra) {
    for (int i = 0; i < extra; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int size() const { return int(threads_.size()); }
  // Runs job(w) on every pool thread (w = 1..size) and job(0) here; returns when all end.
  void run(const std::function<void(int)>& job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      pending_ = int(threads_.size());
      ++generation_;
    }
    cv_.notify_all();
    job(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop() {
    uint64_t seen = 0;
    int id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      id = ++started_;
    }
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      (*job)(id);
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  int pending_ = 0, started_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

WorkerPool& pool() {
  static WorkerPool p(int(std::max<uint64_t>(1, env_u64("SIMT_WORKERS", 2))) - 1);
  return p;
}

std::mutex g_launch_mu;  // one launch at a time (kernels of one stream run in order)

}  // namespace

bool run_grid(const char* name, const LaunchConfig& cfg, BlockBody body, void* closure) {
  const dim3 g = cfg.grid, bl = cfg.block;
  const uint64_t threads = uint64_t(bl.x) * bl.y * bl.z;
  // The limits a GPU of compute capability 8.x/9.x enforces at launch.
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0 || g.x > 2147483647u || g.y > 65535 ||
      g.z > 65535 || bl.x > 1024 || bl.y > 1024 || bl.z > 64 || threads > 1024) {
    g_last_error = cudaErrorInvalidConfiguration;
    return false;
  }
  if (cfg.shmem > 227 * 1024) {
    g_last_error = cudaErrorInvalidValue;
    return false;
  }
  std::lock_guard<std::mutex> serial(g_launch_mu);
  const uint64_t launch = ++g_launches;
  trace("kernel", name);
  const uint64_t seed = env_u64("SIMT_SEED", 0);
  const bool shuffle = seed != 0;
  const size_t stack_bytes = size_t(env_u64("SIMT_STACK_KB", SIMT_ASAN ? 256 : 64)) * 1024;
  const uint64_t nblocks = uint64_t(g.x) * g.y * g.z;
  std::vector<uint64_t> order;
  if (shuffle) {
    order.resize(nblocks);
    for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + launch);
    std::shuffle(order.begin(), order.end(), rng);
  }
  std::atomic<uint64_t> next{0};
  const std::function<void(int)> job = [&](int w) {
    std::mt19937_64 rng(seed * 31 + 7919 * uint64_t(w) + launch);
    for (uint64_t k; (k = next.fetch_add(1)) < nblocks;) {
      const uint64_t id = shuffle ? order[k] : k;
      const uint3 bidx{unsigned(id % g.x), unsigned(id / g.x % g.y), unsigned(id / g.x / g.y)};
      run_block(name, cfg, bidx, body, closure, &rng, shuffle, stack_bytes);
    }
  };
  race::launch_begin();
  if (nblocks == 1 || pool().size() == 0) {
    job(0);
  } else {
    pool().run(job);
  }
  race::launch_end();
  return true;
}

uint64_t launch_count() { return g_launches.load(); }

void count_device_op() { ++g_launches; }

void trace(const char* kind, const char* name) {
  if (simt_traffic_event) simt_traffic_event(kind, name, 0);  // the traffic variant's hook
  static const bool on = env_u64("SIMT_TRACE", 0) != 0;
  if (on) std::fprintf(stderr, "simt %s: %s\n", kind, name);
}

int occupancy_blocks_per_sm(int threads, size_t dynamic_shmem) {
  if (threads <= 0 || threads > 1024 || dynamic_shmem > 227 * 1024) return 0;
  const int warps = (threads + 31) / 32;
  return std::min(32, 64 / warps);  // 64 warps and 32 blocks per SM (H100)
}

}  // namespace simt

// --- runtime API ---------------------------------------------------------------------------
cudaError_t cudaGetLastError() {
  return static_cast<cudaError_t>(simt::g_last_error.exchange(cudaSuccess));
}
cudaError_t cudaPeekAtLastError() { return static_cast<cudaError_t>(simt::g_last_error.load()); }
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources:
      return "too many resources requested for launch";
  }
  return "unknown error";
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  if (simt_traffic_event) simt_traffic_event("memset", "cudaMemsetAsync", bytes);
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  return cudaMemsetAsync(p, value, bytes);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind);
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int) {
  cudaDeviceProp p{};
  std::snprintf(p.name, sizeof p.name, "simt emulator (H100-like limits)");
  p.major = 9;
  p.minor = 0;
  p.multiProcessorCount = 132;
  p.maxThreadsPerBlock = 1024;
  p.maxThreadsPerMultiProcessor = 2048;
  p.maxBlocksPerMultiProcessor = 32;
  p.maxThreadsDim[0] = 1024;
  p.maxThreadsDim[1] = 1024;
  p.maxThreadsDim[2] = 64;
  p.maxGridSize[0] = 2147483647;
  p.maxGridSize[1] = 65535;
  p.maxGridSize[2] = 65535;
  p.warpSize = 32;
  p.regsPerBlock = 65536;
  p.regsPerMultiprocessor = 65536;
  p.sharedMemPerBlock = 48 * 1024;
  p.sharedMemPerMultiprocessor = 228 * 1024;
  p.sharedMemPerBlockOptin = 227 * 1024;
  p.totalGlobalMem = size_t(80) << 30;
  p.l2CacheSize = 50 << 20;
  *prop = p;
  return cudaSuccess;
}
