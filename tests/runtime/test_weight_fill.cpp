// PipelineOptions::weight_fill_depth: backward ops owe their weight gradients, and a commit whose data is not
// there yet runs them meanwhile. The step still equals a sequential run of the same model, bit for bit the
// same whatever the timing; a late rank's peer really fills its wait; bad settings are refused; a failure
// inside an owed weight names it.
#include <doctest/doctest.h>

#include <chrono>
#include <exception>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/comm/null.hpp"
#include "harness.hpp"

using namespace dualpipe;
using namespace testmodel;
using namespace std::chrono_literals;

TYPE_TO_STRING(DualPipe);
TYPE_TO_STRING(DualPipeV);
TYPE_TO_STRING(OneFOneB);
TYPE_TO_STRING(ZB1P);

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

template <class Schedule, class StageT>
void check_filled_step(int P, int C, int depth) {
  CAPTURE(P);
  CAPTURE(C);
  CAPTURE(depth);
  PipelineOptions o;
  o.weight_fill_depth = depth;
  Harness<Schedule, StageT> h(P, C, o);
  const Sequential seq(h.S, C, h.batch);
  for (int step = 0; step < 2; ++step) {  // the second reuses the plan, the buffers and the fill FIFO
    CAPTURE(step);
    h.zero_grad();
    const auto res = h.step();
    CHECK(rel_err(h.losses(res), seq.losses) <= 1e-12);
    for (int s = 0; s < h.S; ++s) {
      CAPTURE(s);
      CHECK(rel_err(h.grad(s), seq.grad(s)) <= 1e-12);
    }
    // Every weight gradient ran exactly once per chunk and module (none lost in the fill FIFO, none twice).
    for (int p = 0; p < P; ++p)
      for (int m = 0; m < Harness<Schedule, StageT>::M; ++m) {
        const auto& stage = *h.stages[static_cast<std::size_t>(p)][static_cast<std::size_t>(m)];
        CHECK(stage.weight_calls == (step + 1) * Schedule::placement(P, C, p, m).num_chunks);
      }
  }
}

/// A plain stage whose forward sleeps on one pipeline rank: its peers' commits wait for it.
struct SlowStage : PlainStage {
  SlowStage(int stage, int chunks) : PlainStage(stage, chunks) {}
  void forward(const StageContext& ctx, ConstBytes in, MutableBytes out) {
    if (ctx.rank == slow_rank) std::this_thread::sleep_for(20ms);
    PlainStage::forward(ctx, in, out);
  }
  static inline int slow_rank = -1;
};

/// A communicator whose groups cannot be polled (no ready()): the rest is NullCommunicator's.
struct UnpollableComm : NullCommunicator {
  struct Group {
    NullCommunicator::Group inner;
    void wait(std::chrono::milliseconds timeout) const { inner.wait(timeout); }
  };
  using NullCommunicator::NullCommunicator;
  Group commit() noexcept { return Group{NullCommunicator::commit()}; }
};

}  // namespace

TEST_CASE_TEMPLATE("Runtime.WeightFill.EqualsSequential" * doctest::timeout(300), Schedule, DualPipe, DualPipeV,
                   OneFOneB, ZB1P) {
  // Plain stages (split backward) and fused ones (their B ops become input part + owed weight part), depths
  // 1 (the least), 64 (never forced: every owed group runs in a wait or at the end) and the largest int (the
  // FIFO is sized by the ops that can owe, not by the depth).
  for (auto [P, C] : {std::pair{2, 8}, std::pair{4, 10}})
    for (int depth : {1, 64, std::numeric_limits<int>::max()}) {
      check_filled_step<Schedule, PlainStage>(P, C, depth);
      check_filled_step<Schedule, FusedStage>(P, C, depth);
    }
}

