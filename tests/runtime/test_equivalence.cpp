// A pipelined step equals a sequential run of the same model: per-chunk losses, weight gradients (each
// stage's gradient summed over every rank and module that computes it) and outputs, to rounding.
// Written over the schedule type: a new schedule is one more type in the TEST_CASE_TEMPLATE lists.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "harness.hpp"

using namespace dualpipe;
using namespace testmodel;

TYPE_TO_STRING(DualPipe);
TYPE_TO_STRING(DualPipeV);
TYPE_TO_STRING(OneFOneB);
TYPE_TO_STRING(GPipe);
TYPE_TO_STRING(ZB1P);

namespace {

constexpr double tolerance = 1e-12;

/// Every (P, C) of a small grid that the schedule accepts.
template <class Schedule>
std::vector<std::pair<int, int>> grid() {
  std::vector<std::pair<int, int>> out;
  for (int P : {1, 2, 3, 4, 6, 8})
    for (int C : {P, 2 * P, 2 * P + 1, 2 * P + 2, 3 * P}) {
      if (C < 1) continue;
      try {
        Schedule::check(P, C);
      } catch (const ConfigError&) {
        continue;
      }
      bool dup = false;
      for (auto [p, c] : out) dup = dup || (p == P && c == C);
      if (!dup) out.emplace_back(P, C);
    }
  return out;
}

template <class Schedule, class StageT>
void check_training(int P, int C, bool scale_loss) {
  CAPTURE(P);
  CAPTURE(C);
  CAPTURE(scale_loss);
  PipelineOptions o;
  o.scale_loss_by_chunks = scale_loss;
  Harness<Schedule, StageT> h(P, C, o);
  const Sequential seq(h.S, C, h.batch, scale_loss ? 1.0 / C : 1.0);
  // Two steps: the second reuses every cached plan and buffer.
  for (int step = 0; step < 2; ++step) {
    CAPTURE(step);
    h.zero_grad();
    const auto res = h.step(Mode::train, /*return_outputs=*/step == 1);
    CHECK(rel_err(h.losses(res), seq.losses) <= tolerance);
    for (int s = 0; s < h.S; ++s) {
      CAPTURE(s);
      std::vector<double> expected = seq.layers[static_cast<std::size_t>(s)].grad_w();
      const auto& gb = seq.layers[static_cast<std::size_t>(s)].grad_b();
      expected.insert(expected.end(), gb.begin(), gb.end());
      CHECK(rel_err(h.grad(s), expected) <= tolerance);
    }
    if (step == 1) CHECK(rel_err(h.outputs(res), seq.outputs) <= tolerance);
    for (const StepResult& r : res) {
      const RankPlan& plan = h.pipes[static_cast<std::size_t>(r.rank)]->plan(C);
      CHECK(r.chunks == C);
      CHECK(r.peak_buffers_in_use == plan.peak_buffers);
      CHECK(r.spans.size() == plan.compute_ops + plan.commit_ops);
      CHECK(r.step_seconds > 0);
    }
  }
}

}  // namespace

// The baselines too: their runtime paths (one module per rank, no FB, ZB1P's deferred W) run in every build
// of the runtime tests, the sanitizer builds included.
TEST_CASE_TEMPLATE("Runtime.Equivalence.Train" * doctest::timeout(300), Schedule, DualPipe, DualPipeV, OneFOneB, GPipe,
                   ZB1P) {
  const auto configs = grid<Schedule>();
  REQUIRE(!configs.empty());
  for (auto [P, C] : configs) check_training<Schedule, PlainStage>(P, C, false);
}

TEST_CASE_TEMPLATE("Runtime.Equivalence.FusedAndOverlapped" * doctest::timeout(300), Schedule, DualPipe, DualPipeV) {
  // The fused backward (B ops) and the overlapped forward+backward hook (FB ops), with 1/C loss scaling.
  for (auto [P, C] : grid<Schedule>()) {
    if (P != 2 && P != 4) continue;
    check_training<Schedule, FusedStage>(P, C, true);
    check_training<Schedule, OverlapStage>(P, C, false);
  }
}

TEST_CASE("Runtime.Equivalence.DualPipeV.OneRank" * doctest::timeout(300)) {
  // P = 1: both modules on one rank, the turn is a local hand-off, nothing is communicated.
  for (int C : {2, 3, 7}) check_training<DualPipeV, PlainStage>(1, C, false);
}

TEST_CASE("Runtime.Equivalence.HooksAreUsed" * doctest::timeout(300)) {
  Harness<DualPipe, OverlapStage> h(4, 8);
  (void)h.step();
  int overlap = 0;
  for (auto& r : h.stages)
    for (auto& s : r) overlap += s->overlap_calls;
  int expected = 0;
  for (int p = 0; p < 4; ++p)
    for (const Op& op : DualPipe::ops(4, 8, p))
      if (op.kind == OpKind::forward_backward) ++expected;
  CHECK(expected > 0);
  CHECK(overlap == expected);

  Harness<DualPipe, FusedStage> f(4, 8);
  (void)f.step();
  int fused = 0, expected_fused = 0;
  for (auto& r : f.stages)
    for (auto& s : r) fused += s->fused_calls;
  for (int p = 0; p < 4; ++p)
    for (const Op& op : DualPipe::ops(4, 8, p))
      if (op.kind == OpKind::backward || op.kind == OpKind::forward_backward) ++expected_fused;
  CHECK(fused == expected_fused);
}

