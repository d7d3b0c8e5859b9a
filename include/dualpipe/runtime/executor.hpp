// dualpipe/runtime/executor.hpp: the one executor behind every schedule.
//
// A step on one rank is a walk down that rank's op list (runtime/plan.hpp). Each op maps to a call:
//   F<m>.<c>     stage m forward (and, at the last stage, its loss with that chunk's labels)
//   B<m>.<c>     stage m's fused backward if it has one (StageWithFusedBackward), else backward_input then
//                backward_weight
//   B<m>.<c>w    backward_input now; the weight gradient is owed: (m, c) goes on the weight FIFO
//   W            pop the oldest owed group and run its backward_weight
//   FB..         a stage with phases (StageWithPhases, runtime/phases.hpp): the two chunks' phases
//                interleaved, so that one's all-to-all runs while the other computes; else
//                S::forward_backward if the stage type offers it (StageWithOverlap), else forward then backward
//   sF rF sB rB  comm.post_send / post_recv with tag (module, chunk, payload), to the placement's neighbour
//   |            comm.commit() then wait on the group with the step's timeout
// Filling waits (ExecutorStep::weight_fill_depth = d > 0; PipelineOptions checks where it applies): a B,
// and the backward half of an FB, run only their input part and owe the weight part on the weight FIFO,
// which holds at most d such groups beyond the schedule's own (one more runs the oldest at once). A commit
// whose group is not ready yet runs the oldest groups until it is (or none is left), then waits; the last
// commit runs them all; a W finds its group already run or runs the oldest; the step's end runs the rest.
// Groups always run oldest first, so each module's weight gradients add up in the same order whatever the
// timing: a step is bit for bit the same from run to run. Each group run in a wait (or at the end) is
// recorded as a compute span of a W op with the commit's (or the last op's) index.
// Eager transfers (ExecutorStep::eager_transfers; CommunicatorWithEagerLaunch): a forward's output, or a
// backward's input gradient, that the group sends is sent (posted and launched) as soon as it is computed,
// not at the commit; and a commit followed by an FB waits only for the FB's forward input, the rest of the
// group before the FB's backward half (or before the next op, for any other op). The op order, the data and
// the results are the same; only the waits move: the first half of an FB no longer waits for what the peer
// computes in the second half of its own FB, which breaks the lockstep of two ranks that feed each other.
// The wait before the backward half is recorded as a wait span of the commit, between two compute spans
// of the FB.
// A stage with phases runs its phases in order for F, B and B..w (the executor never calls its forward or
// backward_input), and every failure aborts its expert communicator too and names the phase.
// A stage with on_grads_ready (StageWithGradsReady) is called once per module per training step, right
// after that module's last weight gradient (its num_chunks-th: in a B, the backward half of an FB, or a W).
// Where data comes from and goes to is the schedule's placement (schedule/placement.hpp) and nothing else;
// the buffers are chunk_buffers.hpp's. A failure anywhere aborts the communicator, so that every rank's
// step ends with a StepError naming where it started (rank, module, chunk, op token).
// Chunk sizes (runtime/tensors.hpp): each module's input and output is a TensorLayout (one tensor of
// input_bytes() for a plain stage); the pools are sized at the layouts' maxima, and each transfer and each
// span a stage is given has the chunk's actual size, from the step's ChunkSizes table (the maxima when it
// is empty). For a stage that declares tensors (StageWithTensors), every rank first sends every other rank
// a small record (its table and what its own stages make of it: one all-to-all group, tag module =
// Modules, a module no rank has) and then checks the same gathered records in the same order, so that a
// bad table is the same ConfigError on every rank, before any activation is sent.
// The Device policy (runtime/device.hpp; HostDevice by default, whose hooks do nothing) is told about every
// compute op, buffer use, post and commit, so that a GPU device can order them with streams and events
// instead of host waits; it also says where buffers live and which stream a stage computes on.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/comm/null.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/trace.hpp"
#include "dualpipe/runtime/chunk_buffers.hpp"
#include "dualpipe/runtime/device.hpp"
#include "dualpipe/runtime/executor_step.hpp"
#include "dualpipe/runtime/phases.hpp"
#include "dualpipe/runtime/plan.hpp"
#include "dualpipe/runtime/recorder.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/runtime/step_result.hpp"
#include "dualpipe/runtime/tensors.hpp"
#include "dualpipe/runtime/weight_fifo.hpp"

namespace dualpipe {

/// A RankPlan with everything sized for it: the buffers, the weight FIFO and where outputs go.
struct StepProgram {
  RankPlan plan;                            ///< The op list and placements.
  ChunkBuffers buffers;                     ///< Every chunk buffer, sized from the plan's dry run.
  WeightFifo fifo;                          ///< Deferred weight groups, sized from the dry run.
  std::vector<std::size_t> output_offset;   ///< Batch chunk -> byte offset in StepResult::outputs (this step's).
  std::size_t output_bytes = 0;             ///< Most bytes of StepResult::outputs (every chunk at its maxima).
  std::vector<TensorLayout> input_layout;   ///< Module -> its input tensors.
  std::vector<TensorLayout> output_layout;  ///< Module -> its output tensors.
  std::vector<std::vector<std::size_t>> input_offset;  ///< Module -> batch chunk -> byte offset in the step's
                                                       ///< inputs (first stages; recomputed each step).
  std::vector<std::size_t> label_offset;    ///< Batch chunk -> byte offset in the step's labels (chunks + 1).
  std::vector<std::uint64_t> size_records;  ///< Every rank's size record (StageWithTensors only).
};

namespace detail {
/// The dry run's stage: does nothing, holds no bytes. Overlapped, so that an FB takes both of its buffers
/// before giving any back: the largest need of the two ways of running an FB.
struct SizingStage {
  void forward(const StageContext&, ConstBytes, MutableBytes) noexcept {}
  double loss(const StageContext&, ConstBytes, ConstBytes) noexcept { return 0; }
  void backward_input(const StageContext&, ConstBytes, MutableBytes) noexcept {}
  void backward_weight(const StageContext&) noexcept {}
  [[nodiscard]] std::size_t input_bytes() const noexcept { return 0; }
  [[nodiscard]] std::size_t output_bytes() const noexcept { return 0; }
  static void forward_backward(SizingStage&, const StageContext&, ConstBytes, MutableBytes, SizingStage&,
                               const StageContext&, ConstBytes, MutableBytes) noexcept {}
};
}  // namespace detail

/// Runs one rank's op lists against `Modules` stages, a communicator and a device policy.
template <Communicator Comm, Stage S, std::size_t Modules, DevicePolicy Device = HostDevice>
class Executor {
public:
  /// `stages[m]` computes module m (not owned, never null); `comm_rank_of[p]` is the communicator rank of
  /// pipeline rank p; `rank` is this rank's pipeline rank; `device` is owned. A device with
  /// `attach(comm)` (DeviceWithAttach) is attached to the communicator here (a CUDA device takes its
  /// communication stream).
  Executor(Comm& comm, std::array<S*, Modules> stages, std::vector<int> comm_rank_of, int rank,
           Device device = Device())
      : _comm(comm), _stages(stages), _comm_rank_of(std::move(comm_rank_of)), _rank(rank), _device(std::move(device)) {
    if constexpr (DeviceWithAttach<Device, Comm>) _device.attach(comm);
  }

