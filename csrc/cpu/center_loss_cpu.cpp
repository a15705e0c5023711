// CPU kernels of the centerloss ops.
//
// Deterministic by construction: every value is computed by one thread in a fixed
// order (per-class sums follow the samples' index order within their class, in
// fixed-size chunks), so results do not depend on the thread count or schedule.
// Accumulation is float32 (float64 when features or centers are float64).
// Work is O(B x D + B log B) per step: nothing is sized by num_classes except the
// dense center gradient of backward_centers.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../center_loss.h"
#include "row_math.h"
#include "segments.h"

namespace centerloss {
namespace {

// Calls f(T{}) with the C++ type T of a supported floating dtype.
template <typename F>
void dispatch_float(at::ScalarType t, const char* arg, F&& f) {
  switch (t) {
    case at::kFloat:
      return f(float{});
    case at::kDouble:
      return f(double{});
    case at::kHalf:
      return f(c10::Half{});
    case at::kBFloat16:
      return f(c10::BFloat16{});
    default:
      TORCH_CHECK_TYPE(false, arg, ": unsupported dtype ", t);
  }
}

// Uninitialised memory for outputs and scratch the kernels write in full: no fill even
// under torch.use_deterministic_algorithms (see EmptyFn).
at::Tensor empty_cpu(at::IntArrayRef size, const at::TensorOptions& options) {
  return at::detail::empty_cpu(size, options);
}

// Labels as contiguous int64, range-checked before anything is written.
at::Tensor checked_labels(const at::Tensor& labels, int64_t num_classes) {
  at::Tensor y = labels.to(at::kLong).contiguous();
  check_label_range_host(y.const_data_ptr<int64_t>(), y.numel(), num_classes);
  return y;
}

// Grain for parallel loops over rows of width D: about 32 KiB of work per task.
int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(D, 1)); }

// Writes the reduced loss from the per-sample values `rows` (acc dtype).
void reduce_loss(const at::Tensor& rows, Reduction reduction, at::Tensor& loss) {
  if (reduction == Reduction::None) {
    loss.copy_(rows);
    return;
  }
  double total = 0.0;  // serial, in index order: deterministic
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "centerloss_reduce", [&] {
    const scalar_t* r = rows.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < rows.numel(); ++i) total += static_cast<double>(r[i]);
  });
  if (reduction == Reduction::Mean && rows.numel() > 0) total /= static_cast<double>(rows.numel());
  loss.fill_(total);
}

