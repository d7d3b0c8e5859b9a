// dualpipe/schedule/one_f_one_b.hpp: the 1F1B baseline (PipeDream-Flush / Megatron non-interleaved).
#pragma once

#include <string_view>
#include <vector>

#include "dualpipe/core/op.hpp"
#include "dualpipe/schedule/config_check.hpp"
#include "dualpipe/schedule/detail/linear.hpp"
#include "dualpipe/schedule/detail/one_f_one_b_walk.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/schedule_policy.hpp"

namespace dualpipe {

/// 1F1B: rank r holds stage r of a P-stage model (one module). After min(P-1-r, C) warm-up forwards
/// every rank alternates one forward and one full backward, so at most P-r chunks are in flight on
/// rank r. Bubble (P-1)(F+B) on every rank when C >= P. Any P >= 1, C >= 1.
struct OneFOneB {
  static constexpr std::string_view name = "1f1b";
  static constexpr int modules_per_rank = 1;

  /// Throws ConfigError unless P >= 1 and C >= 1.
  static constexpr void check(int ranks, int chunks) { detail::check_ranks_chunks(name, ranks, chunks); }

  /// Rank `rank`'s op list for one step (transfer grouping: see detail/one_f_one_b_walk.hpp).
  [[nodiscard]] static constexpr std::vector<Op> ops(int ranks, int chunks, int rank, Mode mode = Mode::train) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    if (mode == Mode::forward) return detail::linear_forward_only(ranks, chunks, rank);
    return detail::one_f_one_b_walk(ranks, chunks, rank, false);
  }

  /// Module 0 of rank r is stage r; it receives from r-1 and sends to r+1.
  [[nodiscard]] static constexpr ModulePlacement placement(int ranks, int chunks, int rank, int module) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    detail::check_module(name, modules_per_rank, module);
    return detail::linear_placement(ranks, chunks, rank);
  }
};

static_assert(check_schedule_policy<OneFOneB>());

}  // namespace dualpipe
