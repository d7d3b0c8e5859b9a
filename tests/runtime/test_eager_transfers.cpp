// PipelineOptions::eager_transfers: outputs are sent as soon as they are computed, and a commit before an FB
// waits only for the FB's forward input. The step still equals a sequential run of the same model (and the
// same step without it, bit for bit); an FB's forward half really runs while its peer is still inside its own
// FB; bad settings are refused; a failure still ends every rank's step naming where it started.
#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <string>
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

template <class Schedule, class StageT>
void check_eager_step(int P, int C) {
  CAPTURE(P);
  CAPTURE(C);
  PipelineOptions o;
  o.eager_transfers = true;
  Harness<Schedule, StageT> h(P, C, o);
  Harness<Schedule, StageT> plain(P, C);  // the same step without eager transfers
  const Sequential seq(h.S, C, h.batch);
  (void)plain.step();
  for (int step = 0; step < 2; ++step) {  // the second reuses the plan, the buffers and the early-send marks
    CAPTURE(step);
    h.zero_grad();
    const auto res = h.step();
    CHECK(rel_err(h.losses(res), seq.losses) <= 1e-12);
    for (int s = 0; s < h.S; ++s) {
      CAPTURE(s);
      CHECK(rel_err(h.grad(s), seq.grad(s)) <= 1e-12);
      CHECK(h.grad(s) == plain.grad(s));  // the same ops in the same order: the same numbers
    }
    // Every commit's wait is recorded (once, or twice when split around an FB), and every compute op once,
    // or twice for an FB split by the rest of its commit's wait.
    for (int p = 0; p < P; ++p) {
      CAPTURE(p);
      const std::vector<Op> ops = Schedule::ops(P, C, p);
      std::vector<int> spans(ops.size(), 0);
      for (const Span& s : res[static_cast<std::size_t>(p)].spans) {
        REQUIRE(s.index >= 0);
        REQUIRE(static_cast<std::size_t>(s.index) < ops.size());
        ++spans[static_cast<std::size_t>(s.index)];
      }
      for (std::size_t k = 0; k < ops.size(); ++k) {
        CAPTURE(k);
        if (ops[k].kind == OpKind::commit || ops[k].kind == OpKind::forward_backward)
          CHECK((spans[k] == 1 || spans[k] == 2));
        else if (is_compute(ops[k].kind)) CHECK(spans[k] == 1);
      }
    }
  }
}

/// Where GateStage's forward opens the gate and its backward waits for it, and what that wait saw.
struct Gate {
  int opener_rank = -1, opener_module = -1, opener_chunk = -1;
  int waiter_rank = -1, waiter_module = -1, waiter_chunk = -1;
  std::mutex mutex;
  std::condition_variable cv;
  bool open = false;
  bool overlapped = false;
};
Gate gate;

/// A plain stage whose backward of one chunk, on one rank, waits (at most 3 s) until another rank has
/// started the forward that its FB's own forward output feeds. Without eager transfers that forward cannot
/// start before this backward ends (it waits for the whole group, sent after it), so the wait times out.
struct GateStage : PlainStage {
  GateStage(int stage, int chunks) : PlainStage(stage, chunks) {}
  void forward(const StageContext& ctx, ConstBytes in, MutableBytes out) {
    if (ctx.rank == gate.opener_rank && ctx.module == gate.opener_module && ctx.chunk == gate.opener_chunk) {
      std::lock_guard lk(gate.mutex);
      gate.open = true;
      gate.cv.notify_all();
    }
    PlainStage::forward(ctx, in, out);
  }
  void backward_input(const StageContext& ctx, ConstBytes g, MutableBytes ig) {
    if (ctx.rank == gate.waiter_rank && ctx.module == gate.waiter_module && ctx.chunk == gate.waiter_chunk) {
      std::unique_lock lk(gate.mutex);
      gate.overlapped = gate.cv.wait_for(lk, 3s, [] { return gate.open; });
    }
    PlainStage::backward_input(ctx, g, ig);
  }
};

