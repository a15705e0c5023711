// C++ unit tests of the CPU kernels, reached through the dispatcher as a C++ user
// of libcenterloss would. The Python tests (python_tests/) cover the whole contract;
// these check the C++ library stands on its own.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <limits>
#include <tuple>

namespace {

using Pair = std::tuple<at::Tensor, at::Tensor>;

Pair forward(const at::Tensor& x, const at::Tensor& y, const at::Tensor& c, int64_t red,
             bool need_diff) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("centerloss::forward", "")
          .typed<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool)>();
  return op.call(x, y, c, red, need_diff);
}

Pair forward_update_(at::Tensor& c, const at::Tensor& x, const at::Tensor& y, int64_t red,
                     double alpha) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("centerloss::forward_update_", "")
                       .typed<Pair(at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                   double, bool, bool)>();
  return op.call(c, x, y, red, alpha, /*need_diff=*/true, /*deterministic=*/false);
}

at::Tensor backward_centers(const at::Tensor& g, const at::Tensor& diff, const at::Tensor& y,
                            int64_t red, int64_t num_classes) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("centerloss::backward_centers", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         int64_t, int64_t, at::ScalarType, bool)>();
  return op.call(g, diff, y, red, num_classes, at::kDouble, /*deterministic=*/false);
}

at::Tensor backward_features(const at::Tensor& g, const at::Tensor& diff, int64_t red,
                             std::optional<at::ScalarType> out_dtype = std::nullopt) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("centerloss::backward_features", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t,
                                         std::optional<at::ScalarType>)>();
  return op.call(g, diff, red, out_dtype);
}

// The paper's update in dense ATen ops (fine at test sizes): the oracle.
at::Tensor updated_centers(const at::Tensor& c, const at::Tensor& x, const at::Tensor& y,
                           double alpha) {
  at::Tensor diff = x - c.index_select(0, y);
  at::Tensor finite = at::isfinite(diff).all(1);
  at::Tensor kept = at::where(finite.unsqueeze(1), diff, at::zeros_like(diff));
  at::Tensor sums = at::zeros_like(c).index_add_(0, y, kept);
  at::Tensor counts = at::zeros({c.size(0)}, c.options()).index_add_(0, y, finite.to(c.dtype()));
  return c + alpha * sums / (1 + counts).unsqueeze(1);
}

struct Batch {
  at::Tensor x, y, c;
};

Batch make_batch(int64_t B, int64_t D, int64_t C, uint64_t seed) {
  at::manual_seed(seed);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  return {at::randn({B, D}, opts), at::randint(C, {B}, at::kLong), at::randn({C, D}, opts)};
}

TEST(Forward, MatchesTheFormulaForEveryReduction) {
  auto [x, y, c] = make_batch(200, 33, 7, 1);
  at::Tensor per = 0.5 * (x - c.index_select(0, y)).pow(2).sum(1);
  EXPECT_TRUE(at::allclose(std::get<0>(forward(x, y, c, 0, false)), per));
  EXPECT_TRUE(at::allclose(std::get<0>(forward(x, y, c, 1, false)), per.mean()));
  EXPECT_TRUE(at::allclose(std::get<0>(forward(x, y, c, 2, false)), per.sum()));
}

TEST(ForwardUpdate, UsesOldCentersForTheLossAndAppliesTheAlphaRule) {
  auto [x, y, c] = make_batch(300, 16, 5, 2);
  at::Tensor expected = updated_centers(c, x, y, 0.5);
  at::Tensor loss_old = std::get<0>(forward(x, y, c, 1, false));
  at::Tensor c2 = c.clone();
  auto [loss, diff] = forward_update_(c2, x, y, 1, 0.5);
  EXPECT_TRUE(at::allclose(loss, loss_old));
  EXPECT_TRUE(at::allclose(diff, x - c.index_select(0, y)));
  EXPECT_TRUE(at::allclose(c2, expected));
}

TEST(ForwardUpdate, LeavesNonFiniteRowsOutOfTheUpdate) {
  auto [x, y, c] = make_batch(64, 8, 3, 3);
  x[0][0] = std::numeric_limits<double>::quiet_NaN();
  x[1][2] = std::numeric_limits<double>::infinity();
  at::Tensor expected = updated_centers(c, x, y, 0.3);
  at::Tensor c2 = c.clone();
  auto [loss, diff] = forward_update_(c2, x, y, 1, 0.3);
  EXPECT_TRUE(std::isnan(loss.item<double>()));
  EXPECT_TRUE(at::isfinite(c2).all().item<bool>());
  EXPECT_TRUE(at::allclose(c2, expected));
}

TEST(ForwardUpdate, RejectsOutOfRangeLabelsBeforeAnyWrite) {
  auto [x, y, c] = make_batch(100, 4, 6, 4);
  y[99] = 6;
  at::Tensor c2 = c.clone();
  try {
    forward_update_(c2, x, y, 1, 0.5);
    FAIL() << "expected an IndexError";
  } catch (const c10::IndexError& e) {
    EXPECT_NE(std::string(e.what()).find("labels[99] = 6"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(at::equal(c2, c));
}

TEST(ForwardUpdate, EmptyBatchIsZeroLossAndNoUpdate) {
  auto [x, y, c] = make_batch(0, 4, 3, 5);
  at::Tensor c2 = c.clone();
  auto [loss, diff] = forward_update_(c2, x, y, 1, 0.5);
  EXPECT_EQ(loss.item<double>(), 0.0);
  EXPECT_TRUE(at::equal(c2, c));
}

TEST(Backward, MatchesTheFormula) {
  auto [x, y, c] = make_batch(120, 9, 4, 6);
  auto [loss, diff] = forward(x, y, c, 1, true);
  at::Tensor g = at::full({}, 3.0, x.options());
  EXPECT_TRUE(at::allclose(backward_features(g, diff, 1), diff * 3.0 / 120));
  at::Tensor expected = -at::zeros_like(c).index_add_(0, y, diff) * 3.0 / 120;
  EXPECT_TRUE(at::allclose(backward_centers(g, diff, y, 1, 4), expected));
}

TEST(Backward, HalfFeaturesKeepUnroundedRows) {
  // x = 0 in float16, center 7e4: x - c is out of float16's range, but the saved rows
  // are float32, and the mean gradient (-35000) is within it.
  at::Tensor x = at::zeros({2, 3}, at::kHalf);
  at::Tensor y = at::zeros({2}, at::kLong);
  at::Tensor c = at::full({1, 3}, 7e4, at::kFloat);
  auto [loss, diff] = forward(x, y, c, 1, true);
  EXPECT_EQ(diff.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(diff, at::full({2, 3}, -7e4, at::kFloat)));
  at::Tensor gx = backward_features(at::ones({}, at::kFloat), diff, 1, at::kHalf);
  EXPECT_EQ(gx.scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(gx, at::full({2, 3}, -35000.0, at::kHalf)));
}

TEST(Determinism, ResultsDoNotDependOnTheThreadCount) {
  auto [x, y, c] = make_batch(5000, 64, 3, 7);  // few classes: segments split into chunks
  x = x.to(at::kFloat);
  c = c.to(at::kFloat);
  const int threads = at::get_num_threads();
  at::Tensor c1 = c.clone(), c2 = c.clone();
  at::set_num_threads(1);
  at::Tensor l1 = std::get<0>(forward_update_(c1, x, y, 2, 0.5));
  at::set_num_threads(std::max(threads, 2));
  at::Tensor l2 = std::get<0>(forward_update_(c2, x, y, 2, 0.5));
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(l1, l2));
  EXPECT_TRUE(at::equal(c1, c2));
}

}  // namespace