// ---------------------------------------------------------------------------
// forward without update: rows are independent, parallel over samples.
template <typename scalar_t, typename center_t>
void forward_rows(const at::Tensor& x, const at::Tensor& y, const at::Tensor& c,
                  at::Tensor& loss_rows, at::Tensor& diff) {
  using acc_t = acc_type<scalar_t, center_t>;
  const int64_t B = x.size(0), D = x.size(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const int64_t* yp = y.const_data_ptr<int64_t>();
  const center_t* cp = c.const_data_ptr<center_t>();
  acc_t* lp = loss_rows.data_ptr<acc_t>();
  acc_t* dp = diff.numel() > 0 ? diff.data_ptr<acc_t>() : nullptr;  // acc dtype

  at::parallel_for(0, B, row_grain(D), [&](int64_t begin, int64_t end) {
    RowScratch<acc_t> s(D);
    for (int64_t i = begin; i < end; ++i) {
      const acc_t* xr = as_acc(xp + i * D, s.x, D);
      const acc_t* cr = as_acc(cp + yp[i] * D, s.c, D);
      acc_t* d = dp ? dp + i * D : s.d;
      bool finite;
      lp[i] = acc_t(0.5) * diff_row(xr, cr, d, D, finite);
    }
  });
}

// ---------------------------------------------------------------------------
// forward + alpha update (and the update alone, when loss_rows is undefined).
// Parallel over chunks of the label-sorted samples: each class is read and
// written by the tasks of its own segment only, so the update never races with
// a read of the old centers. Classes split over several chunks are finished in
// a second phase, after every chunk has read the old center.
template <typename scalar_t, typename center_t>
void forward_update_segments(const at::Tensor& x, const at::Tensor& y, at::Tensor& c, double alpha,
                             at::Tensor* loss_rows, at::Tensor* diff) {
  using acc_t = acc_type<scalar_t, center_t>;
  const int64_t B = x.size(0), D = x.size(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  center_t* cp = c.data_ptr<center_t>();
  acc_t* lp = loss_rows ? loss_rows->data_ptr<acc_t>() : nullptr;
  acc_t* dp = (diff && diff->numel() > 0) ? diff->data_ptr<acc_t>() : nullptr;  // acc dtype

  const Segments seg = sort_by_label(y.const_data_ptr<int64_t>(), B, kChunkRows);
  const int64_t n_split = static_cast<int64_t>(seg.split_classes.size());
  // Partial sums of classes split over several chunks, one row per chunk slot.
  std::vector<acc_t> part_sum(static_cast<size_t>(seg.num_slots) * D);
  std::vector<int64_t> part_cnt(seg.num_slots);

  auto apply = [&](int64_t label, const acc_t* old_c, const acc_t* sum, int64_t n) {
    if (n == 0) return;  // only non-finite rows: as if absent
    const acc_t scale = static_cast<acc_t>(alpha) / static_cast<acc_t>(1 + n);
    center_t* out = cp + label * D;
    for (int64_t k = 0; k < D; ++k) out[k] = static_cast<center_t>(old_c[k] + scale * sum[k]);
  };

  const int64_t n_chunks = static_cast<int64_t>(seg.chunks.size());
  at::parallel_for(0, n_chunks, std::max<int64_t>(1, row_grain(D) / kChunkRows),
                   [&](int64_t begin, int64_t end) {
                     RowScratch<acc_t> s(D);
                     std::vector<acc_t> sum(D);
                     for (int64_t ch = begin; ch < end; ++ch) {
                       const Chunk& chunk = seg.chunks[ch];
                       const int64_t label = chunk.label;
                       if (ch + 1 < end)
                         prefetch_row(cp + seg.chunks[ch + 1].label * D, D * sizeof(center_t));
                       const acc_t* cr = as_acc(cp + label * D, s.c, D);
                       std::fill(sum.begin(), sum.end(), acc_t(0));
                       int64_t n = 0;
                       for (int64_t p = chunk.begin; p < chunk.end; ++p) {
                         const int64_t i = seg.order[p];
                         if (p + 1 < B)
                           prefetch_row(xp + seg.order[p + 1] * D, D * sizeof(scalar_t));
                         const acc_t* xr = as_acc(xp + i * D, s.x, D);
                         acc_t* d = dp ? dp + i * D : s.d;
                         bool finite;
                         const acc_t ss = diff_row(xr, cr, d, D, finite);
                         if (lp) lp[i] = acc_t(0.5) * ss;
                         if (finite) {
                           add_row(sum.data(), d, D);
                           ++n;
                         }
                       }
                       if (chunk.slot < 0) {
                         apply(label, cr, sum.data(), n);
                       } else {
                         std::copy(sum.begin(), sum.end(), part_sum.begin() + chunk.slot * D);
                         part_cnt[chunk.slot] = n;
                       }
                     }
                   });

  at::parallel_for(0, n_split, 1, [&](int64_t begin, int64_t end) {
    RowScratch<acc_t> s(D);
    std::vector<acc_t> sum(D);
    for (int64_t k = begin; k < end; ++k) {
      const SplitClass& sp = seg.split_classes[k];
      std::fill(sum.begin(), sum.end(), acc_t(0));
      int64_t n = 0;
      for (int64_t slot = sp.first_slot; slot < sp.first_slot + sp.num_slots; ++slot) {
        add_row(sum.data(), part_sum.data() + slot * D, D);
        n += part_cnt[slot];
      }
      apply(sp.label, as_acc(cp + sp.label * D, s.c, D), sum.data(), n);
    }
  });
}

// Runs `body(x, y, c)` with contiguous operands; writes c back into `centers`
// when a copy had to be made (non-contiguous centers).
template <typename F>
void with_contiguous(at::Tensor& centers, const at::Tensor& features, const at::Tensor& labels,
                     F&& body) {
  at::Tensor x = features.contiguous();
  at::Tensor y = checked_labels(labels, centers.size(0));
  at::Tensor c = centers.contiguous();
  body(x, y, c);
  if (!c.is_same(centers)) centers.copy_(c);
}

// ---------------------------------------------------------------------------
// Op entry points.

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& features, const at::Tensor& labels,
                                               const at::Tensor& centers, int64_t reduction,
                                               bool need_diff) {
  check_inputs(features, labels, centers);
  const Reduction red = to_reduction(reduction);
  at::Tensor x = features.contiguous();
  at::Tensor y = checked_labels(labels, centers.size(0));
  at::Tensor c = centers.contiguous();
  auto [loss, diff] = alloc_forward_outputs(features, c.scalar_type(), red, need_diff, empty_cpu);
  at::Tensor rows =
      empty_cpu({x.size(0)}, x.options().dtype(acc_dtype(x.scalar_type(), c.scalar_type())));
  dispatch_float(x.scalar_type(), "features", [&](auto xs) {
    dispatch_float(c.scalar_type(), "centers",
                   [&](auto cs) { forward_rows<decltype(xs), decltype(cs)>(x, y, c, rows, diff); });
  });
  reduce_loss(rows, red, loss);
  return {loss, diff};
}

std::tuple<at::Tensor, at::Tensor> forward_update_cpu(at::Tensor& centers,
                                                      const at::Tensor& features,
                                                      const at::Tensor& labels, int64_t reduction,
                                                      double alpha, bool need_diff,
                                                      bool /*deterministic*/) {
  check_inputs(features, labels, centers);
  check_alpha(alpha);
  const Reduction red = to_reduction(reduction);
  auto [loss, diff] =
      alloc_forward_outputs(features, centers.scalar_type(), red, need_diff, empty_cpu);
  at::Tensor rows =
      empty_cpu({features.size(0)},
                features.options().dtype(acc_dtype(features.scalar_type(), centers.scalar_type())));
  with_contiguous(
      centers, features, labels, [&](const at::Tensor& x, const at::Tensor& y, at::Tensor& c) {
        dispatch_float(x.scalar_type(), "features", [&](auto xs) {
          dispatch_float(c.scalar_type(), "centers", [&](auto cs) {
            forward_update_segments<decltype(xs), decltype(cs)>(x, y, c, alpha, &rows, &diff);
          });
        });
      });
  reduce_loss(rows, red, loss);
  return {loss, diff};
}

void update_centers_cpu(at::Tensor& centers, const at::Tensor& features, const at::Tensor& labels,
                        double alpha, bool /*deterministic*/) {
  check_inputs(features, labels, centers);
  check_alpha(alpha);
  with_contiguous(
      centers, features, labels, [&](const at::Tensor& x, const at::Tensor& y, at::Tensor& c) {
        dispatch_float(x.scalar_type(), "features", [&](auto xs) {
          dispatch_float(c.scalar_type(), "centers", [&](auto cs) {
            forward_update_segments<decltype(xs), decltype(cs)>(x, y, c, alpha, nullptr, nullptr);
          });
        });
      });
}

at::Tensor backward_features_cpu(const at::Tensor& grad_loss, const at::Tensor& diff,
                                 int64_t reduction, std::optional<at::ScalarType> out_dtype) {
  const Reduction red = to_reduction(reduction);
  check_backward_inputs(grad_loss, diff, red);
  at::Tensor d = diff.contiguous();
  const int64_t B = d.size(0), D = d.size(1);
  at::Tensor out = empty_cpu(d.sizes(), d.options().dtype(out_dtype.value_or(d.scalar_type())));
  dispatch_float(d.scalar_type(), "diff", [&](auto ds) {
    dispatch_float(out.scalar_type(), "out_dtype", [&](auto os) {
      using scalar_t = decltype(ds);
      using out_t = decltype(os);
      using acc_t = acc_type<scalar_t, out_t>;
      at::Tensor g = grad_loss.to(c10::CppTypeToScalarType<acc_t>::value);
      const GradScale<acc_t> scale = grad_scale<acc_t>(g, red, B);
      const scalar_t* dp = d.const_data_ptr<scalar_t>();
      out_t* op = out.data_ptr<out_t>();
      at::parallel_for(0, B, row_grain(D), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const acc_t s = scale.template at<acc_t>(i);
          for (int64_t k = 0; k < D; ++k)
            op[i * D + k] = static_cast<out_t>(static_cast<acc_t>(dp[i * D + k]) * s);
        }
      });
    });
  });
  return out;
}