// DualPipe, 2 ranks: rank 1's FB1.3/0.2 computes module 1's chunk 3 (sent as sF1.3), then module 0's
// chunk 2 backward; rank 0's next FB1.3/0.2 starts with the forward of module 1's chunk 3 from sF1.3.
bool rank0_forward_overlaps_rank1_backward(bool eager) {
  auto& g = gate;
  g.opener_rank = 0, g.opener_module = 1, g.opener_chunk = 3;
  g.waiter_rank = 1, g.waiter_module = 0, g.waiter_chunk = 2;
  g.open = false;
  g.overlapped = false;
  PipelineOptions o;
  o.eager_transfers = eager;
  Harness<DualPipe, GateStage> h(2, 8, o);
  const Sequential seq(h.S, 8, h.batch);
  const auto res = h.step();
  CHECK(rel_err(h.losses(res), seq.losses) <= 1e-12);
  const bool overlapped = g.overlapped;
  g.waiter_rank = -1;
  g.opener_rank = -1;
  return overlapped;
}

/// A communicator that cannot launch early (no launch()): the rest is NullCommunicator's.
struct NoEarlyLaunchComm : NullCommunicator {
  using NullCommunicator::NullCommunicator;
  void launch() = delete;
};

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE_TEMPLATE("Runtime.EagerTransfers.EqualsSequential" * doctest::timeout(300), Schedule, DualPipe, DualPipeV,
                   OneFOneB, ZB1P) {
  for (auto [P, C] : {std::pair{2, 8}, std::pair{4, 10}}) {
    check_eager_step<Schedule, PlainStage>(P, C);
    check_eager_step<Schedule, FusedStage>(P, C);
  }
}

TEST_CASE("Runtime.EagerTransfers.ForwardHalfRunsWhileThePeerIsInItsFB" * doctest::timeout(120)) {
  // With eager transfers rank 0 starts its FB as soon as rank 1's forward output arrives, while rank 1 is
  // still in the backward half of its own FB; without them (the control), it cannot.
  CHECK(rank0_forward_overlaps_rank1_backward(true));
  CHECK_FALSE(rank0_forward_overlaps_rank1_backward(false));
}

TEST_CASE("Runtime.EagerTransfers.BadSettingsAreRefused" * doctest::timeout(60)) {
  PlainStage a(0, 2), b(1, 2);
  {
    NoEarlyLaunchComm comm(0, 1);
    PipelineOptions o;
    o.eager_transfers = true;
    CHECK_THROWS_WITH_AS((Pipeline<DualPipeV, NoEarlyLaunchComm, PlainStage>(comm, {&a, &b}, o)),
                         doctest::Contains("eager_transfers needs a communicator that can launch before the commit"),
                         ConfigError);
  }
  {
    NullCommunicator comm(0, 1);
    OverlapStage x(0, 2), y(1, 2);
    PipelineOptions o;
    o.eager_transfers = true;
    CHECK_THROWS_WITH_AS((Pipeline<DualPipeV, NullCommunicator, OverlapStage>(comm, {&x, &y}, o)),
                         doctest::Contains("without its own forward_backward"), ConfigError);
  }
  {
    NullCommunicator comm(0, 1);
    PipelineOptions o;
    o.eager_transfers = true;
    o.weight_fill_depth = 2;
    CHECK_THROWS_WITH_AS((Pipeline<DualPipeV, NullCommunicator, PlainStage>(comm, {&a, &b}, o)),
                         doctest::Contains("eager_transfers and weight_fill_depth 2 both change"), ConfigError);
  }
}

TEST_CASE("Runtime.EagerTransfers.FailureEndsEveryRanksStep" * doctest::timeout(120)) {
  // Rank 1's module 1 fails in chunk 3's forward (the FB half whose output goes early): every rank's step ends
  // with a StepError naming rank 1, module 1, chunk 3; then a clean step after reset.
  const int P = 2, C = 8;
  PipelineOptions o;
  o.eager_transfers = true;
  o.timeout = 20s;
  Harness<DualPipe, PlainStage> h(P, C, o);
  h.stages[1][1]->fail = {FailPoint::Where::forward, 3};
  check_step_errors(h.failing_step(), [](const StepError& e) {
    CHECK(e.origin().rank == 1);
    CHECK(e.origin().module == 1);
    CHECK(e.origin().chunk == 3);
    CHECK(contains(e.what(), "injected failure"));
  });
  h.stages[1][1]->fail = {};
  h.check_recovers();
}
