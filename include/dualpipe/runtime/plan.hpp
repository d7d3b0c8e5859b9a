// dualpipe/runtime/plan.hpp: one rank's op list and placements for one (ranks, chunks, mode), checked
// once and kept, so that a step only walks it.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/trace.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/schedule_policy.hpp"

namespace dualpipe {

/// Everything about one rank's step that depends only on (schedule, ranks, chunks, rank, mode).
struct RankPlan {
  std::string_view schedule;                ///< Schedule name.
  int ranks = 0;                            ///< P.
  int chunks = 0;                           ///< C.
  int rank = 0;                             ///< Pipeline rank.
  Mode mode = Mode::train;                  ///< train or forward.
  std::vector<Op> ops;                      ///< The rank's op list, in issue order.
  std::vector<ModulePlacement> placements;  ///< placements[m]: module m.
  std::size_t compute_ops = 0;              ///< F, B, Bw, FB and W tokens.
  std::size_t post_ops = 0;                 ///< sF, rF, sB and rB tokens.
  std::size_t commit_ops = 0;               ///< `|` tokens.
  std::vector<int> output_chunks;           ///< Batch chunks whose last stage is on this rank, ascending.
  std::vector<int> output_index;            ///< Batch chunk -> position in output_chunks, or -1.

  // Sizing (the executor's dry run fills these: size_rank_plan in executor.hpp).
  std::vector<std::array<std::size_t, 4>> capacity;  ///< capacity[m][BufferKind]: pool slots.
  std::size_t weight_fifo_capacity = 0;              ///< Deepest the weight FIFO gets.
  std::size_t pending_capacity = 0;                  ///< Most sends before one commit.
  std::size_t peak_buffers = 0;                      ///< Most chunk buffers lent at once.

  /// Ops of every kind the trace grammar counts (compute, post and commit tokens).
  [[nodiscard]] std::size_t total_ops() const noexcept { return ops.size(); }
};

namespace detail {
[[noreturn]] inline void plan_fail(const RankPlan& p, std::size_t i, const std::string& why) {
  throw ConfigError(std::string(p.schedule) + " ranks=" + std::to_string(p.ranks) +
                    " chunks=" + std::to_string(p.chunks) + " rank " + std::to_string(p.rank) + ": op " +
                    std::to_string(i) + " (" + to_token(p.ops[i]) + ") " + why);
}
}  // namespace detail

/// Builds and checks rank `rank`'s plan. Throws ConfigError for a bad configuration (the schedule's own
/// check) and for an op list the runtime cannot run (a post with no peer, a chunk out of range, ...).
template <SchedulePolicy Schedule>
[[nodiscard]] RankPlan make_rank_plan(int ranks, int chunks, int rank, Mode mode) {
  constexpr int modules = Schedule::modules_per_rank;
  Schedule::check(ranks, chunks);
  RankPlan p;
  p.schedule = Schedule::name;
  p.ranks = ranks;
  p.chunks = chunks;
  p.rank = rank;
  p.mode = mode;
  p.ops = Schedule::ops(ranks, chunks, rank, mode);
  for (int m = 0; m < modules; ++m) p.placements.push_back(Schedule::placement(ranks, chunks, rank, m));

  // Hand-offs between modules of this rank must pair chunk for chunk.
  for (int m = 0; m < modules; ++m) {
    const ModulePlacement& pl = p.placements[static_cast<std::size_t>(m)];
    for (int other : {pl.local_prev_module, pl.local_next_module}) {
      if (other < 0) continue;
      if (other >= modules)
        throw ConfigError(std::string(p.schedule) + ": module " + std::to_string(m) + " hands off to module " +
                          std::to_string(other) + " but a rank has " + std::to_string(modules));
      const ModulePlacement& o = p.placements[static_cast<std::size_t>(other)];
      if (o.num_chunks != pl.num_chunks || o.chunk_offset != pl.chunk_offset)
        throw ConfigError(std::string(p.schedule) + ": modules " + std::to_string(m) + " and " + std::to_string(other) +
                          " hand off locally but do not take the same batch chunks");
    }
  }

  auto check_mc = [&](std::size_t i, int m, int c) {
    if (m < 0 || m >= modules) detail::plan_fail(p, i, "names a module outside [0, " + std::to_string(modules) + ")");
    const int n = p.placements[static_cast<std::size_t>(m)].num_chunks;
    if (c < 0 || c >= n) detail::plan_fail(p, i, "names a chunk outside [0, " + std::to_string(n) + ")");
  };
  for (std::size_t i = 0; i < p.ops.size(); ++i) {
    const Op& op = p.ops[i];
    if (is_compute(op.kind)) ++p.compute_ops;
    else if (is_post(op.kind)) ++p.post_ops;
    else ++p.commit_ops;
    if (op.kind == OpKind::weight || op.kind == OpKind::commit) continue;
    check_mc(i, op.module, op.chunk);
    if (op.kind == OpKind::forward_backward) check_mc(i, op.module1, op.chunk1);
    if (mode == Mode::forward && op.has_backward()) detail::plan_fail(p, i, "is a backward in a forward-only step");
    const ModulePlacement& pl = p.placements[static_cast<std::size_t>(op.module)];
    switch (op.kind) {
      case OpKind::send_activation:
        if (pl.next_rank < 0) detail::plan_fail(p, i, "sends activations but the module has no next rank");
        break;
      case OpKind::recv_activation:
        if (pl.prev_rank < 0) detail::plan_fail(p, i, "receives activations but the module has no previous rank");
        break;
      case OpKind::send_gradient:
        if (pl.prev_rank < 0) detail::plan_fail(p, i, "sends gradients but the module has no previous rank");
        break;
      case OpKind::recv_gradient:
        if (pl.next_rank < 0) detail::plan_fail(p, i, "receives gradients but the module has no next rank");
        break;
      default: break;
    }
    for (int peer : {pl.prev_rank, pl.next_rank})
      if (peer >= ranks) detail::plan_fail(p, i, "has a peer rank " + std::to_string(peer) + " outside [0, ranks)");
  }

  // Which batch chunks end on this rank, in batch order: where return_outputs puts them.
  p.output_index.assign(static_cast<std::size_t>(chunks), -1);
  std::vector<bool> mine(static_cast<std::size_t>(chunks), false);
  for (const ModulePlacement& pl : p.placements) {
    if (pl.chunk_offset < 0 || pl.num_chunks < 0 || pl.chunk_offset + pl.num_chunks > chunks)
      throw ConfigError(std::string(p.schedule) + ": a module takes batch chunks [" + std::to_string(pl.chunk_offset) +
                        ", " + std::to_string(pl.chunk_offset + pl.num_chunks) + ") outside [0, " +
                        std::to_string(chunks) + ")");
  }
  for (const ModulePlacement& pl : p.placements)
    if (pl.is_last_stage())
      for (int c = 0; c < pl.num_chunks; ++c) mine[static_cast<std::size_t>(pl.chunk_offset + c)] = true;
  for (int b = 0; b < chunks; ++b)
    if (mine[static_cast<std::size_t>(b)]) {
      p.output_index[static_cast<std::size_t>(b)] = static_cast<int>(p.output_chunks.size());
      p.output_chunks.push_back(b);
    }
  return p;
}

}  // namespace dualpipe
