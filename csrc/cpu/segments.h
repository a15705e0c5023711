// Samples grouped by class: the order that makes per-class sums deterministic
// and race-free on the CPU (one writer per class). The vocabulary is the CUDA sorted
// path's too (cuda/segments.cu): chunks of kChunkRows label-sorted rows, slots holding
// the partial sums of a class split over several chunks.
#pragma once

#include <cstdint>
#include <vector>

namespace centerloss {

// A run of label-sorted samples of one class: order[begin, end).
// slot < 0: the chunk is its class's only chunk and finishes the update itself;
// otherwise it writes a partial sum to `slot`, combined in a second phase.
struct Chunk {
  int64_t label, begin, end, slot;
};

// A class split over several chunks: partial-sum slots
// [first_slot, first_slot + num_slots), in sample order.
struct SplitClass {
  int64_t label, first_slot, num_slots;
};

struct Segments {
  std::vector<int64_t> order;  // sample indices sorted by (label, index)
  std::vector<Chunk> chunks;   // in label order, at most chunk_rows samples each
  std::vector<SplitClass> split_classes;
  int64_t num_slots = 0;
};

// Sorts B labels (all in range, checked by the caller) and cuts each class's run of
// samples into chunks of at most chunk_rows. O(B log B).
Segments sort_by_label(const int64_t* labels, int64_t B, int64_t chunk_rows);

}  // namespace centerloss
