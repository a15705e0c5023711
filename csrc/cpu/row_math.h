// Row-wise arithmetic of the CPU kernels, in the accumulation type acc_t.
// Loops are written with independent lanes so the compiler vectorises them over D
// without -ffast-math (which would break the non-finite checks).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../center_loss.h"

namespace centerloss {

// Per-thread scratch rows: x and c converted to acc_t, and d = x - c.
template <typename acc_t>
struct RowScratch {
  explicit RowScratch(int64_t D) : buf(static_cast<size_t>(3 * D)) {
    x = buf.data();
    c = x + D;
    d = c + D;
  }
  std::vector<acc_t> buf;
  acc_t* x;
  acc_t* c;
  acc_t* d;
};

// `src` read as acc_t: the pointer itself when no conversion is needed, else a copy in buf.
template <typename acc_t, typename T>
inline const acc_t* as_acc(const T* src, acc_t* buf, int64_t n) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return src;
  } else {
    for (int64_t k = 0; k < n; ++k) buf[k] = static_cast<acc_t>(src[k]);
    return buf;
  }
}

// Copies a row to `dst`, converting; nothing to do when d was written in place.
template <typename acc_t, typename T>
inline void store_row(const acc_t* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, acc_t>) {
    if (static_cast<const void*>(src) == static_cast<const void*>(dst)) return;
  }
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<T>(src[k]);
}

// GCC/Clang vector extensions: 16-byte SIMD values (SSE2 on x86-64, NEON on arm64,
// both baseline). Explicit lanes keep the vectorisation predictable without
// -ffast-math (which would break the non-finite checks).
template <typename T>
struct Simd {
  typedef T type __attribute__((vector_size(16)));
  static constexpr int64_t width = 16 / sizeof(T);
};

template <typename V, typename T>
inline V load_vec(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline void store_vec(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V>
inline auto hsum(const V& v) {
  auto s = v[0];
  for (size_t l = 1; l < sizeof(V) / sizeof(v[0]); ++l) s += v[l];
  return s;
}

// d = x - c; returns sum(d^2). `finite` is false when some d_k is inf or NaN
// (d_k * 0 is NaN exactly then), i.e. the row must stay out of the center update.
template <typename acc_t>
inline acc_t diff_row(const acc_t* __restrict__ x, const acc_t* __restrict__ c,
                      acc_t* __restrict__ d, int64_t n, bool& finite) {
  using V = typename Simd<acc_t>::type;
  constexpr int64_t W = Simd<acc_t>::width;
  const V zero = {};
  V ss[4] = {zero, zero, zero, zero};
  V probe = zero;
  int64_t k = 0;
  for (; k + 4 * W <= n; k += 4 * W) {
    for (int u = 0; u < 4; ++u) {
      const V v = load_vec<V>(x + k + u * W) - load_vec<V>(c + k + u * W);
      store_vec(d + k + u * W, v);
      ss[u] += v * v;
      probe += v * zero;
    }
  }
  acc_t s = hsum((ss[0] + ss[1]) + (ss[2] + ss[3])), p = hsum(probe);
  for (; k < n; ++k) {
    const acc_t v = x[k] - c[k];
    d[k] = v;
    s += v * v;
    p += v * acc_t(0);
  }
  finite = (p == acc_t(0));
  return s;
}

// sum += row
template <typename acc_t>
inline void add_row(acc_t* __restrict__ sum, const acc_t* __restrict__ row, int64_t n) {
  for (int64_t k = 0; k < n; ++k) sum[k] += row[k];
}

// Asks for a row that will be read soon (rows of the label-sorted order are not
// consecutive in memory, so the hardware prefetcher cannot guess them).
inline void prefetch_row(const void* p, int64_t bytes) {
  const char* b = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(b + off);
}

}  // namespace centerloss
