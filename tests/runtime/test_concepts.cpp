// Each concept of the runtime has a minimal model and a non-model.
#include <doctest/doctest.h>

#include <chrono>

#include "dualpipe/dualpipe.hpp"
#include "test_model.hpp"

using namespace dualpipe;

namespace {

// The least a Stage needs.
struct MinimalStage {
  void forward(const StageContext&, ConstBytes, MutableBytes) {}
  double loss(const StageContext&, ConstBytes, ConstBytes) { return 0; }
  void backward_input(const StageContext&, ConstBytes, MutableBytes) {}
  void backward_weight(const StageContext&) {}
  std::size_t input_bytes() const { return 8; }
  std::size_t output_bytes() const { return 8; }
};
// No loss: not a Stage.
struct NoLossStage {
  void forward(const StageContext&, ConstBytes, MutableBytes) {}
  void backward_input(const StageContext&, ConstBytes, MutableBytes) {}
  void backward_weight(const StageContext&) {}
  std::size_t input_bytes() const { return 8; }
  std::size_t output_bytes() const { return 8; }
};
// Forward takes the wrong argument types: not a Stage.
struct WrongForwardStage : MinimalStage {
  void forward(int, int) {}
};

// The least a Communicator needs.
struct MinimalComm {
  struct Group {
    void wait(std::chrono::milliseconds) {}
  };
  int rank() const { return 0; }
  int size() const { return 1; }
  void post_send(int, MessageTag, ConstBytes) {}
  void post_recv(int, MessageTag, MutableBytes) {}
  Group commit() { return {}; }
  void abort(const FailureOrigin&) {}
};
// A commit whose group cannot be waited on: not a Communicator.
struct NoWaitComm : MinimalComm {
  struct Bad {};
  Bad commit() { return {}; }
};
// No abort: not a Communicator.
struct NoAbortComm {
  int rank() const { return 0; }
  int size() const { return 1; }
  void post_send(int, MessageTag, ConstBytes) {}
  void post_recv(int, MessageTag, MutableBytes) {}
  MinimalComm::Group commit() { return {}; }
};

}  // namespace

TEST_CASE("Runtime.Concepts.Stage") {
  static_assert(check_stage<MinimalStage>());
  static_assert(Stage<MinimalStage>);
  static_assert(!Stage<NoLossStage>);
  static_assert(!Stage<WrongForwardStage>);
  static_assert(!StageWithFusedBackward<MinimalStage>);
  static_assert(!StageWithOverlap<MinimalStage>);
  static_assert(Stage<testmodel::PlainStage>);
  static_assert(!StageWithFusedBackward<testmodel::PlainStage>);
  static_assert(StageWithFusedBackward<testmodel::FusedStage>);
  static_assert(!StageWithOverlap<testmodel::FusedStage>);
  static_assert(StageWithOverlap<testmodel::OverlapStage>);
  static_assert(!StageWithReset<MinimalStage>);
  static_assert(!StageWithLabelBytes<MinimalStage>);
  CHECK(Stage<MinimalStage>);
}

TEST_CASE("Runtime.Concepts.Communicator") {
  static_assert(check_communicator<MinimalComm>());
  static_assert(!Communicator<NoWaitComm>);
  static_assert(!Communicator<NoAbortComm>);
  static_assert(Communicator<NullCommunicator>);
  static_assert(Communicator<InProcessCommunicator>);
  static_assert(CommunicatorWithBarrier<InProcessCommunicator>);
  static_assert(!CommunicatorWithBarrier<NullCommunicator>);
  static_assert(!CommunicatorWithBarrier<MinimalComm>);
  CHECK(Communicator<MinimalComm>);
}

TEST_CASE("Runtime.Concepts.Schedule") {
  static_assert(SchedulePolicy<DualPipe>);
  static_assert(SchedulePolicy<DualPipeV>);
  static_assert(!SchedulePolicy<MinimalStage>);
  CHECK(SchedulePolicy<DualPipe>);
}

TEST_CASE("Runtime.Concepts.PipelineWithMinimalModels") {
  // The minimal models are enough to run a whole step (DualPipeV on one rank: no communication).
  MinimalStage s0, s1;
  MinimalComm comm;
  Pipeline<DualPipeV, MinimalComm, MinimalStage> pipe(comm, {&s0, &s1});
  std::vector<std::byte> in(2 * 8), labels(2 * 4);
  const StepResult r = pipe.step(2, in, labels);
  CHECK(r.losses.size() == 2);
  CHECK(r.loss_sum() == 0.0);
  CHECK(r.rank == 0);
}
