// dualpipe/cuda/detail/device_state.hpp: what a CudaDevice (cuda/device.hpp) keeps and does per step: its
// streams, an event per chunk-buffer slot, the per-configuration programs (NVTX names, pinned losses and
// outputs, timing events, the captured graph) and the hooks' work. The policy's face forwards each Device
// hook here; the ordering rules are in cuda/device.hpp's file comment.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/cuda/device_options.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/memory.hpp"
#include "dualpipe/cuda/nvtx.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/runtime/chunk_queue.hpp"
#include "dualpipe/runtime/device.hpp"
#include "dualpipe/runtime/executor_step.hpp"
#include "dualpipe/runtime/plan.hpp"
#include "dualpipe/runtime/step_result.hpp"

namespace dualpipe::detail {

/// A compute stream of a CudaDevice: its own, or one it was lent (CudaDeviceOptions::main_stream,
/// second_stream), which it never destroys.
class ComputeStream {
public:
  /// `lent`, or a new non-blocking stream with `priority` on the current device when `lent` is null.
  ComputeStream(cudaStream_t lent, int priority) {
    if (lent) {
      _ref = StreamRef(lent);
    } else {
      _own = Stream(cudaStreamNonBlocking, priority);
      _ref = _own->ref();
    }
  }
  [[nodiscard]] cudaStream_t get() const noexcept { return _ref.get(); }
  [[nodiscard]] StreamRef ref() const noexcept { return _ref; }
  operator StreamRef() const noexcept { return _ref; }  // NOLINT: implicit, as Stream's
  void wait(const Event& e) const { _ref.wait(e); }
  void synchronize() const { _ref.synchronize(); }
  /// Whether the stream was lent (not this object's).
  [[nodiscard]] bool lent() const noexcept { return !_own.has_value(); }

private:
  std::optional<Stream> _own;
  StreamRef _ref;
};

/// A CudaDevice's state, on the heap (so that the policy is cheap to move and pointers to its streams stay
/// valid). Also the SlotMemory the chunk pools allocate from: device memory, an event per slot.
template <DeviceAllocator Alloc>
struct CudaDeviceState final : SlotMemory {
  static constexpr signed char none = -1;
  static constexpr signed char comm_lane = 2;
  static signed char lane_id(ComputeLane l) noexcept { return l == ComputeLane::main ? 0 : 1; }

  struct Block {
    std::byte* base;
    std::size_t stride;
    std::size_t slots;
    std::size_t first;  // index of its first slot in CudaDeviceState::slots
  };
  struct Slot {
    Event event;
    signed char last = none;  // stream of the last use this step: 0 main, 1 second, 2 comm, none
  };
  struct StepSignature {
    const void* inputs = nullptr;
    std::size_t input_bytes = 0;
    const void* labels = nullptr;
    std::size_t label_bytes = 0;
    double loss_scale = 1.0;
    bool return_outputs = false;
    friend bool operator==(const StepSignature&, const StepSignature&) = default;
  };
  // Everything kept per configuration (one RankPlan of the pipeline).
  struct Program {
    const RankPlan* plan = nullptr;
    NvtxNames names;
    PinnedBuffer losses;        // C doubles
    PinnedBuffer outputs;       // returned outputs, as StepResult::outputs
    std::vector<Event> timing;  // per op: start, end, the second stream's start (made on the first GPU-timed step)
    enum Mark : std::size_t { start = 0, end = 1, second_start = 2 };
    Event& mark(std::size_t op, Mark m) { return timing[3 * op + m]; }
    Event& mark(int op, Mark m) { return mark(static_cast<std::size_t>(op), m); }
    Event step_start{Event::timing};
    std::vector<int> timed;  // ops timed this step
    int eager_steps = 0;
    cudaGraphExec_t graph = nullptr;
    StepSignature signature;
    ~Program() {
      if (graph) ignore_cuda_error(cudaGraphExecDestroy(graph));
    }
  };

  CudaDeviceState(CudaDeviceOptions o, Alloc a, int dev)
      : options(std::move(o)), alloc(std::move(a)), device(dev), main(options.main_stream, options.main_priority),
        second(options.second_stream, options.second_priority) {
    if (options.main_stream && options.main_stream == options.second_stream)
      throw ConfigError(
          "CudaDevice: main_stream and second_stream are the same stream; the second stream runs "
          "an FB's backward half beside the main one, so it must be another stream (or null: the "
          "device makes its own)");
    pending.reserve(64);
  }
  CudaDeviceState(const CudaDeviceState&) = delete;
  CudaDeviceState& operator=(const CudaDeviceState&) = delete;
  ~CudaDeviceState() override {
    try {
      DeviceGuard g(device);
      abandon_step();  // bounded wait for anything still running
      for (const Block& b : blocks) alloc.deallocate(b.base, b.stride * b.slots, main.ref());
      programs.clear();
      ignore_cuda_error(cudaStreamSynchronize(main.get()));
    } catch (...) {
      // Destructors never throw; the memory is the device's problem now.
    }
  }

