// The memory-traffic model of the emulated kernels (docs/cuda_emulation.md, "Memory
// traffic"), linked into the `traffic` variant only (simt_emulator/build.py).
//
// The csrc/cuda/*.cu objects of that variant are compiled by clang with
// -fsanitize-coverage=trace-loads,trace-stores: every load and store of their code calls
// __sanitizer_cov_load<N>/__sanitizer_cov_store<N> below with its address; simt.h's
// atomics call simt_traffic_atomic. An access counts when a kernel's thread makes it
// (simt::current_or_null()) and it falls inside a live allocation of the simt device
// (device.cpp's allocator reports them): the fibers' stacks (locals, the kernel
// arguments) and __shared__ memory (thread_local statics) are not device memory.
//
// Warp-level requests: the lanes of a warp run as separate fibers, so lane L's k-th
// access from one call site (the hook's return address) is paired with the other lanes'
// k-th access from that site; the 32-byte sectors those lanes touch are the request's
// sectors, as Nsight Compute counts them. Per launch: requests and sectors of loads,
// stores and atomics, the distinct bytes each touches (the launch's minimum, in sectors:
// ceil(bytes / 32)), atomics per address. Blocks must run on one OS thread
// (SIMT_WORKERS=1): a block's requests are complete when the next block starts.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "simt.h"