  /// The device policy.
  [[nodiscard]] Device& device() noexcept { return _device; }

  /// Sizes `plan` (a dry run of its ops) and builds the buffers for this executor's stages. Throws
  /// ConfigError when the plan does not fit the stages (a local hand-off between different sizes).
  [[nodiscard]] StepProgram prepare(RankPlan plan) {
    size_plan(plan);
    StepProgram prog;
    std::vector<ModuleBuffersSpec> specs;
    for (std::size_t m = 0; m < Modules; ++m) {
      prog.input_layout.push_back(input_layout(*_stages[m]));
      prog.output_layout.push_back(output_layout(*_stages[m]));
    }
    for (std::size_t m = 0; m < Modules; ++m) {
      ModuleBuffersSpec s;
      s.placement = plan.placements[m];
      s.input_bytes = prog.input_layout[m].max_bytes();
      s.output_bytes = prog.output_layout[m].max_bytes();
      s.capacity = plan.capacity[m];
      if (s.placement.local_prev_module >= 0) {
        const auto prev = static_cast<std::size_t>(s.placement.local_prev_module);
        const std::size_t prev_out = prog.output_layout[prev].max_bytes();
        if (prev_out != s.input_bytes || !(prog.output_layout[prev] == prog.input_layout[m]))
          throw ConfigError("rank " + std::to_string(_rank) + ": module " + std::to_string(m) + " takes " +
                            std::to_string(s.input_bytes) + " input bytes per chunk but module " +
                            std::to_string(s.placement.local_prev_module) + " hands it " + std::to_string(prev_out) +
                            (prev_out == s.input_bytes ? " (in other tensors)" : ""));
      }
      specs.push_back(s);
    }
    prog.buffers = ChunkBuffers(plan.mode, specs, plan.pending_capacity, _device.slot_memory());
    prog.fifo.set_capacity(plan.weight_fifo_capacity);
    prog.output_offset.assign(static_cast<std::size_t>(plan.chunks), 0);
    for (int b : plan.output_chunks) prog.output_bytes += prog.output_layout[last_module_of(plan, b)].max_bytes();
    prog.input_offset.assign(Modules, std::vector<std::size_t>(static_cast<std::size_t>(plan.chunks) + 1, 0));
    prog.label_offset.assign(static_cast<std::size_t>(plan.chunks) + 1, 0);
    if constexpr (detail::stage_has_tensors<S>)  // twice over with an all-gather: gathered, then reordered
      prog.size_records.assign((CommunicatorWithAllGather<Comm> ? 2 : 1) * static_cast<std::size_t>(plan.ranks) *
                                   size_record_words(plan.chunks),
                               0);
    prog.plan = std::move(plan);
    return prog;
  }

  /// Runs the program's ops once. `result` must have losses sized C (NaN) and, when outputs are returned,
  /// outputs with a capacity of prog.output_bytes (resized here to this step's chunk sizes); spans,
  /// step_seconds and peak_buffers_in_use are filled here. Throws ConfigError on every rank for a size
  /// table that does not fit (see size_error), StepError (with the original exception nested) when this
  /// rank or any other fails.
  void run(StepProgram& prog, const ExecutorStep& step, StepResult& result) {
    const std::vector<Op>& ops = prog.plan.ops;
    _prog = &prog;
    _step = &step;
    _result = &result;
    prog.buffers.reset();
    prog.fifo.clear();
    _schedule_owed = 0;
    if constexpr (can_fill) {  // room for the groups owed to fill waits too (allocates only when that changes)
      const std::size_t owed = std::min<std::size_t>(static_cast<std::size_t>(std::max(step.weight_fill_depth, 0)),
                                                     prog.plan.compute_ops);  // no more than the ops that owe
      prog.fifo.set_capacity(prog.plan.weight_fifo_capacity + (owed > 0 ? owed + 1 : 0));
    }
    for (std::size_t m = 0; m < Modules; ++m) {
      const ModulePlacement& p = prog.plan.placements[m];
      StageContext& ctx = _ctx[m];
      ctx.rank = _rank;
      ctx.module = static_cast<int>(m);
      ctx.stage = p.stage;
      ctx.num_stages = p.num_stages;
      ctx.num_batch_chunks = prog.plan.chunks;
      ctx.is_first_stage = p.is_first_stage();
      ctx.is_last_stage = p.is_last_stage();
      ctx.mode = prog.plan.mode;
      ctx.loss_scale = step.loss_scale;
      ctx.stream = _device.stream(ComputeLane::main);
      ctx.accumulation_step = step.accumulation_step;
      ctx.accumulation_steps = step.accumulation_steps;
      _weights_done[m] = 0;
      _offset[m] = p.chunk_offset;
    }
    _sizes = step.sizes;
    result.phase_spans.clear();
    _phase = nullptr;
    _owed_running = false;
    _last_commit = -1;
    if constexpr (can_eager) {
      _pending.reset();
      if (eager()) _sent_early.assign(ops.size(), 0);  // allocates only when the op list grows
    }
    if (filling())  // only filling drains at the last commit
      for (std::size_t k = 0; k < ops.size(); ++k)
        if (ops[k].kind == OpKind::commit) _last_commit = static_cast<int>(k);
    _recorder.begin(result.spans,
                    prog.plan.compute_ops * (filling() || eager() ? 2 : 1) +  // a fill W per backward, a split FB
                        prog.plan.commit_ops * (eager() ? 2 : 1),             // a commit's wait in two parts
                    step.record_timeline);
    result.clock_start = _recorder.origin_seconds();  // a device with its own clock may change it at the end
    if constexpr (detail::stage_has_tensors<S>) {
      try {
        agree_sizes(prog, step);
      } catch (const ConfigError&) {
        throw;  // the same on every rank (they checked the same records): nobody is left waiting
      } catch (...) {
        fail(prog.plan.ops.size(), "size exchange");
      }
    } else {
      _sizes = ChunkSizes{};  // a plain stage has fixed sizes
    }
    size_step(prog, step, result);
    std::size_t i = 0;
    try {
      if (_device.begin_step(prog.plan, step)) {
        i = ops.size();  // the device ran the whole step (a replayed graph)
      } else {
        for (; i < ops.size(); ++i) execute(ops[i], static_cast<int>(i));
      }
      finish_pending();
      if constexpr (can_fill)
        while (!prog.fifo.empty() && filling()) run_owed_weight(static_cast<int>(ops.size()) - 1);
      finish();
    } catch (...) {
      fail(i);
    }
    result.peak_buffers_in_use = prog.buffers.peak();
    result.step_seconds = std::chrono::duration<double>(Recorder::clock::now() - _recorder.origin()).count();
  }

  /// This executor's pipeline rank.
  [[nodiscard]] int rank() const noexcept { return _rank; }