TEST_CASE_TEMPLATE("Runtime.Equivalence.ForwardOnly" * doctest::timeout(300), Schedule, DualPipe, DualPipeV, OneFOneB,
                   GPipe, ZB1P) {
  for (auto [P, C] : grid<Schedule>()) {
    if (P > 4) continue;
    CAPTURE(P);
    CAPTURE(C);
    Harness<Schedule, PlainStage> h(P, C);
    const Sequential seq(h.S, C, h.batch, 1.0, /*train=*/false);
    const auto with_labels = h.step(Mode::forward, true, true);
    CHECK(rel_err(h.outputs(with_labels), seq.outputs) <= tolerance);
    CHECK(rel_err(h.losses(with_labels), seq.losses) <= tolerance);
    const auto without = h.step(Mode::forward, true, false);
    CHECK(rel_err(h.outputs(without), seq.outputs) <= tolerance);
    for (const StepResult& r : without)
      for (double l : r.losses) CHECK(std::isnan(l));
    int weight_calls = 0;
    for (auto& r : h.stages)
      for (auto& s : r) weight_calls += s->weight_calls;
    CHECK(weight_calls == 0);
    for (int s = 0; s < h.S; ++s)
      for (double g : h.grad(s)) CHECK(g == 0.0);
  }
}

TEST_CASE_TEMPLATE("Runtime.Equivalence.TrainThenEval" * doctest::timeout(300), Schedule, DualPipe, DualPipeV) {
  // Alternating modes on the same pipelines: each mode keeps its own plan and buffers.
  const int P = 2, C = 4;
  Harness<Schedule, PlainStage> h(P, C);
  const Sequential train(h.S, C, h.batch);
  const Sequential eval(h.S, C, h.batch, 1.0, false);
  for (int i = 0; i < 2; ++i) {
    h.zero_grad();
    CHECK(rel_err(h.losses(h.step(Mode::train)), train.losses) <= tolerance);
    CHECK(rel_err(h.outputs(h.step(Mode::forward, true)), eval.outputs) <= tolerance);
  }
}

TEST_CASE_TEMPLATE("Runtime.Equivalence.RankMapping" * doctest::timeout(300), Schedule, DualPipe, DualPipeV) {
  // A permuted rank_mapping (communicator rank c runs pipeline rank mapping[c]) gives identical results.
  const int P = 4, C = 8;
  Harness<Schedule, PlainStage> identity(P, C);
  PipelineOptions o;
  o.rank_mapping = {2, 0, 3, 1};
  Harness<Schedule, PlainStage> permuted(P, C, o);
  const auto a = identity.step(Mode::train, true);
  const auto b = permuted.step(Mode::train, true);
  for (int p = 0; p < P; ++p) {
    CHECK(b[static_cast<std::size_t>(p)].rank == p);
    CHECK(permuted.pipes[1]->rank() == 0);
    for (int k = 0; k < C; ++k) {
      const double la = a[static_cast<std::size_t>(p)].losses[static_cast<std::size_t>(k)];
      const double lb = b[static_cast<std::size_t>(p)].losses[static_cast<std::size_t>(k)];
      CHECK((la == lb || (std::isnan(la) && std::isnan(lb))));
    }
    CHECK(a[static_cast<std::size_t>(p)].outputs == b[static_cast<std::size_t>(p)].outputs);
  }
  for (int s = 0; s < identity.S; ++s) CHECK(identity.grad(s) == permuted.grad(s));
}

TEST_CASE("Runtime.TestModel.RelErrCatchesNaNAndMissingChunks" * doctest::timeout(60)) {
  // rel_err is what every equivalence check relies on: a NaN (which compares false with everything) or a
  // missing output chunk (left NaN by Harness::outputs) must fail the check, never pass it.
  const double nan = std::nan("");
  CHECK(rel_err({1.0, 2.0}, {1.0, 2.0}) == 0.0);
  CHECK(rel_err({1.0, 2.0}, {1.0, 2.5}) == doctest::Approx(0.2));
  CHECK(!(rel_err({1.0, nan}, {1.0, 2.0}) <= tolerance));
  CHECK(!(rel_err({1.0, 2.0}, {nan, 2.0}) <= tolerance));
  CHECK(!(rel_err({nan}, {nan}) <= tolerance));
  CHECK(!(rel_err({1.0, std::numeric_limits<double>::infinity()}, {1.0, 2.0}) <= tolerance));
  CHECK(!(rel_err({1.0}, {1.0, 2.0}) <= tolerance));

  Harness<DualPipe, PlainStage> h(2, 4);
  const Sequential seq(h.S, 4, h.batch, 1.0, /*train=*/false);
  auto res = h.step(Mode::forward, /*return_outputs=*/true);
  REQUIRE(rel_err(h.outputs(res), seq.outputs) <= tolerance);
  std::vector<double> poisoned = h.outputs(res);
  poisoned[poisoned.size() / 2] = nan;
  CHECK(!(rel_err(poisoned, seq.outputs) <= tolerance));
  // One rank's returned chunks dropped: those chunks stay NaN in the gathered outputs.
  res[0].outputs.clear();
  res[0].output_chunks.clear();
  CHECK(!(rel_err(h.outputs(res), seq.outputs) <= tolerance));
}
