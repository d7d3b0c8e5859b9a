// dualpipe/runtime/pipeline.hpp: Pipeline<Schedule, Communicator, Stage>, the user's entry point.
//
//   InProcessWorld world(4);
//   run_ranks(4, [&](int r) {
//     MyStage s0 = ..., s1 = ...;                             // module 0 and module 1 of rank r
//     Pipeline<DualPipe, InProcessCommunicator, MyStage> pipe(world.communicator(r), {&s0, &s1});
//     StepResult res = pipe.step(chunks, inputs, labels);    // whole batch on first / last stages
//   });
//
// A Pipeline is one rank's part: it builds (once per chunk count and mode) the rank's plan and buffers,
// checks every input before anything is communicated, and runs the executor. A fourth, optional policy is
// the Device (runtime/device.hpp): HostDevice by default; dualpipe::CudaDevice (dualpipe/cuda.hpp) runs the
// stages on CUDA streams with the buffers in device memory. Everything a step needs
// is allocated by the first step of a configuration; with step_into() / eval_into() reusing a StepResult,
// later steps allocate nothing.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/runtime/device.hpp"
#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/runtime/plan.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/runtime/step_result.hpp"

namespace dualpipe {

/// Options fixed for the life of a Pipeline.
struct PipelineOptions {
  std::chrono::milliseconds timeout{60'000};  ///< Bound on every wait of a step.
  std::vector<int> rank_mapping;              ///< Communicator rank -> pipeline rank (as the reference's
                                              ///< rank_mapping); empty = identity.
  bool scale_loss_by_chunks = false;          ///< StageContext::loss_scale = 1 / (chunks x accumulation_steps
                                              ///< x replicas): the summed gradient is that of the mean loss.
  bool record_timeline = true;                ///< Fill StepResult::spans with host-clock spans.
  int accumulation_steps = 1;                 ///< K: training steps whose gradients add up before an update
                                              ///< (the "no sync" steps, then the last); StageContext says which.
  int replicas = 1;                           ///< Data-parallel replicas whose gradients are summed (only the
                                              ///< loss scale uses it).
  bool overlap_phases = true;                 ///< A stage with phases (runtime/phases.hpp): an FB interleaves
                                              ///< its two chunks' phases; false runs one chunk after the other.
  int weight_fill_depth = 0;                  ///< > 0: a B and an FB's backward half owe their weight gradient
                                              ///< (at most this many at once), and a commit whose data is not
                                              ///< there yet runs them meanwhile (runtime/executor.hpp). Needs
                                              ///< a communicator whose groups can be polled (in-process, MPI),
                                              ///< the host device and a stage without phases or its own FB.
                                              ///< 0: off (every weight gradient where the schedule puts it).
  bool eager_transfers = false;               ///< Send each output as soon as it is computed (not at the commit)
                                              ///< and wait, before an FB, only for its forward half's input
                                              ///< (the rest before its backward half): the same ops and
                                              ///< results, fewer waits between ranks that feed each other
                                              ///< (runtime/executor.hpp). Needs a communicator that can launch
                                              ///< early (in-process, MPI), the host device and a stage without
                                              ///< phases or its own FB; not with weight_fill_depth.
};

/// One rank of a pipeline: `Schedule`'s op lists run by the executor against `Comm`, the user's stages and
/// the `Device` policy.
// Comm and S are plain parameters checked by static_asserts below, so that a type missing a member gets a
// message in plain words ("Stage needs: void backward_weight(...)") instead of a constraint dump.
template <class Schedule, class Comm, class S, DevicePolicy Device = HostDevice>
class Pipeline {
  static_assert(check_schedule_policy<Schedule>(),
                "Pipeline's Schedule must model dualpipe::SchedulePolicy, e.g. dualpipe::DualPipe or "
                "dualpipe::DualPipeV");
  static_assert(check_communicator<Comm>(), "Pipeline's Comm must model dualpipe::Communicator");
  static_assert(check_stage<S>(), "Pipeline's Stage must model dualpipe::Stage");

public:
  /// Modules (stages) each rank holds under this schedule.
  static constexpr std::size_t modules = static_cast<std::size_t>(Schedule::modules_per_rank);