  /// Fills the plan's sizing fields with a dry run of its ops (no data, no communication).
  static void size_plan(RankPlan& plan) {
    std::vector<ModuleBuffersSpec> specs;
    std::size_t chunks_total = 0;
    for (const ModulePlacement& p : plan.placements) {
      const auto n = static_cast<std::size_t>(p.num_chunks);
      specs.push_back(ModuleBuffersSpec{p, 0, 0, {n, n, n, n}});
      chunks_total += n;
    }
    std::array<detail::SizingStage, Modules> stages{};
    std::array<detail::SizingStage*, Modules> ptrs{};
    for (std::size_t m = 0; m < Modules; ++m) ptrs[m] = &stages[m];
    std::vector<int> identity(static_cast<std::size_t>(plan.ranks));
    for (int r = 0; r < plan.ranks; ++r) identity[static_cast<std::size_t>(r)] = r;
    NullCommunicator comm(plan.rank, plan.ranks);
    Executor<NullCommunicator, detail::SizingStage, Modules> dry(comm, ptrs, std::move(identity), plan.rank);
    StepProgram prog;
    prog.buffers = ChunkBuffers(plan.mode, specs, plan.ops.size());
    prog.fifo.set_capacity(chunks_total);
    prog.output_offset.assign(static_cast<std::size_t>(plan.chunks), 0);
    prog.input_layout.assign(Modules, TensorLayout{});  // no tensors: every buffer is empty
    prog.output_layout.assign(Modules, TensorLayout{});
    prog.input_offset.assign(Modules, std::vector<std::size_t>(static_cast<std::size_t>(plan.chunks) + 1, 0));
    prog.label_offset.assign(static_cast<std::size_t>(plan.chunks) + 1, 0);
    prog.plan = std::move(plan);
    StepResult result;
    result.losses.assign(static_cast<std::size_t>(prog.plan.chunks), 0.0);
    dry.run(prog, ExecutorStep{}, result);
    plan = std::move(prog.plan);
    plan.capacity.assign(Modules, {});
    for (std::size_t m = 0; m < Modules; ++m)
      for (int k = 0; k < 4; ++k)
        plan.capacity[m][static_cast<std::size_t>(k)] =
            prog.buffers.pool_peak(static_cast<int>(m), static_cast<BufferKind>(k));
    plan.weight_fifo_capacity = prog.fifo.peak();
    plan.pending_capacity = prog.buffers.pending_peak();
    plan.peak_buffers = prog.buffers.peak();
  }

private:
  static std::size_t last_module_of(const RankPlan& plan, int batch_chunk) {
    for (std::size_t m = 0; m < Modules; ++m) {
      const ModulePlacement& p = plan.placements[m];
      if (p.is_last_stage() && batch_chunk >= p.chunk_offset && batch_chunk < p.chunk_offset + p.num_chunks) return m;
    }
    return 0;
  }

  [[nodiscard]] int peer(int pipeline_rank) const noexcept {
    return _comm_rank_of[static_cast<std::size_t>(pipeline_rank)];
  }

  [[nodiscard]] StageContext context(int m, int c, ComputeLane lane = ComputeLane::main) const noexcept {
    StageContext ctx = _ctx[static_cast<std::size_t>(m)];
    ctx.chunk = c;
    ctx.batch_chunk = _offset[static_cast<std::size_t>(m)] + c;
    if (lane != ComputeLane::main) ctx.stream = _device.stream(lane);
    return ctx;
  }

  // ---- Chunk sizes --------------------------------------------------------------------------------------
  static std::size_t size_record_words(int chunks) noexcept {
    return record_header + static_cast<std::size_t>(chunks) * max_boundary_tensors;
  }
  static constexpr std::size_t record_header = 11;
  // A record's header: whether the rank gave a table, its tensors and length, then the first problem its
  // own stages found in it (none, a wrong length, a wrong tensor count, a chunk over a maximum) and where.
  enum Word : std::size_t {
    has_table,
    tensors,
    length,
    problem,
    p_chunk,
    p_tensor,
    p_got,
    p_limit,
    p_module,
    p_stage,
    p_side
  };
  enum Problem : std::uint64_t { none, wrong_length, wrong_tensors, too_large };

  // This rank's record: its table and what its stages make of it.
  void fill_record(std::uint64_t* r, const StepProgram& prog, const ChunkSizes& sizes) const {
    const auto chunks = static_cast<std::size_t>(prog.plan.chunks);
    for (std::size_t i = 0; i < size_record_words(prog.plan.chunks); ++i) r[i] = 0;
    r[has_table] = sizes.empty() ? 0 : 1;
    r[tensors] = sizes.tensors;
    r[length] = sizes.rows.size();
    if (sizes.empty()) return;
    auto problem_at = [&](Problem p, std::size_t b, std::size_t t, std::size_t got, std::size_t limit, std::size_t m,
                          std::size_t side) {
      r[problem] = p;
      r[p_chunk] = b;
      r[p_tensor] = t;
      r[p_got] = got;
      r[p_limit] = limit;
      r[p_module] = m;
      r[p_stage] = static_cast<std::uint64_t>(prog.plan.placements[m].stage);
      r[p_side] = side;
    };
    if (sizes.tensors == 0 || sizes.tensors > max_boundary_tensors || sizes.rows.size() != chunks * sizes.tensors) {
      problem_at(wrong_length, 0, 0, sizes.rows.size(), chunks * sizes.tensors, 0, 0);
      return;
    }
    for (std::size_t i = 0; i < sizes.rows.size(); ++i) r[record_header + i] = sizes.rows[i];
    for (std::size_t m = 0; m < Modules; ++m)
      for (std::size_t side = 0; side < 2; ++side) {
        const TensorLayout& l = side == 0 ? prog.input_layout[m] : prog.output_layout[m];
        if (l.size() != sizes.tensors) {
          problem_at(wrong_tensors, 0, 0, sizes.tensors, l.size(), m, side);
          return;
        }
        for (std::size_t b = 0; b < chunks; ++b)
          for (std::size_t t = 0; t < l.size(); ++t)
            if (sizes.at(b, t) > l[t].max_rows) {
              problem_at(too_large, b, t, sizes.at(b, t), l[t].max_rows, m, side);
              return;
            }
      }
  }

  // Every rank's record to every rank (one group), then the same checks in the same order everywhere.
  void agree_sizes(StepProgram& prog, const ExecutorStep& step) {
    const RankPlan& plan = prog.plan;
    const std::size_t words = size_record_words(plan.chunks);
    std::uint64_t* all = prog.size_records.data();
    fill_record(all + static_cast<std::size_t>(_rank) * words, prog, step.sizes);
    if (plan.ranks > 1 && std::is_same_v<Comm, NullCommunicator>) {
      // No other rank to hear from (every post is done at once, without data): only this rank's checks.
      for (int p = 0; p < plan.ranks; ++p)
        if (p != _rank)
          std::copy_n(all + static_cast<std::size_t>(_rank) * words, words, all + static_cast<std::size_t>(p) * words);
    } else if constexpr (CommunicatorWithAllGather<Comm>) {
      if (plan.ranks > 1) {
        // The communicator's own collective, by communicator rank; then in pipeline-rank order.
        const std::size_t n = static_cast<std::size_t>(plan.ranks) * words;
        std::uint64_t* gathered = all + n;
        _comm.all_gather(std::as_bytes(std::span(all + static_cast<std::size_t>(_rank) * words, words)),
                         std::as_writable_bytes(std::span(gathered, n)), step.timeout);
        for (int p = 0; p < plan.ranks; ++p)
          std::copy_n(gathered + static_cast<std::size_t>(peer(p)) * words, words,
                      all + static_cast<std::size_t>(p) * words);
      }
    } else if (plan.ranks > 1) {
      const MessageTag tag{static_cast<int>(Modules), 0, Payload::activation};
      const ConstBytes mine = std::as_bytes(std::span(all + static_cast<std::size_t>(_rank) * words, words));
      for (int p = 0; p < plan.ranks; ++p) {
        if (p == _rank) continue;
        _comm.post_send(peer(p), tag, mine);
        _comm.post_recv(peer(p), tag,
                        std::as_writable_bytes(std::span(all + static_cast<std::size_t>(p) * words, words)));
      }
      auto group = _comm.commit();
      group.wait(step.timeout);
    }
    check_records(prog, all, words);
    _sizes = step.sizes;
  }

