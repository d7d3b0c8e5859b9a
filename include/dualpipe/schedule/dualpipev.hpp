// dualpipe/schedule/dualpipev.hpp: the DualPipeV schedule ("cut-in-half" DualPipe, 2P stages on P ranks).
#pragma once

#include <string_view>
#include <vector>

#include "dualpipe/core/op.hpp"
#include "dualpipe/schedule/config_check.hpp"
#include "dualpipe/schedule/detail/bidirectional.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/schedule_policy.hpp"

namespace dualpipe {

/// DualPipeV: a 2P-stage model on P ranks; module 0 of rank r is stage r, module 1 is stage 2P-1-r.
/// Every chunk enters at rank 0, runs down module 0, turns on the last rank (locally, without
/// communication) and runs back up module 1; the loss is computed on rank 0. Needs C >= 2P.
struct DualPipeV {
  static constexpr std::string_view name = "dualpipev";
  static constexpr int modules_per_rank = 2;

  /// Throws ConfigError unless P >= 1, C >= 1 and C >= 2P.
  static constexpr void check(int ranks, int chunks) {
    detail::check_ranks_chunks(name, ranks, chunks);
    if (chunks / 2 < ranks)  // not 2 * ranks: that overflows for huge P
      detail::config_fail(name, "chunks must be at least 2 * ranks (got chunks=" + std::to_string(chunks) +
                                    ", ranks=" + std::to_string(ranks) + ")");
  }

  /// Rank `rank`'s op list for one step, in the reference's issue order.
  [[nodiscard]] static constexpr std::vector<Op> ops(int ranks, int chunks, int rank, Mode mode = Mode::train) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    return detail::BidirectionalWalker(true, ranks, chunks, rank, mode).run();
  }

  /// Module 0 of rank r is stage r, module 1 is stage 2P-1-r; on the last rank module 0 hands its
  /// output to module 1 locally.
  [[nodiscard]] static constexpr ModulePlacement placement(int ranks, int chunks, int rank, int module) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    detail::check_module(name, modules_per_rank, module);
    const bool last = rank == ranks - 1;
    ModulePlacement p;
    p.num_stages = 2 * ranks;
    p.num_chunks = chunks;
    if (module == 0) {
      p.stage = rank;
      p.prev_rank = rank > 0 ? rank - 1 : -1;
      p.next_rank = last ? -1 : rank + 1;
      p.local_next_module = last ? 1 : -1;
    } else {
      p.stage = 2 * ranks - 1 - rank;
      p.prev_rank = last ? -1 : rank + 1;
      p.local_prev_module = last ? 0 : -1;
      p.next_rank = rank > 0 ? rank - 1 : -1;
    }
    return p;
  }
};

static_assert(check_schedule_policy<DualPipeV>());

}  // namespace dualpipe