namespace {

enum Kind { kLoad = 0, kStore = 1, kAtomic = 2 };

std::mutex g_mu;  // allocations (host threads) against lookups (the kernel's thread)
std::map<uintptr_t, size_t> g_allocs;  // live device allocations: start -> bytes

struct Lane {
  uintptr_t addr;
  uint32_t size;
};
struct Request {
  Kind kind;
  int n = 0;
  Lane lanes[32];
};
struct ReqKey {
  uintptr_t site;
  uint32_t occurrence;
  uint32_t warp;
  bool operator==(const ReqKey& o) const {
    return site == o.site && occurrence == o.occurrence && warp == o.warp;
  }
};
struct ReqHash {
  size_t operator()(const ReqKey& k) const {
    return std::hash<uintptr_t>()(k.site * 0x9E3779B97F4A7C15ull ^ k.occurrence * 0xC2B2AE35ull ^
                                  k.warp);
  }
};
struct SiteKey {
  uintptr_t site;
  uint32_t thread;
  bool operator==(const SiteKey& o) const { return site == o.site && thread == o.thread; }
};
// A lane's recent element accesses of one kind, by aligned window of up to 16 bytes (4
// elements): clang may split load4/store4's 4-element vector into 4 element accesses from 4
// sites, which nvcc emits as one 8- or 16-byte access; an element access that falls into a
// window the lane opened, at bytes not yet covered, from a site not yet in it (a loop's
// one site repeating is a scalar access per iteration, as on the GPU), joins that access.
struct Window {
  uintptr_t base = 0;
  uint32_t elem = 0;
  uint32_t covered = 0;  // one bit per byte of the window
  Lane* lane = nullptr;  // the access it joins (in the block's requests)
  uintptr_t sites[4] = {};
  int nsites = 0;
  bool has(uintptr_t s) const { return std::find(sites, sites + nsites, s) != sites + nsites; }
};
struct Windows {
  Window w[2][4];  // load, store; 4 open windows each
  int next[2] = {0, 0};
};
struct SiteHash {
  size_t operator()(const SiteKey& k) const {
    return std::hash<uintptr_t>()(k.site * 0x9E3779B97F4A7C15ull ^ k.thread);
  }
};

// Bytes a launch touched, per allocation: one bit per byte, cleared per launch.
struct Touched {
  std::unordered_map<uintptr_t, std::vector<uint64_t>> bits;  // allocation start -> bitmap
  void mark(uintptr_t start, size_t alloc_bytes, uintptr_t addr, size_t n) {
    auto& b = bits[start];
    if (b.empty()) b.assign((alloc_bytes + 63) / 64, 0);
    for (size_t i = addr - start, end = std::min(i + n, alloc_bytes); i < end; ++i)
      b[i / 64] |= uint64_t(1) << (i % 64);
  }
  uint64_t count() const {
    uint64_t c = 0;
    for (const auto& [start, b] : bits)
      for (uint64_t w : b) c += uint64_t(__builtin_popcountll(w));
    return c;
  }
};

struct LaunchRecord {
  std::string kind, name;
  uint64_t requests[3] = {}, sectors[3] = {}, unique_bytes[3] = {};
  uint64_t accesses[3] = {};  // lane-level accesses
  uint64_t max_atomics_per_address = 0;
  uint64_t memset_bytes = 0;
};

struct State {
  bool open = false;  // a launch is being recorded
  LaunchRecord cur;
  bool have_block = false;
  uint3 block{};
  std::unordered_map<ReqKey, Request, ReqHash> requests;  // the current block's
  std::unordered_map<SiteKey, uint32_t, SiteHash> occurrences;
  std::unordered_map<uint32_t, Windows> windows;  // per thread of the block
  Touched touched[3];
  std::unordered_map<uintptr_t, uint64_t> atomics;  // address -> atomics this launch
  std::vector<LaunchRecord> done;
  // the last allocation found, a cache in front of g_allocs (reset when one is freed)
  uintptr_t last_lo = 0, last_hi = 0;
} g;

void flush_block() {
  for (auto& [key, r] : g.requests) {
    uint64_t sec[64];
    int m = 0;
    for (int i = 0; i < r.n; ++i) {
      const uintptr_t a = r.lanes[i].addr;
      for (uint64_t s = a / 32; s <= (a + r.lanes[i].size - 1) / 32 && m < 64; ++s) sec[m++] = s;
    }
    std::sort(sec, sec + m);
    g.cur.sectors[r.kind] += uint64_t(std::unique(sec, sec + m) - sec);
    g.cur.requests[r.kind] += 1;
  }
  g.requests.clear();
  g.occurrences.clear();
  g.windows.clear();
  g.have_block = false;
}

void close_launch() {
  if (!g.open) return;
  flush_block();
  for (int k = 0; k < 3; ++k) {
    if (g.cur.memset_bytes == 0) g.cur.unique_bytes[k] = g.touched[k].count();
    g.touched[k].bits.clear();
  }
  for (const auto& [addr, n] : g.atomics)
    g.cur.max_atomics_per_address = std::max(g.cur.max_atomics_per_address, n);
  g.atomics.clear();
  g.done.push_back(std::move(g.cur));
  g.cur = LaunchRecord{};
  g.open = false;
}

// The allocation holding [addr, addr + n), if any: its start and size.
bool find_alloc(uintptr_t addr, size_t n, uintptr_t* start, size_t* bytes) {
  if (addr >= g.last_lo && addr + n <= g.last_hi) {
    *start = g.last_lo;
    *bytes = g.last_hi - g.last_lo;
    return true;
  }
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_allocs.upper_bound(addr);
  if (it == g_allocs.begin()) return false;
  --it;
  if (addr + n > it->first + it->second) return false;
  g.last_lo = it->first;
  g.last_hi = it->first + it->second;
  *start = it->first;
  *bytes = it->second;
  return true;
}

void record(const void* p, size_t n, Kind kind, const void* site) {
  if (!g.open) return;
  simt::ThreadState* ts = simt::current_or_null();
  if (ts == nullptr) return;  // host code of the .cu sources
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  uintptr_t start;
  size_t bytes;
  if (!find_alloc(addr, n, &start, &bytes)) return;  // stack, __shared__, host memory
  const uint3 b = ts->block_idx;
  if (!g.have_block || b.x != g.block.x || b.y != g.block.y || b.z != g.block.z) {
    flush_block();
    g.have_block = true;
    g.block = b;
  }
  g.cur.accesses[kind] += 1;
  g.touched[kind].mark(start, bytes, addr, n);
  const uintptr_t s = reinterpret_cast<uintptr_t>(site);
  Window* open = nullptr;
  uint32_t bits = 0;
  Windows* ws = nullptr;
  if (kind != kAtomic && n <= 8) {
    const uintptr_t width = std::min<uintptr_t>(4 * n, 16), base = addr & ~(width - 1);
    bits = ((1u << n) - 1) << (addr - base);
    ws = &g.windows[uint32_t(ts->linear)];
    for (Window& w : ws->w[kind]) {
      if (w.lane != nullptr && w.base == base && w.elem == n && !(w.covered & bits) && !w.has(s) &&
          w.nsites < 4) {
        w.covered |= bits;  // an element of a vector access the lane has begun
        w.sites[w.nsites++] = s;
        const uintptr_t lo = std::min(w.lane->addr, addr);
        const uintptr_t hi = std::max(w.lane->addr + w.lane->size, addr + n);
        w.lane->addr = lo;
        w.lane->size = uint32_t(hi - lo);
        return;
      }
    }
    open = &ws->w[kind][ws->next[kind]];
    ws->next[kind] = (ws->next[kind] + 1) % 4;
    *open = Window{base, uint32_t(n), bits, nullptr, {s}, 1};
  }
  const uint32_t occurrence = g.occurrences[SiteKey{s, uint32_t(ts->linear)}]++;
  Request& r = g.requests[ReqKey{s, occurrence, uint32_t(ts->linear / 32)}];
  r.kind = kind;
  if (r.n < 32) {
    r.lanes[r.n] = Lane{addr, uint32_t(n)};
    if (open) open->lane = &r.lanes[r.n];
    ++r.n;
  }
  if (kind == kAtomic) g.atomics[addr] += 1;
}

bool one_worker() {
  const char* w = std::getenv("SIMT_WORKERS");
  return w && std::strcmp(w, "1") == 0;
}

}  // namespace