  // The gathered records' first problem, as a ConfigError naming the rank, the chunk, the tensor and sizes.
  void check_records(const StepProgram& prog, const std::uint64_t* all, std::size_t words) const {
    const RankPlan& plan = prog.plan;
    auto rec = [&](int p) { return all + static_cast<std::size_t>(p) * words; };
    auto where = [&](int p, const std::uint64_t* r) {
      return "rank " + std::to_string(p) + " module " + std::to_string(r[p_module]) + " (stage " +
             std::to_string(r[p_stage]) + ")'s " + (r[p_side] == 0 ? "input" : "output");
    };
    auto head = [&] {  // built only on failure: a step that passes allocates nothing
      return "chunk sizes (" + std::string(plan.schedule) + ", " + std::to_string(plan.chunks) + " chunks): ";
    };
    for (int p = 0; p < plan.ranks; ++p) {
      const std::uint64_t* r = rec(p);
      if (r[problem] == wrong_length)
        throw ConfigError(head() + "rank " + std::to_string(p) + "'s table has " + std::to_string(r[length]) +
                          " entries, expected chunks x tensors = " + std::to_string(plan.chunks) + " x " +
                          std::to_string(r[tensors]) + " = " + std::to_string(r[p_limit]) +
                          (r[tensors] > max_boundary_tensors
                               ? " (and at most " + std::to_string(max_boundary_tensors) + " tensors)"
                               : ""));
      if (r[problem] == wrong_tensors)
        throw ConfigError(head() + "the table lists " + std::to_string(r[p_got]) + " tensors per chunk but " +
                          where(p, r) + " has " + std::to_string(r[p_limit]) + " tensors");
    }
    const std::uint64_t* r0 = rec(0);
    for (int p = 1; p < plan.ranks; ++p) {
      const std::uint64_t* r = rec(p);
      if (r[has_table] != r0[has_table] || r[tensors] != r0[tensors] || r[length] != r0[length])
        throw ConfigError(
            head() + "the ranks' tables differ: rank 0 gave " +
            (r0[has_table] ? std::to_string(r0[length]) + " entries of " + std::to_string(r0[tensors]) + " tensors"
                           : std::string("none")) +
            ", rank " + std::to_string(p) + " " +
            (r[has_table] ? std::to_string(r[length]) + " entries of " + std::to_string(r[tensors]) + " tensors"
                          : std::string("none")));
      for (std::size_t i = 0; i < r0[length]; ++i)
        if (r[record_header + i] != r0[record_header + i])
          throw ConfigError(head() + "the ranks' tables differ at chunk " + std::to_string(i / r0[tensors]) +
                            ", tensor " + std::to_string(i % r0[tensors]) + ": " +
                            std::to_string(r0[record_header + i]) + " rows on rank 0, " +
                            std::to_string(r[record_header + i]) + " rows on rank " + std::to_string(p));
    }
    for (int p = 0; p < plan.ranks; ++p) {
      const std::uint64_t* r = rec(p);
      if (r[problem] == too_large)
        throw ConfigError(head() + "chunk " + std::to_string(r[p_chunk]) + ", tensor " + std::to_string(r[p_tensor]) +
                          " has " + std::to_string(r[p_got]) + " rows, more than the " + std::to_string(r[p_limit]) +
                          " rows (the declared maximum) of " + where(p, r));
    }
  }

  // This step's offsets: each first stage's chunks in the inputs, the labels' chunks, the outputs' chunks.
  void size_step(StepProgram& prog, const ExecutorStep& step, StepResult& result) {
    const RankPlan& plan = prog.plan;
    const auto chunks = static_cast<std::size_t>(plan.chunks);
    for (std::size_t m = 0; m < Modules; ++m) {
      std::vector<std::size_t>& off = prog.input_offset[m];
      off[0] = 0;
      for (std::size_t b = 0; b < chunks; ++b) off[b + 1] = off[b] + prog.input_layout[m].bytes(_sizes, b);
    }
    // Labels: equal parts, or (with a table) in proportion to each chunk's rows of tensor 0.
    std::size_t total_rows = 0;
    if (!_sizes.empty())
      for (std::size_t b = 0; b < chunks; ++b) total_rows += _sizes.at(b, 0);
    const std::size_t per =
        _sizes.empty() || total_rows == 0 ? step.labels.size() / chunks : step.labels.size() / total_rows;
    prog.label_offset[0] = 0;
    for (std::size_t b = 0; b < chunks; ++b)
      prog.label_offset[b + 1] = prog.label_offset[b] + (_sizes.empty() ? per : per * _sizes.at(b, 0));
    std::size_t out = 0;
    for (int b : plan.output_chunks) {
      prog.output_offset[static_cast<std::size_t>(b)] = out;
      out += prog.output_layout[last_module_of(plan, b)].bytes(_sizes, static_cast<std::size_t>(b));
    }
    if (step.return_outputs) result.outputs.resize(out);  // within the capacity of prog.output_bytes
  }

  [[nodiscard]] std::size_t batch_chunk(int m, int c) const noexcept {
    return static_cast<std::size_t>(_offset[static_cast<std::size_t>(m)] + c);
  }
  [[nodiscard]] const TensorLayout& in_layout(int m) const noexcept {
    return _prog->input_layout[static_cast<std::size_t>(m)];
  }
  [[nodiscard]] const TensorLayout& out_layout(int m) const noexcept {
    return _prog->output_layout[static_cast<std::size_t>(m)];
  }

  // The chunk buffer a backward may still read besides its gradients: its forward input (held until the
  // backward input part is done). Looked up only for a device that orders buffer uses.
  [[nodiscard]] ConstBytes saved_input(int m, int c) {
    if constexpr (Device::tracks_buffers) return _prog->buffers.forward_input(m, c);
    else return {};
  }

  [[nodiscard]] ConstBytesList forward_input(int m, int c, const StageContext& ctx) {
    const auto b = static_cast<std::size_t>(ctx.batch_chunk);
    if (ctx.is_first_stage) {
      const std::vector<std::size_t>& off = _prog->input_offset[static_cast<std::size_t>(m)];
      return in_layout(m).split(_step->inputs.subspan(off[b], off[b + 1] - off[b]), _sizes, b);
    }
    return in_layout(m).split(_prog->buffers.forward_input(m, c), _sizes, b);
  }
  [[nodiscard]] MutableBytesList forward_output(int m, int c) {
    return out_layout(m).split(_prog->buffers.forward_output(m, c), _sizes, batch_chunk(m, c));
  }
  [[nodiscard]] ConstBytesList backward_output_grad(int m, int c) {
    return out_layout(m).split(_prog->buffers.backward_output_grad(m, c), _sizes, batch_chunk(m, c), true);
  }
  [[nodiscard]] MutableBytesList backward_input_grad(int m, int c) {
    return in_layout(m).split(_prog->buffers.backward_input_grad(m, c), _sizes, batch_chunk(m, c), true);
  }