at::Tensor backward_centers_cpu(const at::Tensor& grad_loss, const at::Tensor& diff,
                                const at::Tensor& labels, int64_t reduction, int64_t num_classes,
                                at::ScalarType centers_dtype, bool /*deterministic*/) {
  const Reduction red = to_reduction(reduction);
  check_backward_centers_inputs(grad_loss, diff, labels, red, num_classes);
  at::Tensor d = diff.contiguous();
  at::Tensor y = checked_labels(labels, num_classes);
  const int64_t B = d.size(0), D = d.size(1);
  at::Tensor out = at::zeros({num_classes, D}, d.options().dtype(centers_dtype));
  dispatch_float(d.scalar_type(), "diff", [&](auto ds) {
    dispatch_float(centers_dtype, "centers_dtype", [&](auto cs) {
      using scalar_t = decltype(ds);
      using center_t = decltype(cs);
      using acc_t = acc_type<scalar_t, center_t>;
      at::Tensor g = grad_loss.to(c10::CppTypeToScalarType<acc_t>::value);
      const GradScale<acc_t> scale = grad_scale<acc_t>(g, red, B);
      const scalar_t* dp = d.const_data_ptr<scalar_t>();
      center_t* op = out.data_ptr<center_t>();
      // One task per class, its rows summed in index order: no races, no atomics.
      const Segments seg = sort_by_label(y.const_data_ptr<int64_t>(), B, /*chunk_rows=*/B);
      at::parallel_for(0, static_cast<int64_t>(seg.chunks.size()), 1,
                       [&](int64_t begin, int64_t end) {
                         std::vector<acc_t> sum(D);
                         for (int64_t ch = begin; ch < end; ++ch) {
                           const Chunk& chunk = seg.chunks[ch];
                           std::fill(sum.begin(), sum.end(), acc_t(0));
                           for (int64_t p = chunk.begin; p < chunk.end; ++p) {
                             const int64_t i = seg.order[p];
                             const acc_t s = -scale.template at<acc_t>(i);
                             for (int64_t k = 0; k < D; ++k)
                               sum[k] += s * static_cast<acc_t>(dp[i * D + k]);
                           }
                           store_row(sum.data(), op + chunk.label * D, D);
                         }
                       });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(centerloss, CPU, m) {
  m.impl("forward", &forward_cpu);
  m.impl("forward_update_", &forward_update_cpu);
  m.impl("update_centers_", &update_centers_cpu);
  m.impl("backward_features", &backward_features_cpu);
  m.impl("backward_centers", &backward_centers_cpu);
}

}  // namespace centerloss
