// The race detector's hooks in the emulator (the `race` build variant, SIMT_RACE=1; see
// docs/cuda_emulation.md, "Race detection"). ThreadSanitizer sees every emulated thread
// as its own TSan fiber, switched without synchronisation, and learns CUDA's ordering
// from these hooks: launches, barriers and warp primitives (release by every participant
// before, acquire after), __threadfence() with atomics. In the other variants every hook
// is an empty inline function.
#pragma once

#include <cstddef>

namespace simt {
namespace race {

// A synchronisation object of one barrier instance (one __syncthreads of one block, one
// warp exchange): every participant releases into it on arrival and acquires from it
// when released; the last to leave frees it, which resets TSan's state for it.
struct Token;

#if SIMT_RACE
// Before a block's threads start, on its OS thread: picks the block's set of TSan fibers
// and stacks (one of kSets per OS thread, in turn), and forgets the accesses an earlier
// block made to the shared memory (this OS thread's __shared__ variables).
void block_begin();
size_t stack_slot(int thread);  // the fiber stack of emulated thread `thread` of the block
void* fiber_for(int thread);    // its TSan fiber (made once, kept for the set's later blocks)
void* current_fiber();          // the scheduler's own context
void switch_to(void* fiber);    // without synchronisation (__tsan_switch_to_fiber_no_sync)
void launch_begin();            // host: everything before the launch -> every thread
void launch_end();              // host: every thread of the launch -> what follows
void thread_begin();            // first thing an emulated thread does
void thread_end();              // last thing it does
Token* arrive(Token* open);     // joins the barrier instance `open` (nullptr: opens one)
void leave(Token* token);       // after the barrier: acquires, frees it when last
#else
inline void block_begin() {}
inline size_t stack_slot(int thread) { return size_t(thread); }
inline void* fiber_for(int) { return nullptr; }
inline void* current_fiber() { return nullptr; }
inline void switch_to(void*) {}
inline void launch_begin() {}
inline void launch_end() {}
inline void thread_begin() {}
inline void thread_end() {}
inline Token* arrive(Token*) { return nullptr; }
inline void leave(Token*) {}
#endif

}  // namespace race
}  // namespace simt