  // The last stage's loss and returned output, right after its forward.
  void last_stage(S& stage, const StageContext& ctx, const ConstBytesList& out) {
    const auto b = static_cast<std::size_t>(ctx.batch_chunk);
    const std::size_t l0 = _prog->label_offset[b], l1 = _prog->label_offset[b + 1];
    if (l1 > l0) {
      const ConstBytes labels = _step->labels.subspan(l0, l1 - l0);
      if constexpr (StageWithAsyncLoss<S>)
        detail::call_loss_to(stage, ctx, out, labels, _device.loss_slot(*_result, b));
      else _result->losses[b] = detail::call_loss(stage, ctx, out, labels);
    }
    if (_step->return_outputs && !out.packed().empty())
      _device.copy_output(*_result, _prog->output_offset[b], out.packed());
  }

  static ConstBytesList as_const(const MutableBytesList& l) noexcept {
    ConstBytesList c;
    for (MutableBytes b : l) c.push_back(b);
    c.set_packed(l.packed());
    return c;
  }

  void forward(int m, int c, ComputeLane lane = ComputeLane::main) {
    S& stage = *_stages[static_cast<std::size_t>(m)];
    const StageContext ctx = context(m, c, lane);
    const ConstBytesList in_list = forward_input(m, c, ctx);
    const MutableBytesList out_list = forward_output(m, c);
    const ConstBytes in = in_list.packed();
    const MutableBytes out = out_list.packed();
    _module = m;
    _chunk = c;
    _device.use(lane, in);
    _device.use(lane, out);
    if constexpr (StageWithPhases<S>) {
      run_in_order(stage, ctx, Pass::forward, PhaseIo{in, out}, lane);
    } else {
      detail::call_forward(stage, ctx, in_list, out_list);
    }
    if (ctx.is_last_stage) last_stage(stage, ctx, as_const(out_list));
    _device.used(lane, in);
    _device.used(lane, out);
    _prog->buffers.after_forward(m, c);
    send_early(OpKind::send_activation, m, c);
  }

  void backward(int m, int c, bool deferred, const Op& op, ComputeLane lane = ComputeLane::main) {
    S& stage = *_stages[static_cast<std::size_t>(m)];
    const StageContext ctx = context(m, c, lane);
    const ConstBytesList grad_list = backward_output_grad(m, c);
    const MutableBytesList in_grad_list = backward_input_grad(m, c);
    const ConstBytes grad = grad_list.packed();
    const MutableBytes in_grad = in_grad_list.packed();
    const ConstBytes saved = saved_input(m, c);
    _module = m;
    _chunk = c;
    _device.use(lane, grad);
    _device.use(lane, in_grad);
    _device.use(lane, saved);
    if constexpr (StageWithPhases<S>) {
      run_in_order(stage, ctx, Pass::backward, PhaseIo{grad, in_grad}, lane);
      if (deferred) {
        _prog->fifo.push(WeightGroup{m, c}, op);
      } else {
        stage.backward_weight(ctx);
        weight_done(ctx);
      }
    } else if (deferred) {
      detail::call_backward_input(stage, ctx, grad_list, in_grad_list);
      _prog->fifo.push(WeightGroup{m, c}, op);
      ++_schedule_owed;
    } else if (filling()) {
      detail::call_backward_input(stage, ctx, grad_list, in_grad_list);
      owe_weight(WeightGroup{m, c}, op);
    } else if constexpr (StageWithFusedBackward<S>) {
      detail::call_backward(stage, ctx, grad_list, in_grad_list);
      weight_done(ctx);
    } else {
      detail::call_backward_input(stage, ctx, grad_list, in_grad_list);
      stage.backward_weight(ctx);
      weight_done(ctx);
    }
    _device.used(lane, grad);
    _device.used(lane, in_grad);
    _device.used(lane, saved);
    _prog->buffers.after_backward(m, c);
    send_early(OpKind::send_gradient, m, c);
  }

  void forward_backward(const Op& op) {
    if constexpr (StageWithPhases<S>) {
      interleaved_forward_backward(op);
    } else if constexpr (StageWithOverlap<S>) {
      const int m0 = op.module, c0 = op.chunk, m1 = op.module1, c1 = op.chunk1;
      S& fstage = *_stages[static_cast<std::size_t>(m0)];
      S& bstage = *_stages[static_cast<std::size_t>(m1)];
      const StageContext fctx = context(m0, c0);
      const StageContext bctx = context(m1, c1, ComputeLane::second);
      const ConstBytesList in_list = forward_input(m0, c0, fctx);
      const MutableBytesList out_list = forward_output(m0, c0);
      const ConstBytesList grad_list = backward_output_grad(m1, c1);
      const MutableBytesList in_grad_list = backward_input_grad(m1, c1);
      const ConstBytes in = in_list.packed();
      const MutableBytes out = out_list.packed();
      const ConstBytes grad = grad_list.packed();
      const MutableBytes in_grad = in_grad_list.packed();
      const ConstBytes saved = saved_input(m1, c1);
      _module = m0;
      _chunk = c0;
      // The hook runs both halves (on fctx.stream and bctx.stream as it likes); the lanes are forked before
      // and joined after, so whatever it issues is ordered with the rest of the step.
      _device.fork();
      _device.use(ComputeLane::main, in);
      _device.use(ComputeLane::main, out);
      _device.use(ComputeLane::second, grad);
      _device.use(ComputeLane::second, in_grad);
      _device.use(ComputeLane::second, saved);
      detail::call_forward_backward(fstage, fctx, in_list, out_list, bstage, bctx, grad_list, in_grad_list);
      if (fctx.is_last_stage) last_stage(fstage, fctx, as_const(out_list));
      weight_done(bctx);
      _device.join();
      for (const ConstBytes b : {ConstBytes(in), ConstBytes(out), grad, ConstBytes(in_grad), saved})
        _device.used(ComputeLane::main, b);
      _prog->buffers.after_forward(m0, c0);
      _prog->buffers.after_backward(m1, c1);
    } else {
      // The forward on the main lane and the backward on the second, so that a device can run them at once.
      _device.fork();
      forward(op.module, op.chunk, ComputeLane::main);
      finish_pending();  // eager transfers: the backward half's output gradient came with the commit's rest
      backward(op.module1, op.chunk1, false, op, ComputeLane::second);
      _device.join();
    }
  }

  // What the phase cursors call around each phase: keeps where the step is (for a failure's message), tells
  // the device (DeviceWithPhaseHooks) and records StepResult::phase_spans.
  struct PhaseObserver {
    Executor& ex;
    const StageContext& ctx;
    Pass pass;
    ComputeLane lane;
    int index;
    Recorder::clock::time_point t0{}, exchange_t0{};

