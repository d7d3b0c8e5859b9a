// The demo's model stage, checked against finite differences (the sequential run is only as good as it).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "mlp_stage.hpp"
#include "sequential.hpp"

using namespace dualpipe;
using namespace dualpipe::cpu_demo;

namespace {
// sum over chunks of loss_scale * mse of a fresh `stages`-stage model whose parameter `index` of stage
// `stage` is moved by `delta` (through sgd_step with lr = -1, the only way to write a parameter).
double total_loss(const ModelSpec& spec, int stages, int stage, std::size_t index, double delta) {
  std::vector<MlpStage> model;
  for (int s = 0; s < stages; ++s) model.emplace_back(spec.hidden, spec.rows, spec.seed, s);
  std::vector<double> bump(spec.stage_params(), 0.0);
  bump[index] = delta;
  model[static_cast<std::size_t>(stage)].sgd_step(bump, -1.0);
  const Batch b = make_batch(spec, 0);
  const std::size_t n = spec.chunk_values();
  double total = 0;
  for (int c = 0; c < spec.chunks; ++c) {
    StageContext ctx;
    ctx.mode = Mode::forward;
    std::vector<double> act(b.inputs.begin() + static_cast<std::ptrdiff_t>(c * n),
                            b.inputs.begin() + static_cast<std::ptrdiff_t>((c + 1) * n));
    std::vector<double> out(n);
    for (auto& st : model) {
      st.forward(ctx, as_bytes(act), std::as_writable_bytes(std::span<double>(out)));
      act.swap(out);
    }
    const std::span<const double> t = std::span<const double>(b.labels).subspan(c * n, n);
    total += spec.loss_scale() * model.back().loss(ctx, as_bytes(act), as_bytes(t));
  }
  return total;
}
}  // namespace

TEST_CASE("CpuDemo.MlpStage.GradientsMatchFiniteDifferences") {
  ModelSpec spec;
  spec.hidden = 5;
  spec.rows = 3;
  spec.chunks = 2;
  spec.steps = 1;
  spec.seed = 7;
  const int stages = 3;
  const SequentialRun run = run_sequential(spec, stages);
  REQUIRE(run.grads.size() == 1);
  const double eps = 1e-5;
  int checked = 0;
  for (int s = 0; s < stages; ++s) {
    const auto& g = run.grads[0][static_cast<std::size_t>(s)];
    REQUIRE(g.size() == spec.stage_params());
    for (std::size_t i = 0; i < g.size(); i += 7) {  // W1 and W2 entries
      const double fd = (total_loss(spec, stages, s, i, eps) - total_loss(spec, stages, s, i, -eps)) / (2 * eps);
      CAPTURE(s);
      CAPTURE(i);
      CHECK(std::abs(fd - g[i]) <= 1e-6 * std::abs(g[i]) + 1e-10);
      ++checked;
    }
  }
  CHECK(checked > 30);
}

TEST_CASE("CpuDemo.MlpStage.CopiesOfAStageAreIdentical") {
  MlpStage a(8, 2, 99, 3), b(8, 2, 99, 3), c(8, 2, 99, 4), d(8, 2, 100, 3);
  CHECK(std::equal(a.parameters().begin(), a.parameters().end(), b.parameters().begin()));
  CHECK_FALSE(std::equal(a.parameters().begin(), a.parameters().end(), c.parameters().begin()));
  CHECK_FALSE(std::equal(a.parameters().begin(), a.parameters().end(), d.parameters().begin()));
}

TEST_CASE("CpuDemo.MlpStage.SplitFusedAndOverlappedBackwardsAgreeBitForBit") {
  const int h = 6, rows = 4;
  const std::size_t n = static_cast<std::size_t>(h * rows);
  std::vector<double> x(n), g(n);
  SplitMix64 r(5);
  for (auto& v : x) v = r.uniform_pm1();
  for (auto& v : g) v = r.uniform_pm1();
  auto run = [&](int how) {
    MlpStage fwd_other(h, rows, 1, 0), st(h, rows, 1, 1);
    StageContext ctx;
    ctx.chunk = 2;
    std::vector<double> y(n), dx(n), y2(n);
    st.forward(ctx, as_bytes(x), std::as_writable_bytes(std::span<double>(y)));
    if (how == 0) {
      st.backward_input(ctx, as_bytes(g), std::as_writable_bytes(std::span<double>(dx)));
      CHECK(st.chunks_in_flight() == 1);
      st.backward_weight(ctx);
      CHECK(st.deferred_weight_calls() == 1);
    } else if (how == 1) {
      st.backward(ctx, as_bytes(g), std::as_writable_bytes(std::span<double>(dx)));
      CHECK(st.fused_backward_calls() == 1);
    } else {
      StageContext fctx;
      fctx.chunk = 0;
      MlpStage::forward_backward(fwd_other, fctx, as_bytes(x), std::as_writable_bytes(std::span<double>(y2)), st, ctx,
                                 as_bytes(g), std::as_writable_bytes(std::span<double>(dx)));
      CHECK(st.overlapped_calls() == 1);
      CHECK(fwd_other.chunks_in_flight() == 1);
    }
    CHECK(st.chunks_in_flight() == 0);
    std::vector<double> out(dx);
    out.insert(out.end(), st.gradients().begin(), st.gradients().end());
    return out;
  };
  const auto a = run(0), b = run(1), c = run(2);
  CHECK(a == b);
  CHECK(a == c);
  CHECK(std::any_of(a.begin(), a.end(), [](double v) { return v != 0; }));
}

TEST_CASE("CpuDemo.MlpStage.RefusesMisuse") {
  MlpStage st(4, 2, 1, 0);
  std::vector<double> buf(8), small(7);
  StageContext ctx;
  CHECK_THROWS_AS(st.backward_input(ctx, as_bytes(buf), std::as_writable_bytes(std::span<double>(buf))),
                  std::logic_error);
  CHECK_THROWS_AS(st.backward_weight(ctx), std::logic_error);
  CHECK_THROWS_AS(st.forward(ctx, as_bytes(small), std::as_writable_bytes(std::span<double>(buf))), std::logic_error);
  CHECK_THROWS_AS(MlpStage(0, 2, 1, 0), ConfigError);
  st.inject_failure(2);  // forward calls so far: 1 (the refused one above)
  CHECK_NOTHROW(st.forward(ctx, as_bytes(buf), std::as_writable_bytes(std::span<double>(buf))));
  ctx.chunk = 1;
  CHECK_THROWS_WITH_AS(st.forward(ctx, as_bytes(buf), std::as_writable_bytes(std::span<double>(buf))),
                       doctest::Contains("injected failure"), std::runtime_error);
}

TEST_CASE("CpuDemo.RelativeError") {
  const std::vector<double> a{1.0, 2.0, -4.0}, b{1.0, 2.0, -4.0 + 4e-12};
  CHECK(relative_error(a, a) == 0.0);
  CHECK(relative_error(a, b) == doctest::Approx(1e-12).epsilon(1e-3));
  CHECK(std::isinf(relative_error(a, std::vector<double>{1.0, 2.0})));
  CHECK(std::isinf(relative_error(std::vector<double>{NAN}, std::vector<double>{NAN})));
}
