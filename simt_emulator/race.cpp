// The race detector's side of the emulator (the `race` build variant only): tells
// ThreadSanitizer what orders emulated threads (see race.h and docs/cuda_emulation.md,
// "Race detection"). Compiled without -fsanitize=thread, like the scheduler: their own
// bookkeeping is not the kernels' memory; it calls the TSan runtime that the variant
// preloads (build.py --print-env).
#include "race.h"

#include <dlfcn.h>
#include <link.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "simt.h"

extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
// The Java API is the runtime's one public call that forgets a range's accesses and
// synchronisation objects (a Java heap covering the address space, set up once).
void __tsan_java_init(uintptr_t heap_begin, uintptr_t heap_size);
void __tsan_java_alloc(uintptr_t ptr, uintptr_t size);
void __tsan_java_free(uintptr_t ptr, uintptr_t size);
void* __tsan_external_register_tag(const char* object_type);
void __tsan_external_assign_tag(void* addr, void* tag);
}

namespace simt {
namespace race {

namespace {

constexpr unsigned kNoSync = 1;  // __tsan_switch_to_fiber_no_sync

// TSan fibers are made once and reused: making one costs about 1 ms in GCC's TSan runtime
// (a 256-thread block: 0.25-0.6 s). A fiber's clock carries what it synchronised with
// into its next block, so each OS thread keeps kSets sets of fibers (and of stacks: a
// stack is only ever used by one fiber) and gives them to its blocks in turn: two blocks
// are ordered only when they ran on one OS thread kSets blocks apart (docs: what the
// detector misses).
constexpr int kSets = 2;
thread_local int t_set = -1;
thread_local std::vector<void*> t_fibers[kSets];

// Synchronisation objects (only their addresses matter to TSan).
char g_launch;  // host -> the threads of a launch
char g_done;    // the threads of a launch -> host
char g_fence;   // __threadfence + atomic (see fence() below)

bool java_ready() {
  static const bool ready = [] {
    __tsan_java_init(4096, (uintptr_t(1) << 47) - 4096);
    return true;
  }();
  return ready;
}

uintptr_t align_down(uintptr_t v) { return v & ~uintptr_t(7); }
uintptr_t align_up(uintptr_t v) { return (v + 7) & ~uintptr_t(7); }

// Forgets what TSan knows of [p, p + n): accesses and synchronisation objects. The range
// becomes a block that reports name by `what` ("Location is <what> of size ..."), which
// is how simt_emulator/race_report.py tells shared memory from global (heap blocks).
void forget(uintptr_t p, uintptr_t n, void* what) {
  const uintptr_t b = align_down(p), e = align_up(p + n);
  __tsan_java_free(b, e - b);
  __tsan_java_alloc(b, e - b);
  __tsan_external_assign_tag(reinterpret_cast<void*>(b), what);
}
void* shared_tag() {  // tags are registered once (the runtime holds a few hundred)
  static void* tag = __tsan_external_register_tag("CUDA shared memory");
  return tag;
}

// This library's thread-local block on the calling OS thread: every __shared__ variable
// of every kernel (simt.h makes them `static thread_local`).
thread_local char t_anchor;  // makes sure this thread's block exists
struct TlsRange {
  uintptr_t begin = 0, size = 0;
};
thread_local TlsRange t_tls;

int find_tls(dl_phdr_info* info, size_t, void* data) {
  auto* r = static_cast<TlsRange*>(data);
  Dl_info self;
  if (!dladdr(reinterpret_cast<void*>(&find_tls), &self)) return 0;
  if (info->dlpi_addr != reinterpret_cast<uintptr_t>(self.dli_fbase)) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i)
    if (info->dlpi_phdr[i].p_type == PT_TLS && info->dlpi_tls_data) {
      r->begin = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
      r->size = info->dlpi_phdr[i].p_memsz;
    }
  return 1;
}

const TlsRange& shared_memory() {
  if (t_tls.size == 0) {
    volatile char* a = &t_anchor;
    *a = 0;
    TlsRange r;
    dl_iterate_phdr(&find_tls, &r);
    if (r.size == 0) {
      std::fprintf(stderr, "simt race detector: cannot find this library's TLS block\n");
      std::abort();
    }
    t_tls = r;
  }
  return t_tls;
}

}  // namespace

struct Token {
  int refs = 0;
};

size_t stack_slot(int thread) { return size_t(thread) * kSets + size_t(t_set); }
void* fiber_for(int thread) {
  std::vector<void*>& set = t_fibers[t_set];
  while (set.size() <= size_t(thread)) set.push_back(__tsan_create_fiber(0));
  return set[size_t(thread)];
}
void* current_fiber() { return __tsan_get_current_fiber(); }
void switch_to(void* fiber) { __tsan_switch_to_fiber(fiber, kNoSync); }

void launch_begin() { __tsan_release(&g_launch); }
void launch_end() { __tsan_acquire(&g_done); }
void thread_begin() { __tsan_acquire(&g_launch); }
void thread_end() { __tsan_release(&g_done); }

void block_begin() {
  java_ready();
  t_set = (t_set + 1) % kSets;
  const TlsRange& tls = shared_memory();
  forget(tls.begin, tls.size, shared_tag());
}

Token* arrive(Token* open) {
  if (!open) {
    __tsan_ignore_thread_begin();
    open = new Token;
    __tsan_ignore_thread_end();
  }
  __tsan_release(open);
  ++open->refs;
  return open;
}

void leave(Token* token) {
  __tsan_acquire(token);
  if (--token->refs == 0) {
    __tsan_ignore_thread_begin();
    delete token;  // frees TSan's clock for it: a later token at this address starts empty
    __tsan_ignore_thread_end();
  }
}

// __threadfence() and atomics: a fence acquires everything published so far, and makes
// the thread's later atomics publish (release) what it did up to them. So the last-block
// pattern (write; fence; atomicAdd(counter)  ...  atomicAdd(counter) sees the last
// arrival; fence; read) orders the writes before the reads, while a write with no fence
// before the atomic, or a read with no fence after it, stays unordered (a race).
void fence() {
  __tsan_acquire(&g_fence);
  current().race_fenced = true;
}

void atomic(const void*) {
  if (current().race_fenced) __tsan_release(&g_fence);
}

}  // namespace race
}  // namespace simt