  // ---- SlotMemory: device memory for one pool, an event per slot ------------------------------------
  std::byte* allocate_slots(std::size_t stride, std::size_t count) override {
    DeviceGuard g(device);
    auto* p = static_cast<std::byte*>(alloc.allocate(stride * count, main.ref()));
    // Build time only: from here on every stream (and a peer's) may use it without further ordering.
    main.synchronize();
    blocks.push_back(Block{p, stride, count, slots.size()});
    for (std::size_t i = 0; i < count; ++i) slots.push_back(Slot{Event(Event::ordering), none});
    return p;
  }

  // The slot `bytes` starts in, or -1 for memory that is not a chunk buffer (the batch, an empty span).
  [[nodiscard]] long find(ConstBytes bytes) const noexcept {
    if (bytes.empty()) return -1;
    const std::byte* p = bytes.data();
    for (const Block& b : blocks)
      if (p >= b.base && p < b.base + b.stride * b.slots)
        return static_cast<long>(b.first + static_cast<std::size_t>(p - b.base) / b.stride);
    return -1;
  }

  [[nodiscard]] cudaStream_t stream_of(signed char lane) const noexcept {
    return lane == 0 ? main.get() : lane == 1 ? second.get() : comm;
  }

  Program& program(const RankPlan& plan) {
    for (auto& p : programs)
      if (p->plan == &plan) return *p;
    auto p = std::make_unique<Program>();
    p->plan = &plan;
    p->names = NvtxNames(plan.ops);
    p->losses = PinnedBuffer(static_cast<std::size_t>(plan.chunks) * sizeof(double));
    p->timed.reserve(plan.ops.size());
    programs.push_back(std::move(p));
    return *programs.back();
  }

  void wait_origin() {
    origin_event.record(options.origin);
    main.wait(origin_event);
    DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(comm, origin_event.get(), 0));
  }