    [[nodiscard]] ExpertTag tag(int i, const Phase& p) const noexcept { return phase_tag(ctx, pass, i, p); }
    void here(int i, const Phase& p) noexcept {
      ex._module = ctx.module;
      ex._chunk = ctx.chunk;
      ex._phase = &p;
      ex._phase_index = i;
      ex._phase_pass = pass;
    }
    void begin(int i, const Phase& p, bool exchange) {
      here(i, p);
      if constexpr (DeviceWithPhaseHooks<Device>) ex._device.phase_begin(lane, tag(i, p), p.kind);
      t0 = ex._recorder.now();
      if (exchange) exchange_t0 = t0;
    }
    void compute_end(int i, const Phase& p) {
      if constexpr (DeviceWithPhaseHooks<Device>) ex._device.phase_end(lane, tag(i, p), p.kind);
      record(i, p, PhaseSpan::What::compute, t0, ex._recorder.now());
      ex._phase = nullptr;
    }
    void exchange_started(int, const Phase&) noexcept { ex._phase = nullptr; }
    void wait_begin(int i, const Phase& p) {
      here(i, p);
      t0 = ex._recorder.now();
    }
    void wait_end(int i, const Phase& p) {
      if constexpr (DeviceWithPhaseHooks<Device>) ex._device.phase_end(lane, tag(i, p), p.kind);
      const auto t1 = ex._recorder.now();
      record(i, p, PhaseSpan::What::exchange, exchange_t0, t1);
      record(i, p, PhaseSpan::What::wait, t0, t1);
      ex._phase = nullptr;
    }
    void record(int i, const Phase& p, PhaseSpan::What what, Recorder::clock::time_point a,
                Recorder::clock::time_point b) {
      if (!ex._recorder.enabled()) return;
      ex._result->phase_spans.push_back(PhaseSpan{index, ctx.module, ctx.chunk, p.layer, i, pass, what,
                                                  lane == ComputeLane::second, p.name, ex._recorder.seconds(a),
                                                  ex._recorder.seconds(b)});
    }
  };

  // A chunk's phases of one pass, in order (F, B, B..w ops).
  void run_in_order(S& stage, const StageContext& ctx, Pass pass, PhaseIo io, ComputeLane lane) {
    detail::PhaseCursor<S> cursor(stage, ctx, pass, io);
    PhaseObserver obs{*this, cursor.context(), pass, lane, _op_index};
    cursor.run_all(obs, _step->timeout);
  }

  // An FB of a stage with phases: the forward chunk's phases on the main lane and the backward chunk's on the
  // second, ping-pong (runtime/phases.hpp), or one after the other when overlap is off.
  void interleaved_forward_backward(const Op& op) {
    const int m0 = op.module, c0 = op.chunk, m1 = op.module1, c1 = op.chunk1;
    S& fstage = *_stages[static_cast<std::size_t>(m0)];
    S& bstage = *_stages[static_cast<std::size_t>(m1)];
    const StageContext fctx = context(m0, c0);
    const StageContext bctx = context(m1, c1, ComputeLane::second);
    const MutableBytesList out_list = forward_output(m0, c0);
    const ConstBytes in = forward_input(m0, c0, fctx).packed();
    const MutableBytes out = out_list.packed();
    const ConstBytes grad = backward_output_grad(m1, c1).packed();
    const MutableBytes in_grad = backward_input_grad(m1, c1).packed();
    const ConstBytes saved = saved_input(m1, c1);
    _device.fork();
    _device.use(ComputeLane::main, in);
    _device.use(ComputeLane::main, out);
    _device.use(ComputeLane::second, grad);
    _device.use(ComputeLane::second, in_grad);
    _device.use(ComputeLane::second, saved);
    detail::PhaseCursor<S> f(fstage, fctx, Pass::forward, PhaseIo{in, out});
    detail::PhaseCursor<S> b(bstage, bctx, Pass::backward, PhaseIo{grad, in_grad});
    PhaseObserver fo{*this, f.context(), Pass::forward, ComputeLane::main, _op_index};
    PhaseObserver bo{*this, b.context(), Pass::backward, ComputeLane::second, _op_index};
    bool weighted = false;
    // The backward chunk's weight gradient is its last compute: it may hide the forward's last exchange.
    auto weight_when_done = [&] {
      if (weighted || !b.done()) return;
      weighted = true;
      _module = m1;
      _chunk = c1;
      const auto t0 = _recorder.now();
      bstage.backward_weight(bctx);
      if (_recorder.enabled())
        _result->phase_spans.push_back(PhaseSpan{_op_index, m1, c1, -1, -1, Pass::backward, PhaseSpan::What::compute,
                                                 true, "weight", _recorder.seconds(t0),
                                                 _recorder.seconds(_recorder.now())});
    };
    const std::chrono::milliseconds timeout = _step->timeout;
    if (!_step->overlap_phases) {
      f.run_all(fo, timeout);
      b.run_all(bo, timeout);
      weight_when_done();
    } else {
      // The backward chunk first: its first exchange then hides behind the forward's first compute (attention,
      // router: large), and the forward's last exchange behind the backward's tail and weight gradient (large),
      // where the other order would leave the small ones (the combine's backward, the output) to hide them.
      b.advance(bo);
      weight_when_done();
      f.advance(fo);
      while (!f.done() || !b.done()) {
        b.wait(bo, timeout);
        b.advance(bo);
        weight_when_done();
        f.wait(fo, timeout);
        f.advance(fo);
      }
    }
    _module = m0;
    _chunk = c0;
    if (fctx.is_last_stage) last_stage(fstage, fctx, as_const(out_list));
    weight_done(bctx);
    _device.join();
    for (const ConstBytes buf : {ConstBytes(in), ConstBytes(out), grad, ConstBytes(in_grad), saved})
      _device.used(ComputeLane::main, buf);
    _prog->buffers.after_forward(m0, c0);
    _prog->buffers.after_backward(m1, c1);
  }

  // Whether this step fills waits with weight work (never for a stage with phases or its own FB, a device
  // other than the host's, or a communicator whose groups cannot be polled: Pipeline refuses those).
  static constexpr bool can_fill = CommunicatorWithPolling<Comm> && !StageWithPhases<S> && !StageWithOverlap<S> &&
                                   std::is_same_v<Device, HostDevice>;
  [[nodiscard]] bool filling() const noexcept {
    if constexpr (can_fill) return _step->weight_fill_depth > 0;
    return false;
  }

  // Owes the weight part of a backward to the FIFO; beyond the depth (over the schedule's own groups), the
  // oldest group runs now, inside the op that owed it.
  void owe_weight(WeightGroup g, const Op& op) {
    _prog->fifo.push(g, op);
    while (_prog->fifo.size() >
           static_cast<std::size_t>(_step->weight_fill_depth) + static_cast<std::size_t>(_schedule_owed))
      run_owed_weight();
  }

  // Runs the oldest owed weight group; recorded as its own W span when `index` is an op index (a fill of a
  // commit's wait, or the end of the step), else it is part of the running op's span.
  void run_owed_weight(int index = -1) {
    const WeightGroup g = _prog->fifo.pop();
    const int module = _module, chunk = _chunk;
    _module = g.module;
    _chunk = g.chunk;
    _owed_running = true;
    auto run = [&] {
      const StageContext ctx = context(g.module, g.chunk);
      _stages[static_cast<std::size_t>(g.module)]->backward_weight(ctx);
      weight_done(ctx);
    };
    if (index >= 0) {
      const auto t0 = _recorder.now();
      run();
      _recorder.record(Op::W(), index, Span::Lane::compute, t0, _recorder.now());
    } else {
      run();
    }
    _owed_running = false;
    _module = module;
    _chunk = chunk;
  }

