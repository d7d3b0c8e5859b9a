// Each concept of the runtime has a minimal model and a non-model.
#include <doctest/doctest.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "byte_stage.hpp"
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

// Every optional member a Stage may have.
struct FullStage : MinimalStage {
  void backward(const StageContext&, ConstBytes, MutableBytes) {}
  static void forward_backward(FullStage&, const StageContext&, ConstBytes, MutableBytes, FullStage&,
                               const StageContext&, ConstBytes, MutableBytes) {}
  void loss_to(const StageContext&, ConstBytes, ConstBytes, double* loss) { *loss = 0; }
  void reset() {}
  std::size_t label_bytes() const { return 4; }
};
// Optional members with the wrong shapes: none of them counts.
struct WrongOptionalsStage : MinimalStage {
  void backward(int) {}
  void forward_backward(WrongOptionalsStage&) {}  // not static
  void loss_to(double*) {}
  void reset(int) {}
  std::string label_bytes() const { return {}; }
};

// A communicator with every optional member: barrier, a collective reset and a local one.
struct FullComm : MinimalComm {
  void barrier(std::chrono::milliseconds) {}
  void reset(std::chrono::milliseconds) {}
  void reset() {}
};
// Only the local reset.
struct LocalResetComm : MinimalComm {
  void reset() {}
};
// The optional members without the base: not refinements of anything.
struct OnlyOptionalsComm {
  void barrier(std::chrono::milliseconds) {}
  void reset() {}
};

// The least a device policy needs (HostDevice is one; this one also attaches to a MinimalComm only).
struct AttachingDevice : HostDevice {
  void attach(MinimalComm&) {}
};
// A device policy without end_step: not a device policy.
struct NoEndStepDevice {
  static constexpr bool tracks_buffers = false;
  SlotMemory* slot_memory() { return nullptr; }
  bool begin_step(const RankPlan&, const ExecutorStep&) { return false; }
  void* stream(ComputeLane) const { return nullptr; }
  void op_begin(const Op&, int) {}
  void op_end(const Op&, int) {}
  void use(ComputeLane, ConstBytes) {}
  void used(ComputeLane, ConstBytes) {}
  void fork() {}
  void join() {}
  void post(ConstBytes) {}
  void before_commit() {}
  void after_commit() {}
  double* loss_slot(StepResult& r, std::size_t b) { return &r.losses[b]; }
  void copy_output(StepResult&, std::size_t, ConstBytes) {}
  void abandon_step() {}
};
// tracks_buffers is not static: not a device policy.
struct NonStaticTracksDevice : HostDevice {
  bool tracks_buffers = false;
};

// The least a schedule policy needs: one rank, one module, a forward and a backward per chunk.
struct MinimalSchedule {
  static constexpr std::string_view name = "minimal";
  static constexpr int modules_per_rank = 1;
  static void check(int, int) {}
  static std::vector<Op> ops(int, int chunks, int, Mode) {
    std::vector<Op> out;
    for (int c = 0; c < chunks; ++c) out.push_back(Op::F(0, c));
    for (int c = 0; c < chunks; ++c) out.push_back(Op::B(0, c));
    return out;
  }
  static ModulePlacement placement(int, int chunks, int, int) {
    ModulePlacement p;
    p.num_chunks = chunks;
    return p;
  }
};
// ops() as a member function: not a schedule policy (a policy has no state).
struct MemberOpsSchedule : MinimalSchedule {
  std::vector<Op> ops(int, int, int, Mode) const { return {}; }
};
// No placement: not a schedule policy.
struct NoPlacementSchedule {
  static constexpr std::string_view name = "no placement";
  static constexpr int modules_per_rank = 1;
  static void check(int, int) {}
  static std::vector<Op> ops(int, int, int, Mode) { return {}; }
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
  static_assert(!StageWithAsyncLoss<MinimalStage>);
  CHECK(Stage<MinimalStage>);
}

TEST_CASE("Runtime.Concepts.StageRefinements") {
  // Every refinement has a model ...
  static_assert(check_stage<FullStage>());
  static_assert(StageWithFusedBackward<FullStage>);
  static_assert(StageWithOverlap<FullStage>);
  static_assert(StageWithAsyncLoss<FullStage>);
  static_assert(StageWithReset<FullStage>);
  static_assert(StageWithLabelBytes<FullStage>);
  static_assert(StageWithLabelBytes<testmodel::LabelledByteStage> && !StageWithLabelBytes<testmodel::ByteStage>);
  // ... and a non-model: a stage whose optional members have the wrong shape is still a Stage.
  static_assert(Stage<WrongOptionalsStage>);
  static_assert(!StageWithFusedBackward<WrongOptionalsStage>);
  static_assert(!StageWithOverlap<WrongOptionalsStage>);
  static_assert(!StageWithAsyncLoss<WrongOptionalsStage>);
  static_assert(!StageWithReset<WrongOptionalsStage>);
  static_assert(!StageWithLabelBytes<WrongOptionalsStage>);
  // A refinement needs the base: members alone are not enough.
  struct ResetOnly {
    void reset() {}
    std::size_t label_bytes() const { return 0; }
  };
  static_assert(!StageWithReset<ResetOnly> && !StageWithLabelBytes<ResetOnly>);
  CHECK(StageWithReset<FullStage>);
}

