// dualpipe/cuda/device.hpp: CudaDevice, the Device policy (runtime/device.hpp) that runs a rank's stages on
// CUDA streams with its chunk buffers in device memory, ordered by events instead of host waits.
//
//   CudaLocalWorld world(P);                                   // or NcclCommunicator, one rank per process
//   run_ranks(P, [&](int r) {
//     Pipeline<DualPipe, CudaLocalCommunicator, MyGpuStage, CudaDevice> pipe(world.communicator(r), {&s0, &s1});
//     pipe.step(chunks, d_inputs, d_labels);                   // device pointers; the host returns at the end
//   });
//
// Streams, per rank: `main` (every compute op, and the forward half of an FB), `second` (the backward half
// of an FB, so that both halves can run at once) and the communicator's stream (the transfers; the device
// takes it from the communicator when the Pipeline is built). StageContext::stream is the cudaStream_t a
// stage must issue its work to (cuda_stream(ctx)).
// A framework that owns its streams lends them: CudaDeviceOptions::main_stream and second_stream (on the
// device; never destroyed here), and the communicator's through NcclBorrow (nccl/communicator.hpp).
//
// Ordering: every slot of every chunk buffer pool has an event, recorded after each use of the slot on the
// stream that used it; the next use on another stream waits for it with cudaStreamWaitEvent. So a receive
// is followed (on the compute stream) by a wait for the transfer, a send waits (on the communication
// stream) for the compute that produced it, and a slot is not overwritten before the transfer or compute
// that last read it is done, all without the host waiting. An FB forks the second stream from the main
// one and joins it back; the host blocks only at the end of a step (end_step: bounded by the step's
// timeout), never inside it: slots are sized from the schedule's dry run, so none is ever reused while the
// host would have to wait for it.
//
// The batch (inputs and labels) must be device memory, ready in the order of `origin` (the legacy default
// stream unless CudaDeviceOptions::origin says otherwise): a step's streams wait for it first. Losses: a
// stage with loss_to (StageWithAsyncLoss) writes them into pinned memory the device hands it; they are
// copied into StepResult::losses at the end of the step. Returned outputs are copied the same way.
//
// Graph capture (CudaDeviceOptions::graph = GraphMode::capture): after `graph_warmup_steps` eager steps of a
// configuration (chunks, mode), the next step is captured into a CUDA graph (the stages' work, the
// transfers and every event wait) and launched; later steps with the same batch pointers and options just
// replay it: the host issues one launch per step. Needs static shapes and addresses, stages whose work can
// be captured (no host synchronisation inside a step), and a communicator whose transfers can be captured
// (NcclCommunicator; CudaLocalCommunicator only with one rank). A replayed step runs no host code of the
// stages; its StepResult has no spans and peak_buffers_in_use 0. With one rank, a step whose batch memory
// or options changed warms up and is captured again; with several ranks that is a ConfigError, since every
// rank would have to recapture at the same step.
//
// This header is the policy's face; its options are cuda/device_options.hpp's, and the work behind each
// hook (streams, slot events, programs, capture, timing) is cuda/detail/device_state.hpp's.
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/cuda/detail/device_state.hpp"
#include "dualpipe/cuda/device_options.hpp"
#include "dualpipe/cuda/memory.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/runtime/chunk_queue.hpp"
#include "dualpipe/runtime/device.hpp"
#include "dualpipe/runtime/executor_step.hpp"
#include "dualpipe/runtime/plan.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/runtime/step_result.hpp"

namespace dualpipe {

/// StageContext::stream as the cudaStream_t a stage must issue its work to.
[[nodiscard]] inline cudaStream_t cuda_stream(const StageContext& ctx) noexcept {
  return static_cast<cudaStream_t>(ctx.stream);
}

namespace detail {
// What CudaDevice::attach asks of a communicator: a CUDA stream its transfers run on; optionally its device
// (checked against the policy's) and whether its transfers can be captured into a graph (false without it).
template <class C>
concept comm_has_cuda_stream = requires(C& c) {
  { c.stream() } -> std::convertible_to<cudaStream_t>;
};
template <class C>
concept comm_has_device = requires(C& c) {
  { c.device() } -> std::convertible_to<int>;
};
template <class C>
concept comm_has_graph_capturable = requires(C& c) {
  { c.graph_capturable() } -> std::convertible_to<bool>;
};
}  // namespace detail

/// The CUDA Device policy (see the file comment). `Alloc` provides the chunk buffers' device memory.
/// Move-only; cheap to move (its state lives on the heap, so pointers to its streams stay valid).
template <DeviceAllocator Alloc = AsyncAllocator>
class BasicCudaDevice {
public:
  /// The executor looks up every buffer for use/used/post.
  static constexpr bool tracks_buffers = true;

  /// Streams and events on `options.device` (the current device if -1). Throws CudaError (no device, ...).
  explicit BasicCudaDevice(CudaDeviceOptions options = {}, Alloc alloc = Alloc()) {
    const int dev = options.device >= 0 ? options.device : current_device();
    DeviceGuard on(dev);  // the streams and events are created on `dev`
    _s = std::make_unique<State>(std::move(options), std::move(alloc), dev);
  }