  /// stages[m] computes module m of this rank (Schedule::modules_per_rank of them); not owned. `device` is
  /// owned. Throws ConfigError for a null stage, a non-positive timeout or a rank_mapping that is not a
  /// permutation of the communicator's ranks (and whatever the device's attach to `comm` throws).
  Pipeline(Comm& comm, std::array<S*, modules> stages, PipelineOptions options = {}, Device device = Device())
      : _comm(comm), _stages(stages), _options(std::move(options)),
        _executor(comm, stages, comm_rank_of(comm, _options), pipeline_rank(comm, _options), std::move(device)) {
    for (std::size_t m = 0; m < modules; ++m)
      if (_stages[m] == nullptr)
        throw ConfigError("Pipeline: the stage for module " + std::to_string(m) + " is null (" +
                          std::string(Schedule::name) + " needs " + std::to_string(modules) + " stages per rank)");
    if (_options.timeout.count() <= 0)
      throw ConfigError("Pipeline: timeout must be positive (got " + std::to_string(_options.timeout.count()) + " ms)");
    if (_options.accumulation_steps < 1)
      throw ConfigError("Pipeline: accumulation_steps must be at least 1 (got " +
                        std::to_string(_options.accumulation_steps) + ")");
    if (_options.replicas < 1)
      throw ConfigError("Pipeline: replicas must be at least 1 (got " + std::to_string(_options.replicas) + ")");
    check_weight_fill();
    check_eager_transfers();
  }

  /// One training step over a batch of `chunks` chunks. `inputs` / `labels` hold the WHOLE batch, chunk after
  /// chunk (chunk i = bytes [i*n, (i+1)*n), n = size/chunks); required on ranks holding a first / last stage,
  /// may be empty elsewhere. Each module takes its batch chunks [chunk_offset, chunk_offset + num_chunks).
  /// Throws ConfigError (before any communication) for a bad configuration or input size, StepError when
  /// the step fails on any rank. A ConfigError also aborts the communicator (when it has other ranks), so
  /// that the other ranks' steps end at once with a StepError naming this rank and the rule ("op config");
  /// as after any failed step, every rank calls reset() before the next one.
  StepResult step(int chunks, ConstBytes inputs, ConstBytes labels, StepOptions options = {}) {
    StepResult r;
    run(r, chunks, inputs, labels, options, Mode::train);
    return r;
  }

  /// Forward-only step (Mode::forward); labels optional (losses computed when given).
  StepResult eval(int chunks, ConstBytes inputs, ConstBytes labels = {}, StepOptions options = {}) {
    StepResult r;
    run(r, chunks, inputs, labels, options, Mode::forward);
    return r;
  }

  /// step(), writing into `result` and reusing its vectors: no allocation once they are big enough.
  void step_into(StepResult& result, int chunks, ConstBytes inputs, ConstBytes labels, StepOptions options = {}) {
    run(result, chunks, inputs, labels, options, Mode::train);
  }

  /// eval(), writing into `result` and reusing its vectors.
  void eval_into(StepResult& result, int chunks, ConstBytes inputs, ConstBytes labels = {}, StepOptions options = {}) {
    run(result, chunks, inputs, labels, options, Mode::forward);
  }

  /// After a failed step, on every rank: frees the buffers, empties the weight FIFO, calls the stages'
  /// reset() where they have one, resets the communicator where it has a reset (the in-process one's
  /// is collective: every rank must call it), and starts the accumulation cycle again at step 0.
  void reset() {
    _accumulation_step = 0;
    for (auto& p : _programs) {
      p->buffers.reset();
      p->fifo.clear();
    }
    if constexpr (StageWithReset<S>) {
      for (std::size_t m = 0; m < modules; ++m)
        if (std::find(_stages.begin(), _stages.begin() + static_cast<std::ptrdiff_t>(m), _stages[m]) ==
            _stages.begin() + static_cast<std::ptrdiff_t>(m))
          _stages[m]->reset();
    }
    if constexpr (CommunicatorWithCollectiveReset<Comm>) _comm.reset(_options.timeout);
    else if constexpr (CommunicatorWithReset<Comm>) _comm.reset();
  }