TEST_CASE("Runtime.Concepts.Communicator") {
  static_assert(check_communicator<MinimalComm>());
  static_assert(CommitGroup<MinimalComm::Group> && !CommitGroup<NoWaitComm::Bad>);
  static_assert(!Communicator<NoWaitComm>);
  static_assert(!Communicator<NoAbortComm>);
  static_assert(Communicator<NullCommunicator>);
  static_assert(Communicator<InProcessCommunicator>);
  static_assert(CommunicatorWithBarrier<InProcessCommunicator>);
  static_assert(!CommunicatorWithBarrier<NullCommunicator>);
  static_assert(!CommunicatorWithBarrier<MinimalComm>);
  // Groups that can be polled (PipelineOptions::weight_fill_depth): in-process and null; not the minimal one.
  static_assert(CommunicatorWithPolling<InProcessCommunicator> && CommunicatorWithPolling<NullCommunicator>);
  static_assert(!CommunicatorWithPolling<MinimalComm> && !PollableCommitGroup<MinimalComm::Group>);
  static_assert(CommunicatorWithEagerLaunch<InProcessCommunicator> && CommunicatorWithEagerLaunch<NullCommunicator>);
  static_assert(!CommunicatorWithEagerLaunch<MinimalComm>);
  CHECK(Communicator<MinimalComm>);
}

TEST_CASE("Runtime.Concepts.CommunicatorRefinements") {
  static_assert(check_communicator<FullComm>());
  static_assert(CommunicatorWithBarrier<FullComm>);
  static_assert(CommunicatorWithCollectiveReset<FullComm>);
  static_assert(CommunicatorWithReset<FullComm>);
  static_assert(CommunicatorWithReset<LocalResetComm> && !CommunicatorWithCollectiveReset<LocalResetComm>);
  static_assert(!CommunicatorWithReset<MinimalComm> && !CommunicatorWithCollectiveReset<MinimalComm>);
  static_assert(!CommunicatorWithBarrier<OnlyOptionalsComm> && !CommunicatorWithReset<OnlyOptionalsComm>);
  // The library's models: the in-process reset is collective (its timeout has a default, so it is also
  // callable as a plain reset()); the null communicator's is local.
  static_assert(CommunicatorWithCollectiveReset<InProcessCommunicator>);
  static_assert(CommunicatorWithReset<NullCommunicator> && !CommunicatorWithCollectiveReset<NullCommunicator>);
  CHECK(CommunicatorWithCollectiveReset<InProcessCommunicator>);
}

TEST_CASE("Runtime.Concepts.CommunicatorResetIsCalled") {
  // Pipeline::reset() calls the local reset of a communicator that has no collective one.
  NullCommunicator comm(0, 1);
  MinimalStage s0, s1;
  Pipeline<DualPipeV, NullCommunicator, MinimalStage> pipe(comm, {&s0, &s1});
  comm.abort(FailureOrigin{});
  CHECK(comm.aborted());
  pipe.reset();
  CHECK_FALSE(comm.aborted());
}

TEST_CASE("Runtime.Concepts.Device") {
  static_assert(check_device_policy<HostDevice>());
  static_assert(check_device_policy<AttachingDevice>());
  static_assert(!DevicePolicy<NoEndStepDevice>);
  static_assert(!DevicePolicy<NonStaticTracksDevice>);
  static_assert(!DevicePolicy<MinimalStage>);
  // attach: a refinement for a given communicator type.
  static_assert(DeviceWithAttach<AttachingDevice, MinimalComm>);
  static_assert(!DeviceWithAttach<AttachingDevice, NullCommunicator>);
  static_assert(!DeviceWithAttach<HostDevice, MinimalComm>);
  CHECK(DevicePolicy<HostDevice>);
}

TEST_CASE("Runtime.Concepts.Schedule") {
  static_assert(check_schedule_policy<DualPipe>());
  static_assert(check_schedule_policy<DualPipeV>());
  static_assert(check_schedule_policy<OneFOneB>());
  static_assert(check_schedule_policy<GPipe>());
  static_assert(check_schedule_policy<ZB1P>());
  static_assert(check_schedule_policy<MinimalSchedule>());
  static_assert(!SchedulePolicy<MemberOpsSchedule>);
  static_assert(!SchedulePolicy<NoPlacementSchedule>);
  static_assert(!SchedulePolicy<MinimalStage>);
  CHECK(SchedulePolicy<DualPipe>);
}

TEST_CASE("Runtime.Concepts.MinimalScheduleRuns") {
  // The minimal schedule is enough for a whole step.
  MinimalStage s;
  MinimalComm comm;
  Pipeline<MinimalSchedule, MinimalComm, MinimalStage> pipe(comm, {&s});
  std::vector<std::byte> in(3 * 8), labels(3 * 4);
  const StepResult r = pipe.step(3, in, labels);
  CHECK(r.losses.size() == 3);
  CHECK(pipe.plan(3).ops.size() == 6);
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
