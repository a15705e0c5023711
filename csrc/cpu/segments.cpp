#include "segments.h"

#include <algorithm>
#include <numeric>

namespace centerloss {

namespace {
// (label, index) pairs packed into one integer sort twice as fast as pairs;
// used whenever both fit in 32 bits, which is every realistic batch.
bool sort_packed(const int64_t* labels, int64_t B, std::vector<int64_t>& order) {
  constexpr int64_t kMax = int64_t{1} << 32;
  if (B >= kMax) return false;
  std::vector<uint64_t> keys(B);
  for (int64_t i = 0; i < B; ++i) {
    if (labels[i] >= kMax) return false;
    keys[i] = (static_cast<uint64_t>(labels[i]) << 32) | static_cast<uint64_t>(i);
  }
  std::sort(keys.begin(), keys.end());
  for (int64_t i = 0; i < B; ++i) order[i] = static_cast<int64_t>(keys[i] & 0xffffffffu);
  return true;
}
}  // namespace

Segments sort_by_label(const int64_t* labels, int64_t B, int64_t chunk_rows) {
  chunk_rows = std::max<int64_t>(chunk_rows, 1);
  Segments s;
  s.order.resize(B);
  if (!sort_packed(labels, B, s.order)) {
    std::iota(s.order.begin(), s.order.end(), int64_t{0});
    std::sort(s.order.begin(), s.order.end(), [&](int64_t a, int64_t b) {
      return labels[a] != labels[b] ? labels[a] < labels[b] : a < b;
    });
  }
  int64_t begin = 0;
  while (begin < B) {
    const int64_t label = labels[s.order[begin]];
    int64_t end = begin;
    while (end < B && labels[s.order[end]] == label) ++end;
    const int64_t n_chunks = (end - begin + chunk_rows - 1) / chunk_rows;
    if (n_chunks == 1) {
      s.chunks.push_back({label, begin, end, -1});
    } else {
      s.split_classes.push_back({label, s.num_slots, n_chunks});
      for (int64_t p = begin; p < end; p += chunk_rows)
        s.chunks.push_back({label, p, std::min(p + chunk_rows, end), s.num_slots++});
    }
    begin = end;
  }
  return s;
}

}  // namespace centerloss