  /// The accumulation step the next training step will be (0 .. accumulation_steps-1): each successful
  /// training step advances it, wrapping after the last of the K; reset() sets it back to 0.
  [[nodiscard]] int accumulation_step() const noexcept { return _accumulation_step; }

  /// This rank's pipeline rank.
  [[nodiscard]] int rank() const noexcept { return _executor.rank(); }
  /// Number of ranks (the communicator's size).
  [[nodiscard]] int ranks() const { return static_cast<int>(_comm.size()); }
  /// The options this pipeline was built with.
  [[nodiscard]] const PipelineOptions& options() const noexcept { return _options; }
  /// The device policy (its streams, for example).
  [[nodiscard]] Device& device() noexcept { return _executor.device(); }
  /// The plan (op list, placements, buffer capacities) of a step of `chunks` chunks in `mode`, building
  /// it if needed. Throws ConfigError for a bad configuration.
  [[nodiscard]] const RankPlan& plan(int chunks, Mode mode = Mode::train) { return program(chunks, mode).plan; }

private:
  static std::vector<int> comm_rank_of(const Comm& comm, const PipelineOptions& o) {
    const int n = static_cast<int>(comm.size());
    if (n < 1) throw ConfigError("Pipeline: the communicator has size " + std::to_string(n));
    std::vector<int> inverse(static_cast<std::size_t>(n), -1);
    if (o.rank_mapping.empty()) {
      for (int i = 0; i < n; ++i) inverse[static_cast<std::size_t>(i)] = i;
      return inverse;
    }
    if (static_cast<int>(o.rank_mapping.size()) != n)
      throw ConfigError("Pipeline: rank_mapping has " + std::to_string(o.rank_mapping.size()) +
                        " entries but the communicator has " + std::to_string(n) + " ranks");
    for (int c = 0; c < n; ++c) {
      const int p = o.rank_mapping[static_cast<std::size_t>(c)];
      if (p < 0 || p >= n)
        throw ConfigError("Pipeline: rank_mapping[" + std::to_string(c) + "] = " + std::to_string(p) +
                          " is outside [0, " + std::to_string(n) + ")");
      if (inverse[static_cast<std::size_t>(p)] >= 0)
        throw ConfigError("Pipeline: rank_mapping is not a permutation: pipeline rank " + std::to_string(p) +
                          " appears twice");
      inverse[static_cast<std::size_t>(p)] = c;
    }
    return inverse;
  }
  static int pipeline_rank(const Comm& comm, const PipelineOptions& o) {
    const int r = static_cast<int>(comm.rank());
    if (r < 0 || r >= static_cast<int>(comm.size()))
      throw ConfigError("Pipeline: the communicator's rank " + std::to_string(r) + " is outside [0, " +
                        std::to_string(comm.size()) + ")");
    return o.rank_mapping.empty() ? r : o.rank_mapping[static_cast<std::size_t>(r)];
  }

  StepProgram& program(int chunks, Mode mode) {
    for (auto& p : _programs)
      if (p->plan.chunks == chunks && p->plan.mode == mode) return *p;
    RankPlan plan = make_rank_plan<Schedule>(ranks(), chunks, rank(), mode);
    _programs.push_back(std::make_unique<StepProgram>(_executor.prepare(std::move(plan))));
    return *_programs.back();
  }