TEST_CASE("Runtime.WeightFill.LateRankWaitIsFilled" * doctest::timeout(120)) {
  // Rank 1's forwards take 20 ms: rank 0, whose B ops owe their weight gradients, reaches commits whose data
  // is not there and runs owed groups in them (W spans at a commit's index). The result is unchanged.
  SlowStage::slow_rank = 1;
  const int P = 2, C = 8;
  PipelineOptions o;
  o.weight_fill_depth = 4;
  Harness<DualPipe, SlowStage> h(P, C, o);
  const Sequential seq(h.S, C, h.batch);
  const auto res = h.step();
  SlowStage::slow_rank = -1;
  const std::vector<Op> ops = DualPipe::ops(P, C, 0);
  int last_commit = -1;
  for (std::size_t k = 0; k < ops.size(); ++k)
    if (ops[k].kind == OpKind::commit) last_commit = static_cast<int>(k);
  int filled_before_last = 0, weights = 0;
  for (const Span& s : res[0].spans) {
    if (s.lane != Span::Lane::compute || s.op.kind != OpKind::weight) continue;
    ++weights;
    REQUIRE(s.index >= 0);
    REQUIRE(static_cast<std::size_t>(s.index) < ops.size());
    if (ops[static_cast<std::size_t>(s.index)].kind == OpKind::commit && s.index < last_commit) ++filled_before_last;
  }
  CHECK(filled_before_last > 0);
  CHECK(weights >= filled_before_last);
  // The last commit ran every owed group: after the last op, only the schedule's own W (DualPipe's last op)
  // is recorded, on either rank (the late one's commits are ready at once: it has groups left there).
  for (int p = 0; p < P; ++p) {
    CAPTURE(p);
    const std::vector<Op> mine = DualPipe::ops(P, C, p);
    REQUIRE(mine.back().kind == OpKind::weight);
    int at_last_op = 0;
    for (const Span& s : res[static_cast<std::size_t>(p)].spans)
      if (s.lane == Span::Lane::compute && s.index == static_cast<int>(mine.size()) - 1) ++at_last_op;
    CHECK(at_last_op == 1);
  }
  CHECK(rel_err(h.losses(res), seq.losses) <= 1e-12);
  // The same step with no late rank (so other groups fill other waits, or none): bit for bit the same
  // gradients, as the groups run oldest first whatever the timing.
  Harness<DualPipe, SlowStage> prompt(P, C, o);
  (void)prompt.step();
  for (int s = 0; s < h.S; ++s) {
    CAPTURE(s);
    CHECK(rel_err(h.grad(s), seq.grad(s)) <= 1e-12);
    CHECK(h.grad(s) == prompt.grad(s));
  }
}

TEST_CASE("Runtime.WeightFill.BadSettingsAreRefused" * doctest::timeout(60)) {
  PlainStage a(0, 2), b(1, 2);
  {
    NullCommunicator comm(0, 1);
    PipelineOptions o;
    o.weight_fill_depth = -1;
    CHECK_THROWS_WITH_AS((Pipeline<DualPipeV, NullCommunicator, PlainStage>(comm, {&a, &b}, o)),
                         doctest::Contains("weight_fill_depth must be 0 (off) or more (got -1)"), ConfigError);
  }
  {
    UnpollableComm comm(0, 1);
    PipelineOptions o;
    o.weight_fill_depth = 2;
    CHECK_THROWS_WITH_AS(
        (Pipeline<DualPipeV, UnpollableComm, PlainStage>(comm, {&a, &b}, o)),
        doctest::Contains("weight_fill_depth 2 needs a communicator whose commit groups can be polled"), ConfigError);
  }
  {
    NullCommunicator comm(0, 1);
    OverlapStage x(0, 2), y(1, 2);
    PipelineOptions o;
    o.weight_fill_depth = 1;
    CHECK_THROWS_WITH_AS((Pipeline<DualPipeV, NullCommunicator, OverlapStage>(comm, {&x, &y}, o)),
                         doctest::Contains("without its own forward_backward"), ConfigError);
  }
}

TEST_CASE("Runtime.WeightFill.FailureInAnOwedWeightIsNamed" * doctest::timeout(120)) {
  // Rank 0's module 1 fails in chunk 2's weight gradient, which its B or FB owed: every rank's step ends
  // with a StepError naming rank 0, module 1, chunk 2 and the owed weight gradient; then a clean step.
  const int P = 2, C = 8;
  PipelineOptions o;
  o.weight_fill_depth = 2;
  o.timeout = 20s;
  Harness<DualPipe, PlainStage> h(P, C, o);
  h.stages[0][1]->fail = {FailPoint::Where::backward_weight, 2};
  check_step_errors(h.failing_step(), [](const StepError& e) {
    CHECK(e.origin().rank == 0);
    CHECK(e.origin().module == 1);
    CHECK(e.origin().chunk == 2);
    CHECK(contains(e.origin().op, "running a deferred weight gradient (weight_fill_depth)"));
    CHECK(contains(e.what(), "injected failure"));
  });
  h.stages[0][1]->fail = {};
  h.check_recovers();
}
