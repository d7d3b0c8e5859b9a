// dualpipe/schedule/gpipe.hpp: the GPipe baseline (all forwards, then all backwards).
#pragma once

#include <string_view>
#include <vector>

#include "dualpipe/core/op.hpp"
#include "dualpipe/schedule/config_check.hpp"
#include "dualpipe/schedule/detail/linear.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/schedule_policy.hpp"

namespace dualpipe {

/// GPipe: rank r holds stage r of a P-stage model; it runs the forwards of all C chunks, then their
/// backwards (in chunk order, as the per-module counters of the IR require). Bubble (P-1)(F+B) like
/// 1F1B, but all C chunks are in flight at once. Any P >= 1, C >= 1.
struct GPipe {
  static constexpr std::string_view name = "gpipe";
  static constexpr int modules_per_rank = 1;

  /// Throws ConfigError unless P >= 1 and C >= 1.
  static constexpr void check(int ranks, int chunks) { detail::check_ranks_chunks(name, ranks, chunks); }

  /// Rank `rank`'s op list for one step. Every transfer is committed on its own, right where it is
  /// needed (rF, rB) or produced (sF, sB): each group then has exactly one partner group on the
  /// neighbour, in the same order, so the step cannot deadlock.
  [[nodiscard]] static constexpr std::vector<Op> ops(int ranks, int chunks, int rank, Mode mode = Mode::train) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    if (mode == Mode::forward) return detail::linear_forward_only(ranks, chunks, rank);
    std::vector<Op> ops = detail::linear_forward_only(ranks, chunks, rank);
    detail::LinearRecorder rec(ranks, chunks, rank);
    for (int c = 0; c < chunks; ++c) {
      rec.recv_backward(c);
      rec.commit();
      rec.backward(c);
      rec.send_backward(c);
      rec.commit();
    }
    const std::vector<Op> backwards = rec.take();
    ops.insert(ops.end(), backwards.begin(), backwards.end());
    return ops;
  }

  /// Module 0 of rank r is stage r; it receives from r-1 and sends to r+1.
  [[nodiscard]] static constexpr ModulePlacement placement(int ranks, int chunks, int rank, int module) {
    check(ranks, chunks);
    detail::check_rank(name, ranks, rank);
    detail::check_module(name, modules_per_rank, module);
    return detail::linear_placement(ranks, chunks, rank);
  }
};

static_assert(check_schedule_policy<GPipe>());

}  // namespace dualpipe