  void check_sizes(const StepProgram& prog, ConstBytes inputs, ConstBytes labels, const ChunkSizes& sizes) const {
    const RankPlan& plan = prog.plan;
    const auto chunks = static_cast<std::size_t>(plan.chunks);
    // Built only on failure: a step that passes its checks allocates nothing.
    auto where = [&] {
      return "Pipeline (" + std::string(Schedule::name) + ", rank " + std::to_string(plan.rank) + ")";
    };
    if (!sizes.empty()) {
      if constexpr (!StageWithTensors<S>)
        throw ConfigError(where() +
                          ": the step gives chunk sizes, but the stage has fixed sizes (it declares no "
                          "input_tensors() and output_tensors())");
      // A table of the wrong shape is left to the executor's exchange, which names it on every rank.
      if (sizes.tensors == 0 || sizes.rows.size() != chunks * sizes.tensors) return;
      for (std::size_t m = 0; m < modules; ++m) {
        const TensorLayout& in = prog.input_layout[m];
        const TensorLayout& out = prog.output_layout[m];
        if (in.size() != sizes.tensors || out.size() != sizes.tensors) return;
        for (std::size_t b = 0; b < chunks; ++b)
          for (std::size_t t = 0; t < sizes.tensors; ++t)
            if (sizes.at(b, t) > in[t].max_rows || sizes.at(b, t) > out[t].max_rows) return;  // likewise
      }
    }
    for (std::size_t m = 0; m < modules; ++m) {
      const ModulePlacement& p = plan.placements[m];
      if (p.is_first_stage() && !sizes.empty()) {
        std::size_t expected = 0;
        for (std::size_t b = 0; b < chunks; ++b) expected += prog.input_layout[m].bytes(sizes, b);
        if (inputs.size() != expected)
          throw ConfigError(where() + ": module " + std::to_string(m) +
                            " is the first stage, so inputs must hold the whole batch, every chunk's tensors at "
                            "the rows of the size table: " +
                            std::to_string(expected) + " bytes, got " + std::to_string(inputs.size()) + " bytes");
      } else if (p.is_first_stage()) {
        const std::size_t per_chunk = prog.input_layout[m].max_bytes();
        const std::size_t expected = chunks * per_chunk;
        if (inputs.size() != expected)
          throw ConfigError(where() + ": module " + std::to_string(m) +
                            " is the first stage, so inputs must hold the "
                            "whole batch: chunks x input_bytes = " +
                            std::to_string(chunks) + " x " + std::to_string(per_chunk) + " = " +
                            std::to_string(expected) + " bytes, got " + std::to_string(inputs.size()) + " bytes");
      }
      if (p.is_last_stage()) {
        if (plan.mode == Mode::train && labels.empty())
          throw ConfigError(where() + ": module " + std::to_string(m) +
                            " is the last stage, so a training step needs "
                            "labels for the whole batch (got 0 bytes)");
        if (!labels.empty() && !sizes.empty()) {
          std::size_t rows = 0;
          for (std::size_t b = 0; b < chunks; ++b) rows += sizes.at(b, 0);
          if (rows == 0 || labels.size() % rows != 0)
            throw ConfigError(where() +
                              ": with a size table, labels split in proportion to tensor 0's rows, so "
                              "their size must be a multiple of those rows' total " +
                              std::to_string(rows) + "; got " + std::to_string(labels.size()) + " bytes");
        } else if (!labels.empty()) {
          if constexpr (StageWithLabelBytes<S>) {
            const std::size_t expected = chunks * _stages[m]->label_bytes();
            if (labels.size() != expected)
              throw ConfigError(where() + ": labels must hold the whole batch: chunks x label_bytes = " +
                                std::to_string(chunks) + " x " + std::to_string(_stages[m]->label_bytes()) + " = " +
                                std::to_string(expected) + " bytes, got " + std::to_string(labels.size()) + " bytes");
          } else if (labels.size() % chunks != 0) {
            throw ConfigError(where() + ": labels must hold the whole batch, a multiple of chunks=" +
                              std::to_string(chunks) + " bytes; got " + std::to_string(labels.size()) + " bytes");
          }
        }
      }
    }
  }

  // program() and check_sizes(), refusing a bad step before any communication. The other ranks of the
  // step may already be waiting for this one: the communicator is aborted (with the real message) so that
  // their steps end at once with a StepError naming this rank, instead of after the whole timeout. This
  // rank rethrows the original error (a ConfigError).
  StepProgram& checked_program(int chunks, Mode mode, ConstBytes inputs, ConstBytes labels, const ChunkSizes& sizes) {
    try {
      StepProgram& prog = program(chunks, mode);
      check_sizes(prog, inputs, labels, sizes);
      return prog;
    } catch (const std::exception& e) {
      if (ranks() > 1) abort_quietly(FailureOrigin{rank(), -1, -1, "config", e.what()});
      throw;
    }
  }

  void abort_quietly(const FailureOrigin& o) noexcept {
    try {
      _comm.abort(o);
    } catch (...) {
      // This rank throws the original error either way; a failed abort must not replace it.
    }
  }

