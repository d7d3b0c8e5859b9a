// dualpipe/schedule/dualpipe.hpp: the DualPipe schedule (P even ranks, two directions).
#pragma once

#include <string_view>
#include <vector>

#include "dualpipe/core/op.hpp"
#include "dualpipe/schedule/config_check.hpp"
#include "dualpipe/schedule/detail/bidirectional.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/schedule_policy.hpp"

namespace dualpipe {

/// DualPipe: every rank holds stage r (module 0, direction 0) and stage P-1-r (module 1, direction 1) of a
/// P-stage model. The first half of the batch (C/2 chunks) enters at rank 0, the second half at rank P-1.
/// Needs P even, C even and C >= 2P.
struct DualPipe {
  static constexpr std::string_view name = "dualpipe";
  static constexpr int modules_per_rank = 2;

  /// Throws ConfigError unless P >= 1, C >= 1, P even, C even and C >= 2P.
  static constexpr void check(int ranks, int chunks) {
    detail::check_ranks_chunks(name, ranks, chunks);
    if (ranks % 2 != 0) detail::config_fail(name, "ranks must be even (got ranks=" + std::to_string(ranks) + ")");
    if (chunks % 2 != 0) detail::config_fail(name, "chunks must be even (got chunks=" + std::to_string(chunks) + ")");
    if (chunks / 2 < ranks)  // not 2 * ranks: that overflows for huge P
      detail::config_fail(name, "chunks must be at least 2 * ranks (got chunks=" + std::to_string(chunks) +
                                    ", ranks=" + std::to_string(ranks) + ")");
  }

  /// Rank `rank`'s op list for one step, in the reference's issue order.
  [[nodiscard]] static constexpr std::vector<Op> ops(int ranks, int chunks, int rank, Mode mode = Mode::train) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    return detail::BidirectionalWalker(false, ranks, chunks, rank, mode).run();
  }

  /// Where module `module` of rank `rank` sits: module 0 is stage r of direction 0 (chunks 0..C/2-1),
  /// module 1 is stage P-1-r of direction 1 (batch chunks C/2..C-1).
  [[nodiscard]] static constexpr ModulePlacement placement(int ranks, int chunks, int rank, int module) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    detail::check_module(name, modules_per_rank, module);
    ModulePlacement p;
    p.num_stages = ranks;
    p.num_chunks = chunks / 2;
    if (module == 0) {
      p.stage = rank;
      p.prev_rank = rank > 0 ? rank - 1 : -1;
      p.next_rank = rank < ranks - 1 ? rank + 1 : -1;
    } else {
      p.stage = ranks - 1 - rank;
      p.chunk_offset = chunks / 2;
      p.prev_rank = rank < ranks - 1 ? rank + 1 : -1;
      p.next_rank = rank > 0 ? rank - 1 : -1;
    }
    return p;
  }
};

static_assert(check_schedule_policy<DualPipe>());

}  // namespace dualpipe