  // Runs owed weight groups while `group` is not done (the wait they fill), then leaves the wait to the caller.
  // At the step's last commit, every owed group runs before the wait: whatever is left would otherwise run
  // after the last op, where no wait can hide it and the ranks' ends drift apart.
  template <class Group>
  void fill_wait(const Group& group, int index) {
    if constexpr (can_fill)
      while (!_prog->fifo.empty() && (index == _last_commit || !group.ready())) run_owed_weight(index);
  }

  void weight(const Op& op, int index) {
    if (_schedule_owed > 0) --_schedule_owed;
    if (filling() && _prog->fifo.empty()) return;  // its group already ran, filling a wait
    const WeightGroup g = _prog->fifo.pop(op, index);
    _module = g.module;
    _chunk = g.chunk;
    const StageContext ctx = context(g.module, g.chunk);
    _stages[static_cast<std::size_t>(g.module)]->backward_weight(ctx);
    weight_done(ctx);
  }

  // Counts the weight gradients of ctx's module; right after its last one of the step, tells the stage.
  void weight_done(const StageContext& ctx) {
    const auto m = static_cast<std::size_t>(ctx.module);
    if (++_weights_done[m] != _prog->plan.placements[m].num_chunks) return;
    if constexpr (StageWithGradsReady<S>) _stages[m]->on_grads_ready(ctx);
  }

  // A compute op between the device's op_begin and op_end, recorded on the host clock.
  // A wait inside the op (eager transfers: before an FB's backward half) splits its span in two.
  template <class F>
  void compute(const Op& op, int index, F&& run) {
    _op_index = index;
    const auto t0 = _recorder.now();
    _device.op_begin(op, index);
    _waited_inside = false;
    run();
    _device.op_end(op, index);
    if (_waited_inside) {
      _recorder.record(op, index, Span::Lane::compute, t0, _inside_wait_start);
      _recorder.record(op, index, Span::Lane::compute, _inside_wait_end, _recorder.now());
    } else {
      _recorder.record(op, index, Span::Lane::compute, t0, _recorder.now());
    }
  }

  // ---- Eager transfers ------------------------------------------------------------------------------------
  // Only where the executor owns the waits outright: the host device, a stage whose FB is forward then
  // backward, and a communicator that can launch early and wait for one receive (Pipeline refuses the rest).
  static constexpr bool can_eager = CommunicatorWithEagerLaunch<Comm> && !StageWithPhases<S> && !StageWithOverlap<S> &&
                                    std::is_same_v<Device, HostDevice>;
  [[nodiscard]] bool eager() const noexcept {
    if constexpr (can_eager) return _step->eager_transfers;
    return false;
  }

  // After compute op _op_index made module m's output (activation) or input gradient (gradient) of chunk c:
  // if its group sends it, send it now (the previous group is waited on first: one group at a time).
  void send_early(OpKind send_kind, int m, int c) {
    if constexpr (can_eager) {
      if (!eager() || _op_index < 0) return;
      const std::vector<Op>& ops = _prog->plan.ops;
      for (auto j = static_cast<std::size_t>(_op_index) + 1; j < ops.size() && ops[j].kind != OpKind::commit; ++j) {
        if (ops[j].kind != send_kind || ops[j].module != m || ops[j].chunk != c) continue;
        if (_sent_early[j]) return;
        finish_pending();
        post_transfer(ops[j]);
        _comm.launch();
        _sent_early[j] = 1;
        return;
      }
    }
  }

  // A commit that an FB follows: the index of that FB (else -1), and in `first` the receive its forward half
  // needs, when the group has one.
  [[nodiscard]] int split_for(int commit_index, std::optional<MessageTag>& first) const {
    const std::vector<Op>& ops = _prog->plan.ops;
    const auto next = static_cast<std::size_t>(commit_index) + 1;
    if (next >= ops.size() || ops[next].kind != OpKind::forward_backward) return -1;
    for (auto j = static_cast<std::size_t>(commit_index); j-- > 0 && ops[j].kind != OpKind::commit;)
      if (ops[j].kind == OpKind::recv_activation && ops[j].module == ops[next].module &&
          ops[j].chunk == ops[next].chunk)
        first = MessageTag{ops[j].module, ops[j].chunk, Payload::activation};
    return static_cast<int>(next);
  }

  // Ends the commit group left open by a split (eager transfers): waits for the rest of it, gives back the
  // buffers it sent, and records the wait on the commit.
  void finish_pending() {
    if constexpr (can_eager) {
      if (!_pending) return;
      const auto t0 = _recorder.now();
      _pending->wait(_step->timeout);
      _pending.reset();
      _prog->buffers.after_commit();
      const auto t1 = _recorder.now();
      _recorder.record(_prog->plan.ops[static_cast<std::size_t>(_pending_commit)], _pending_commit, Span::Lane::wait,
                       t0, t1);
      _waited_inside = true;
      _inside_wait_start = t0;
      _inside_wait_end = t1;
    }
  }

  void post(ConstBytes b) {
    if constexpr (Device::tracks_buffers) _device.post(b);
  }

  // A post op (sF rF sB rB): the buffer of its chunk, at the chunk's size, posted to the placement's neighbour.
  void post_transfer(const Op& op) {
    const std::size_t m = static_cast<std::size_t>(op.module);
    switch (op.kind) {
      case OpKind::send_activation: {
        const ConstBytes b = _prog->buffers.send_output(op.module, op.chunk)
                                 .first(out_layout(op.module).bytes(_sizes, batch_chunk(op.module, op.chunk)));
        post(b);
        _comm.post_send(peer(_prog->plan.placements[m].next_rank), MessageTag{op.module, op.chunk, Payload::activation},
                        b);
        break;
      }
      case OpKind::recv_activation: {
        const MutableBytes b = _prog->buffers.recv_input(op.module, op.chunk)
                                   .first(in_layout(op.module).bytes(_sizes, batch_chunk(op.module, op.chunk)));
        post(b);
        _comm.post_recv(peer(_prog->plan.placements[m].prev_rank), MessageTag{op.module, op.chunk, Payload::activation},
                        b);
        break;
      }
      case OpKind::send_gradient: {
        const ConstBytes b = _prog->buffers.send_input_grad(op.module, op.chunk)
                                 .first(in_layout(op.module).bytes(_sizes, batch_chunk(op.module, op.chunk), true));
        post(b);
        _comm.post_send(peer(_prog->plan.placements[m].prev_rank), MessageTag{op.module, op.chunk, Payload::gradient},
                        b);
        break;
      }
      case OpKind::recv_gradient: {
        const MutableBytes b = _prog->buffers.recv_output_grad(op.module, op.chunk)
                                   .first(out_layout(op.module).bytes(_sizes, batch_chunk(op.module, op.chunk), true));
        post(b);
        _comm.post_recv(peer(_prog->plan.placements[m].next_rank), MessageTag{op.module, op.chunk, Payload::gradient},
                        b);
        break;
      }
      default: break;
    }
  }