  /// Takes the communicator's stream as the communication stream (called by the Executor). Throws
  /// ConfigError when the communicator is on another device, or graph capture is asked for and its
  /// transfers cannot be captured.
  template <class Comm>
  void attach(Comm& comm) {
    static_assert(detail::comm_has_cuda_stream<Comm>,
                  "CudaDevice needs a communicator that moves device memory on a CUDA stream, with "
                  "cudaStream_t stream() const: dualpipe::CudaLocalCommunicator or dualpipe::NcclCommunicator");
    if constexpr (detail::comm_has_device<Comm>) {
      if (static_cast<int>(comm.device()) != _s->device)
        throw ConfigError("CudaDevice: the communicator's rank " + std::to_string(comm.rank()) + " is on device " +
                          std::to_string(comm.device()) + " but this device policy is on device " +
                          std::to_string(_s->device));
    }
    bool capturable = false;
    if constexpr (detail::comm_has_graph_capturable<Comm>) capturable = comm.graph_capturable();
    if (_s->options.graph == GraphMode::capture && !capturable)
      throw ConfigError(
          "CudaDevice: graph capture needs a communicator whose transfers can be captured "
          "(NcclCommunicator, or a CudaLocalWorld of one rank); this one's cannot");
    _s->comm = comm.stream();
    _s->ranks = comm.size();
  }

  // ---- Queries ----------------------------------------------------------------------------------------
  /// The CUDA device.
  [[nodiscard]] int device() const noexcept { return _s->device; }
  /// The main compute stream.
  [[nodiscard]] StreamRef main_stream() const noexcept { return _s->main.ref(); }
  /// The second compute stream (backward halves of FB ops).
  [[nodiscard]] StreamRef second_stream() const noexcept { return _s->second.ref(); }
  /// The communication stream (the communicator's), null before attach.
  [[nodiscard]] StreamRef comm_stream() const noexcept { return _s->comm; }
  /// The options.
  [[nodiscard]] const CudaDeviceOptions& options() const noexcept { return _s->options; }
  /// Steps launched from a captured graph so far.
  [[nodiscard]] long graph_replays() const noexcept { return _s->replays; }
  /// Steps captured into a graph so far.
  [[nodiscard]] long graph_captures() const noexcept { return _s->captures; }
  /// Cross-stream waits issued for buffer slots so far (how much ordering the events did).
  [[nodiscard]] long slot_waits() const noexcept { return _s->slot_waits; }

  // ---- Device policy (runtime/device.hpp) -----------------------------------------------------------
  /// Device memory for the chunk buffers, from the allocator.
  [[nodiscard]] SlotMemory* slot_memory() noexcept { return _s.get(); }
  /// Makes the device current on the calling thread, orders the step after `origin`, and replays the
  /// configuration's graph when there is one (returns true).
  [[nodiscard]] bool begin_step(const RankPlan& plan, const ExecutorStep& step) { return _s->begin_step(plan, step); }
  /// The main or second stream.
  [[nodiscard]] void* stream(ComputeLane lane) const noexcept {
    return static_cast<void*>(lane == ComputeLane::main ? _s->main.get() : _s->second.get());
  }
  /// NVTX range (and GPU start time) of op `index`.
  void op_begin(const Op& op, int index) { _s->op_begin(op, index); }
  /// Closes op_begin's range.
  void op_end(const Op& op, int index) { _s->op_end(op, index); }
  /// `lane` waits for the last use of `bytes`'s slot on another stream.
  void use(ComputeLane lane, ConstBytes bytes) { _s->use(State::lane_id(lane), bytes); }
  /// Records the slot's event on `lane`.
  void used(ComputeLane lane, ConstBytes bytes) { _s->used(State::lane_id(lane), bytes); }
  /// The second stream starts after everything issued to the main one.
  void fork() { _s->fork(); }
  /// The main stream continues after everything issued to the second one.
  void join() { _s->join(); }
  /// `bytes` goes into the next commit's group.
  void post(ConstBytes bytes) { _s->post(bytes); }
  /// The communication stream waits for the last uses of the group's slots.
  void before_commit() { _s->before_commit(); }
  /// The group's slots are last used by the communication stream.
  void after_commit() { _s->after_commit(); }
  /// Pinned memory for batch chunk `b`'s loss.
  [[nodiscard]] double* loss_slot(StepResult&, std::size_t b) noexcept { return _s->loss_slot(b); }
  /// Copies a returned output (device) into pinned memory on the main stream.
  void copy_output(StepResult& r, std::size_t offset, ConstBytes src) { _s->copy_output(r, offset, src); }
  /// Ends a captured step (instantiates and launches the graph), waits for the step's work (up to
  /// `timeout`: TimeoutError), and fills the losses, outputs and GPU spans.
  void end_step(StepResult& r, std::chrono::milliseconds timeout) { _s->end_step(r, timeout); }
  /// After a failure: ends a capture, waits (bounded) for the issued work, forgets the step.
  void abandon_step() noexcept { _s->abandon_step(); }

private:
  using State = detail::CudaDeviceState<Alloc>;

  std::unique_ptr<State> _s;
};

/// The CUDA device policy with the default allocator (cudaMallocAsync).
using CudaDevice = BasicCudaDevice<AsyncAllocator>;

static_assert(check_device_policy<CudaDevice>());

}  // namespace dualpipe