  void run(StepResult& result, int chunks, ConstBytes inputs, ConstBytes labels, const StepOptions& options,
           Mode mode) {
    StepProgram& prog = checked_program(chunks, mode, inputs, labels, options.sizes);
    result.rank = rank();
    result.chunks = chunks;
    result.losses.assign(static_cast<std::size_t>(chunks), std::numeric_limits<double>::quiet_NaN());
    if (options.return_outputs) {
      result.outputs.reserve(prog.output_bytes);  // the most; the executor sizes it to this step's chunks
      result.outputs.resize(prog.output_bytes);
      result.output_chunks.assign(prog.plan.output_chunks.begin(), prog.plan.output_chunks.end());
    } else {
      result.outputs.clear();
      result.output_chunks.clear();
    }
    ExecutorStep step;
    step.inputs = inputs;
    step.labels = labels;
    step.loss_scale = _options.scale_loss_by_chunks
                          ? 1.0 / (static_cast<double>(chunks) * _options.accumulation_steps * _options.replicas)
                          : 1.0;
    step.accumulation_step = mode == Mode::train ? _accumulation_step : 0;
    step.accumulation_steps = _options.accumulation_steps;
    step.timeout = _options.timeout;
    step.return_outputs = options.return_outputs;
    step.record_timeline = _options.record_timeline;
    step.sizes = options.sizes;
    step.overlap_phases = _options.overlap_phases;
    step.weight_fill_depth = _options.weight_fill_depth;
    step.eager_transfers = _options.eager_transfers;
    _executor.run(prog, step, result);
    if (mode == Mode::train) _accumulation_step = (_accumulation_step + 1) % _options.accumulation_steps;
  }

  // PipelineOptions::weight_fill_depth: a count, and only where the executor can fill a wait.
  void check_weight_fill() const {
    const int depth = _options.weight_fill_depth;
    if (depth < 0)
      throw ConfigError("Pipeline: weight_fill_depth must be 0 (off) or more (got " + std::to_string(depth) + ")");
    if (depth == 0) return;
    const std::string head = "Pipeline: weight_fill_depth " + std::to_string(depth) + " needs ";
    if constexpr (!CommunicatorWithPolling<Comm>)
      throw ConfigError(head +
                        "a communicator whose commit groups can be polled (group.ready(): "
                        "InProcessCommunicator, MpiCommunicator); this one's cannot");
    if constexpr (StageWithPhases<S> || StageWithOverlap<S>)
      throw ConfigError(head +
                        "a stage without phases and without its own forward_backward (its FB would "
                        "no longer be its own); set it to 0 for this stage");
    if constexpr (!std::is_same_v<Device, HostDevice>)
      throw ConfigError(head + "the host device (a device's waits are not the host's); set it to 0");
  }

  // PipelineOptions::eager_transfers: only where the executor owns the waits, and not with weight filling.
  void check_eager_transfers() const {
    if (!_options.eager_transfers) return;
    const std::string head = "Pipeline: eager_transfers needs ";
    if constexpr (!CommunicatorWithEagerLaunch<Comm>)
      throw ConfigError(head +
                        "a communicator that can launch before the commit and wait for one receive "
                        "(CommunicatorWithEagerLaunch: InProcessCommunicator, MpiCommunicator); this one cannot");
    if constexpr (StageWithPhases<S> || StageWithOverlap<S>)
      throw ConfigError(head +
                        "a stage without phases and without its own forward_backward (their FB orders its own "
                        "waits); set it to false for this stage");
    if constexpr (!std::is_same_v<Device, HostDevice>)
      throw ConfigError(head + "the host device (a device orders its transfers with events); set it to false");
    if (_options.weight_fill_depth > 0)
      throw ConfigError("Pipeline: eager_transfers and weight_fill_depth " +
                        std::to_string(_options.weight_fill_depth) +
                        " both change what a commit waits for; use one of them (set weight_fill_depth to 0 or "
                        "eager_transfers to false)");
  }

  Comm& _comm;
  std::array<S*, modules> _stages;
  PipelineOptions _options;
  Executor<Comm, S, modules, Device> _executor;
  std::vector<std::unique_ptr<StepProgram>> _programs;  // one per (chunks, mode) used so far
  int _accumulation_step = 0;                           // of the next training step
};

}  // namespace dualpipe