  bool begin_step(const RankPlan& plan, const ExecutorStep& step) {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(device));
    if (!comm)
      throw ConfigError("CudaDevice: not attached to a communicator (build the Pipeline with it, or call attach)");
    timeout = step.timeout;
    Program& p = program(plan);
    cur = &p;
    for (Slot& s : slots) s.last = none;
    pending.clear();
    std::fill_n(p.losses.template as<double>(), plan.chunks, std::numeric_limits<double>::quiet_NaN());
    p.timed.clear();
    timing_on = false;
    timed_op = -1;
    if (options.graph == GraphMode::capture && !step.sizes.empty())
      // A captured graph replays one step's transfer sizes; a size table may change them every step.
      throw ConfigError(
          "CudaDevice: graph capture needs fixed chunk sizes, but the step gives a size table "
          "(use GraphMode::off for chunks whose sizes change)");
    if (options.graph == GraphMode::capture) {
      const StepSignature sig{step.inputs.data(), step.inputs.size(), step.labels.data(),
                              step.labels.size(), step.loss_scale,    step.return_outputs};
      if (p.graph && p.signature == sig) {
        main.wait(origin_event_recorded_now());
        DUALPIPE_CUDA_CHECK(cudaGraphLaunch(p.graph, main.get()));
        replayed = true;
        ++replays;
        return true;
      }
      if (p.graph && ranks > 1)
        // Every rank would have to recapture at once: NCCL needs a pair's transfers captured on both
        // sides or on neither, and this rank cannot tell the others.
        throw ConfigError("CudaDevice: graph capture with " + std::to_string(ranks) +
                          " ranks needs the same batch memory and step options every step, but they changed "
                          "on device " +
                          std::to_string(device) +
                          " since the step was captured (keep the "
                          "batch in the same device buffers, or use GraphMode::off)");
      if (p.graph) {  // the batch moved or the options changed: warm up and capture again
        ignore_cuda_error(cudaGraphExecDestroy(p.graph));
        p.graph = nullptr;
        p.eager_steps = 0;
      }
      if (p.eager_steps >= options.graph_warmup_steps) {
        wait_origin();  // outside the capture: a captured stream may not wait on outside work
        DUALPIPE_CUDA_CHECK(cudaStreamBeginCapture(main.get(), cudaStreamCaptureModeRelaxed));
        capturing = true;
        p.signature = sig;
        // The second and communication streams join the capture by waiting on the main one.
        fork_event.record(main);
        second.wait(fork_event);
        DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(comm, fork_event.get(), 0));
        return false;
      }
      ++p.eager_steps;
    }
    wait_origin();
    if (options.gpu_timeline) {
      if (p.timing.empty())
        for (std::size_t i = 0; i < 3 * plan.ops.size(); ++i) p.timing.emplace_back(Event::timing);
      p.step_start.record(main);
      timing_on = true;
    }
    return false;
  }

  Event& origin_event_recorded_now() {
    origin_event.record(options.origin);
    return origin_event;
  }

  void op_begin(const Op& op, int index) {
    if (cur->names.push(index)) ++nvtx_depth;
    if (timing_on && is_compute(op.kind)) {
      timed_op = index;
      end_timed = false;
      cur->mark(index, Program::start).record(main);
    }
  }
  void op_end(const Op& op, int index) {
    if (timing_on && is_compute(op.kind)) {
      if (!end_timed) cur->mark(index, Program::end).record(main);
      cur->timed.push_back(index);
      timed_op = -1;
    }
    if (nvtx_depth > 0) {
      NvtxNames::pop();
      --nvtx_depth;
    }
  }

  void use(signed char lane, ConstBytes bytes) { use_slot(lane, find(bytes)); }
  void use_slot(signed char lane, long i) {
    if (i < 0) return;
    Slot& s = slots[static_cast<std::size_t>(i)];
    if (s.last != none && s.last != lane) {
      DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(stream_of(lane), s.event.get(), 0));
      ++slot_waits;
      // The op starts when its data is there: the time a stream waits for a transfer is bubble, not the
      // op's (re-recording moves the start event past the wait). An FB's backward half waits on the
      // second stream: its own start event, and the span starts when both halves have their data.
      if (timed_op >= 0 && lane != comm_lane)
        cur->mark(timed_op, lane == lane_id(ComputeLane::main) ? Program::start : Program::second_start)
            .record(stream_of(lane));
    }
  }
  void used(signed char lane, ConstBytes bytes) {
    // The op's work on the main stream is all issued once it reports its first buffer used there: its span
    // ends here, before the buffers' events, so that a consumer they release never starts before it.
    if (timed_op >= 0 && !end_timed && lane == lane_id(ComputeLane::main)) {
      cur->mark(timed_op, Program::end).record(main);
      end_timed = true;
    }
    const long i = find(bytes);
    if (i < 0) return;
    Slot& s = slots[static_cast<std::size_t>(i)];
    s.event.record(stream_of(lane));
    s.last = lane;
  }
  void fork() {
    fork_event.record(main);
    second.wait(fork_event);
    if (timed_op >= 0) cur->mark(timed_op, Program::second_start).record(second);
  }
  void join() {
    join_event.record(second);
    main.wait(join_event);
    end_timed = false;  // the main stream now has the second's work to wait for: the span ends later
  }
  void post(ConstBytes bytes) {
    const long i = find(bytes);
    if (i >= 0) pending.push_back(i);
  }
  void before_commit() {
    for (long i : pending) use_slot(comm_lane, i);
  }
  void after_commit() {
    for (long i : pending) {
      Slot& s = slots[static_cast<std::size_t>(i)];
      s.event.record(comm);
      s.last = comm_lane;
    }
    pending.clear();
  }

  void copy_output(StepResult& r, std::size_t offset, ConstBytes src) {
    Program& p = *cur;
    if (p.outputs.size() < r.outputs.size()) p.outputs = PinnedBuffer(r.outputs.size());  // first time only
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(p.outputs.template as<std::byte>() + offset, src.data(), src.size(),
                                        cudaMemcpyDeviceToHost, main.get()));
  }

  // Polls the events until done or `deadline`; false on timeout.
  static bool wait_until(std::initializer_list<const Event*> events, std::chrono::steady_clock::time_point deadline) {
    int round = 0;
    for (;;) {
      bool all = true;
      for (const Event* e : events) all = all && e->ready();
      if (all) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      // Spin briefly (a step usually ends soon after the host's last op), then sleep in short slices.
      if (++round < 200) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void end_step(StepResult& r, std::chrono::milliseconds limit) {
    Program& p = *cur;
    if (capturing) {
      join_event.record(second);
      main.wait(join_event);
      end_comm.record(comm);
      main.wait(end_comm);
      cudaGraph_t g = nullptr;
      capturing = false;
      DUALPIPE_CUDA_CHECK(cudaStreamEndCapture(main.get(), &g));
      const cudaError_t e = cudaGraphInstantiate(&p.graph, g, 0);
      ignore_cuda_error(cudaGraphDestroy(g));
      DUALPIPE_CUDA_CHECK(e);
      DUALPIPE_CUDA_CHECK(cudaGraphLaunch(p.graph, main.get()));
      ++captures;
    }
    end_main.record(main);
    end_comm.record(comm);
    const bool replay = std::exchange(replayed, false);
    // A little grace past the step's timeout: a communicator's watchdog (NcclCommunicator) that watches a
    // transfer issued earlier in the step with the same timeout then fires first, and its error (which
    // names the stuck transfers) is the one every rank sees, instead of this one.
    if (!wait_until({&end_main, &end_comm}, deadline_after(limit) + std::chrono::milliseconds(250)))
      throw TimeoutError("CudaDevice: the step's GPU work on device " + std::to_string(device) +
                         " did not finish within " + std::to_string(limit.count()) + " ms");
    const auto* losses = p.losses.template as<const double>();
    for (std::size_t b = 0; b < r.losses.size(); ++b) r.losses[b] = losses[b];
    if (!r.outputs.empty() && p.outputs.size() >= r.outputs.size())
      std::memcpy(r.outputs.data(), p.outputs.data(), r.outputs.size());
    if (replay) {
      r.spans.clear();
    } else if (timing_on) {
      r.spans.clear();
      for (int i : p.timed) {
        const auto k = static_cast<std::size_t>(i);
        Span s;
        s.op = p.plan->ops[k];
        auto at = [&](Program::Mark m) { return p.mark(k, m).elapsed_ms_since(p.step_start) * 1e-3; };
        s.start = at(Program::start);
        s.end = at(Program::end);
        if (s.op.kind == OpKind::forward_backward)  // as the simulator has it: once both halves have their data
          s.start = std::max(s.start, at(Program::second_start));
        s.lane = Span::Lane::compute;
        s.index = i;
        r.spans.push_back(s);
      }
      if (options.timeline_epoch) r.clock_start = p.step_start.elapsed_ms_since(*options.timeline_epoch) * 1e-3;
    }
    timing_on = false;
  }

  void abandon_step() noexcept {
    try {
      if (capturing) {
        capturing = false;
        // Join the other captured streams back first, so that ending the capture takes them out of it.
        if (cudaEventRecord(join_event.get(), second.get()) == cudaSuccess)
          ignore_cuda_error(cudaStreamWaitEvent(main.get(), join_event.get(), 0));
        if (cudaEventRecord(end_comm.get(), comm) == cudaSuccess)
          ignore_cuda_error(cudaStreamWaitEvent(main.get(), end_comm.get(), 0));
        cudaGraph_t g = nullptr;
        ignore_cuda_error(cudaStreamEndCapture(main.get(), &g));
        if (g) ignore_cuda_error(cudaGraphDestroy(g));
      }
      while (nvtx_depth > 0) {
        NvtxNames::pop();
        --nvtx_depth;
      }
      pending.clear();
      replayed = false;
      timing_on = false;
      timed_op = -1;
      // Bounded: a communicator that was aborted lets its transfers end; one that was not may never.
      const auto deadline = std::chrono::steady_clock::now() + std::min(timeout, std::chrono::milliseconds(10'000));
      for (;;) {
        const bool done = cudaStreamQuery(main.get()) != cudaErrorNotReady &&
                          cudaStreamQuery(second.get()) != cudaErrorNotReady &&
                          (!comm || cudaStreamQuery(comm) != cudaErrorNotReady);
        if (done || std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    } catch (...) {
      // Nothing may escape: the step already failed with the error that matters.
    }
    (void)cudaGetLastError();
  }

  /// Pinned memory for batch chunk `b`'s loss in the current step's program.
  [[nodiscard]] double* loss_slot(std::size_t b) noexcept { return cur->losses.template as<double>() + b; }

  CudaDeviceOptions options;
  [[no_unique_address]] Alloc alloc;
  int device;
  ComputeStream main;  // lent, or its own
  ComputeStream second;
  cudaStream_t comm = nullptr;
  int ranks = 1;  // the communicator's
  Event fork_event, join_event, origin_event, end_main, end_comm;
  std::vector<Block> blocks;
  std::vector<Slot> slots;
  std::vector<long> pending;  // slots posted since the last commit
  std::vector<std::unique_ptr<Program>> programs;
  Program* cur = nullptr;
  std::chrono::milliseconds timeout{60'000};
  bool capturing = false;
  bool replayed = false;
  bool timing_on = false;
  int timed_op = -1;       // the compute op whose GPU span is being timed, or -1
  bool end_timed = false;  // its end event is recorded (see used())
  int nvtx_depth = 0;
  long replays = 0;
  long captures = 0;
  long slot_waits = 0;
};

}  // namespace dualpipe::detail
