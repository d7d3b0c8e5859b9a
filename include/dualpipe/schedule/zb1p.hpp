// dualpipe/schedule/zb1p.hpp: the ZB1P baseline (ZB-H1 of "Zero Bubble Pipeline Parallelism", Qi et al. 2023).
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

/// ZB1P: 1F1B with every backward split into its input part `B0.cw` (sent on at once) and a weight
/// part `W` deferred to a FIFO; rank r lets its weight groups lag r chunks behind and runs the rest in
/// the cool-down bubble. Same forward/backward order, hence the same activation memory, as 1F1B;
/// worst-rank bubble (P-1)(F+B-2W). Any P >= 1, C >= 1.
struct ZB1P {
  static constexpr std::string_view name = "zb1p";
  static constexpr int modules_per_rank = 1;

  /// Throws ConfigError unless P >= 1 and C >= 1.
  static constexpr void check(int ranks, int chunks) { detail::check_ranks_chunks(name, ranks, chunks); }

  /// Rank `rank`'s op list for one step (where the W's go: see detail/one_f_one_b_walk.hpp).
  [[nodiscard]] static constexpr std::vector<Op> ops(int ranks, int chunks, int rank, Mode mode = Mode::train) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    if (mode == Mode::forward) return detail::linear_forward_only(ranks, chunks, rank);
    return detail::one_f_one_b_walk(ranks, chunks, rank, true);
  }

  /// Module 0 of rank r is stage r; it receives from r-1 and sends to r+1.
  [[nodiscard]] static constexpr ModulePlacement placement(int ranks, int chunks, int rank, int module) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    detail::check_module(name, modules_per_rank, module);
    return detail::linear_placement(ranks, chunks, rank);
  }
};

static_assert(check_schedule_policy<ZB1P>());

}  // namespace dualpipe