extern "C" {

// --- the emulator's hooks (declared in simt.h) ------------------------------------------------
void simt_traffic_event(const char* kind, const char* name, size_t bytes) {
  static const bool ok = one_worker();
  if (!ok) simt::fail("the traffic variant needs SIMT_WORKERS=1 (a block per OS thread at a time)");
  close_launch();
  g.open = true;
  g.cur.kind = kind;
  g.cur.name = name;
  if (std::strcmp(kind, "memset") == 0) {  // a memset kernel: coalesced writes of every byte
    g.cur.memset_bytes = bytes;
    g.cur.unique_bytes[kStore] = bytes;
    g.cur.sectors[kStore] = (bytes + 31) / 32;
    g.cur.requests[kStore] = (bytes + 511) / 512;  // 16-byte stores of 32 lanes
    close_launch();
  }
}

void simt_traffic_alloc(const void* p, size_t n) {
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(g_mu);
  g_allocs[reinterpret_cast<uintptr_t>(p)] = n;
}

void simt_traffic_free(const void* p) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_allocs.erase(reinterpret_cast<uintptr_t>(p));
  g.last_lo = g.last_hi = 0;
}

void simt_traffic_atomic(const void* p, size_t n) {
  record(p, n, kAtomic, __builtin_return_address(0));
}

// --- clang's SanitizerCoverage hooks (the .cu objects call them) ------------------------------
#define SIMT_COV(N, T)                                                                     \
  void __sanitizer_cov_load##N(T* p) { record(p, N, kLoad, __builtin_return_address(0)); } \
  void __sanitizer_cov_store##N(T* p) { record(p, N, kStore, __builtin_return_address(0)); }
SIMT_COV(1, uint8_t)
SIMT_COV(2, uint16_t)
SIMT_COV(4, uint32_t)
SIMT_COV(8, uint64_t)
SIMT_COV(16, __int128)
#undef SIMT_COV
// trace-pc-guard: needed by clang 14 for the load/store hooks; edges are not counted.
void __sanitizer_cov_trace_pc_guard_init(uint32_t*, uint32_t*) {}
void __sanitizer_cov_trace_pc_guard(uint32_t*) {}

// --- read by simt_emulator/loader.py ------------------------------------------------------------
// Every launch, device op and memset since the last reset, as a JSON list.
__attribute__((visibility("default"))) const char* simt_traffic_report() {
  close_launch();
  static std::string out;
  out = "[";
  const char* kinds[3] = {"load", "store", "atomic"};
  for (size_t i = 0; i < g.done.size(); ++i) {
    const LaunchRecord& r = g.done[i];
    std::string name;
    for (char ch : r.name) {
      if (ch == '"' || ch == '\\') name += '\\';
      name += ch;
    }
    char buf[256];
    out += i ? ",\n" : "";
    out += "{\"kind\": \"" + r.kind + "\", \"name\": \"" + name + "\"";
    for (int k = 0; k < 3; ++k) {
      std::snprintf(buf, sizeof buf,
                    ", \"%s_requests\": %llu, \"%s_sectors\": %llu, \"%s_bytes\": %llu, "
                    "\"%s_accesses\": %llu",
                    kinds[k], (unsigned long long)r.requests[k], kinds[k],
                    (unsigned long long)r.sectors[k], kinds[k],
                    (unsigned long long)r.unique_bytes[k], kinds[k],
                    (unsigned long long)r.accesses[k]);
      out += buf;
    }
    std::snprintf(buf, sizeof buf, ", \"max_atomics_per_address\": %llu, \"memset_bytes\": %llu}",
                  (unsigned long long)r.max_atomics_per_address,
                  (unsigned long long)r.memset_bytes);
    out += buf;
  }
  out += "]";
  return out.c_str();
}

__attribute__((visibility("default"))) void simt_traffic_reset() {
  close_launch();
  g.done.clear();
}

}  // extern "C"