  void execute(const Op& op, int index) {
    if constexpr (can_eager)
      if (_pending && index != _split_op) finish_pending();  // the split FB ends it before its backward half
    _module = op.module;
    _chunk = op.chunk;
    switch (op.kind) {
      case OpKind::forward: compute(op, index, [&] { forward(op.module, op.chunk); }); break;
      case OpKind::backward:
      case OpKind::backward_input:
        compute(op, index, [&] { backward(op.module, op.chunk, op.kind == OpKind::backward_input, op); });
        break;
      case OpKind::forward_backward: compute(op, index, [&] { forward_backward(op); }); break;
      case OpKind::weight: compute(op, index, [&] { weight(op, index); }); break;
      case OpKind::send_activation:
      case OpKind::send_gradient:
        if (eager() && _sent_early[static_cast<std::size_t>(index)]) break;  // sent as soon as it was computed
        post_transfer(op);
        break;
      case OpKind::recv_activation:
      case OpKind::recv_gradient: post_transfer(op); break;
      case OpKind::commit: {
        auto t0 = _recorder.now();
        _device.op_begin(op, index);
        _device.before_commit();
        auto group = _comm.commit();
        if constexpr (can_eager) {
          std::optional<MessageTag> first;
          const int split = eager() ? split_for(index, first) : -1;
          if (split >= 0) {  // wait for the FB's forward input now, for the rest before its backward half
            if (first) group.wait_receive(*first, _step->timeout);
            _device.after_commit();
            _device.op_end(op, index);
            _recorder.record(op, index, Span::Lane::wait, t0, _recorder.now());
            _pending.emplace(std::move(group));
            _pending_commit = index;
            _split_op = split;
            break;
          }
        }
        if (filling()) {
          fill_wait(group, index);
          _module = op.module;
          _chunk = op.chunk;
          t0 = _recorder.now();  // the wait starts after the fill
        }
        group.wait(_step->timeout);
        _device.after_commit();
        _device.op_end(op, index);
        _prog->buffers.after_commit();
        _recorder.record(op, index, Span::Lane::wait, t0, _recorder.now());
        break;
      }
    }
  }

  // After the last op: the FIFO and the buffers must be empty (else the op list is wrong), then every rank
  // meets, when the communicator can, so that no rank reports success for a step another rank failed.
  void finish() {
    // A module with no chunk this step has final (untouched) gradients too.
    if constexpr (StageWithGradsReady<S>)
      if (_prog->plan.mode == Mode::train)
        for (std::size_t m = 0; m < Modules; ++m)
          if (_prog->plan.placements[m].num_chunks == 0) _stages[m]->on_grads_ready(_ctx[m]);
    _module = -1;
    _chunk = -1;
    if (!_prog->fifo.empty())
      throw Error("step ended with " + std::to_string(_prog->fifo.size()) +
                  " deferred weight-gradient groups never run (a W is missing)");
    _prog->buffers.check_all_free();
    _device.end_step(*_result, _step->timeout);
    if constexpr (CommunicatorWithBarrier<Comm>) _comm.barrier(_step->timeout);
  }

  // Turns whatever was thrown into a StepError naming where the failure started; aborts the communicator
  // when it started here, so that every other rank's waits end too.
  [[noreturn]] void fail(std::size_t index, const char* outside_ops = "end of step") {
    // Runs last, after the communicator was aborted (which may be what lets the device's work finish).
    struct Quiet {
      Device& device;
      ~Quiet() { device.abandon_step(); }
    } quiet{_device};
    if constexpr (can_eager) _pending.reset();  // takes its unfinished ops back (no peer writes into them)
    const std::vector<Op>& ops = _prog->plan.ops;
    const bool in_ops = index < ops.size();
    auto origin_of = [&](std::string what) {
      FailureOrigin o;
      o.rank = _rank;
      o.module = _module;
      o.chunk = _chunk;
      o.op = in_ops ? to_token(ops[index]) : std::string(outside_ops);
      if (_phase != nullptr) o.op += ", " + describe_phase(_phase_pass, _phase_index, *_phase);
      if (_owed_running) o.op += ", running a deferred weight gradient (weight_fill_depth)";
      o.what = std::move(what);
      return o;
    };
    try {
      throw;
    } catch (const CommAborted& e) {
      // The abort may have come through the expert group: pass it on to this rank's other groups.
      if constexpr (StageWithPhases<S>) abort_quietly(e.origin());
      std::throw_with_nested(StepError(e.origin(), _rank));
    } catch (const StepError& e) {
      abort_quietly(e.origin());
      throw;
    } catch (const TimeoutError& e) {
      // A commit has no module or chunk of its own: name the transfer that never came, when known.
      FailureOrigin o = origin_of(e.what());
      if (e.has_transfer()) {
        o.module = e.tag().module;
        o.chunk = e.tag().chunk;
      }
      abort_quietly(o);
      std::throw_with_nested(StepError(std::move(o), _rank));
    } catch (const std::exception& e) {
      FailureOrigin o = origin_of(e.what());
      abort_quietly(o);
      std::throw_with_nested(StepError(std::move(o), _rank));
    } catch (...) {
      FailureOrigin o = origin_of("unknown exception");
      abort_quietly(o);
      std::throw_with_nested(StepError(std::move(o), _rank));
    }
  }

  void abort_quietly(const FailureOrigin& o) noexcept {
    try {
      _comm.abort(o);
    } catch (...) {
      // The step fails either way; an abort that cannot be delivered must not hide the original error.
    }
    if constexpr (StageWithPhases<S>)
      for (S* stage : _stages) {
        try {
          stage->expert_comm().abort(o);
        } catch (...) {
          // As above.
        }
      }
  }

  Comm& _comm;
  std::array<S*, Modules> _stages;
  std::vector<int> _comm_rank_of;
  int _rank;
  Device _device;
  Recorder _recorder;
  StepProgram* _prog = nullptr;
  const ExecutorStep* _step = nullptr;
  StepResult* _result = nullptr;
  std::array<StageContext, Modules> _ctx{};
  std::array<int, Modules> _offset{};
  std::array<int, Modules> _weights_done{};  // weight gradients of each module so far this step
  ChunkSizes _sizes;                         // this step's agreed table (empty: every chunk at its maxima)
  int _module = -1;
  int _chunk = -1;
  int _op_index = -1;             // the compute op running (for phase spans)
  bool _owed_running = false;     // a weight group owed to fill waits is running (for a failure's message)
  int _last_commit = -1;          // index of the op list's last commit (filling drains there)
  int _schedule_owed = 0;         // groups the schedule's B..w ops pushed that its W ops have not popped
  const Phase* _phase = nullptr;  // the phase running or waited on (for a failure's message)
  // Eager transfers: the commit group a split left open, the commit's index and the FB it was split for;
  // which send ops went early; the wait inside the running compute op.
  using CommitGroupOf = decltype(std::declval<Comm&>().commit());
  struct NoGroup {};
  std::conditional_t<can_eager, std::optional<CommitGroupOf>, NoGroup> _pending{};
  int _pending_commit = -1;
  int _split_op = -1;
  std::vector<char> _sent_early;
  bool _waited_inside = false;
  Recorder::clock::time_point _inside_wait_start{}, _inside_wait_end{};
  int _phase_index = 0;
  Pass _phase_pass = Pass::forward;
};

}  // namespace dualpipe
