// dualpipe/schedule/stage_copies.hpp: which (rank, module) pairs hold each model stage under a schedule.
//
// DualPipe holds every stage twice (stage s is module 0 of rank s and module 1 of rank P-1-s); DualPipeV,
// 1F1B, ZB1P and GPipe hold each once. The copies of a stage compute gradients of different chunks of the
// same weights, so their gradients must be summed before an update (runtime/gradient_reduction.hpp), and
// they must stay equal: the copies are listed in one canonical order (by rank, then module) that every
// rank agrees on.
//
//   const StageCopies copies = stage_copies<DualPipe>(4, 8);
//   copies.copies(0)    == {{0, 0}, {3, 1}}
//   copies.stage(3, 1)  == 0
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/registry.hpp"

namespace dualpipe {

/// One copy of a stage: module `module` of pipeline rank `rank`.
struct StageCopy {
  int rank = 0;
  int module = 0;
  friend constexpr bool operator==(const StageCopy&, const StageCopy&) = default;
};

/// Every copy of every stage of one schedule on (ranks, chunks).
struct StageCopies {
  int ranks = 0;                                ///< Pipeline ranks P.
  int modules_per_rank = 1;                     ///< Modules of each rank.
  int stages = 0;                               ///< Model stages.
  std::vector<std::vector<StageCopy>> holders;  ///< [stage]: its copies, by rank then module.
  std::vector<std::vector<int>> stage_of;       ///< [rank][module]: the stage it holds.

  /// The copies of stage `stage`, by rank then module. Throws ConfigError for a stage out of range.
  [[nodiscard]] const std::vector<StageCopy>& copies(int stage) const {
    if (stage < 0 || stage >= stages)
      throw ConfigError("StageCopies: stage must be in [0, " + std::to_string(stages) + ") (got stage " +
                        std::to_string(stage) + ")");
    return holders[static_cast<std::size_t>(stage)];
  }
  /// The stage that module `module` of rank `rank` holds. Throws ConfigError for a rank or module out of range.
  [[nodiscard]] int stage(int rank, int module) const {
    if (rank < 0 || rank >= ranks || module < 0 || module >= modules_per_rank)
      throw ConfigError("StageCopies: (rank " + std::to_string(rank) + ", module " + std::to_string(module) +
                        ") is outside " + std::to_string(ranks) + " ranks x " + std::to_string(modules_per_rank) +
                        " modules");
    return stage_of[static_cast<std::size_t>(rank)][static_cast<std::size_t>(module)];
  }
  /// Copies of each stage when every stage has the same number (2 for DualPipe, 1 otherwise); 0 if they differ.
  [[nodiscard]] int copies_per_stage() const noexcept {
    if (holders.empty()) return 0;
    const std::size_t n = holders.front().size();
    for (const auto& h : holders)
      if (h.size() != n) return 0;
    return static_cast<int>(n);
  }
};

/// The copies of every stage of schedule policy `Schedule` on (ranks, chunks), from its placements.
/// Throws ConfigError for a configuration the schedule refuses, or placements that name a stage outside
/// [0, num_stages) or leave a stage without a copy.
template <class Schedule>
[[nodiscard]] StageCopies stage_copies(int ranks, int chunks) {
  Schedule::check(ranks, chunks);
  StageCopies out;
  out.ranks = ranks;
  out.modules_per_rank = Schedule::modules_per_rank;
  out.stages = Schedule::placement(ranks, chunks, 0, 0).num_stages;
  out.holders.resize(static_cast<std::size_t>(out.stages));
  for (int r = 0; r < ranks; ++r) {
    auto& row = out.stage_of.emplace_back();
    for (int m = 0; m < Schedule::modules_per_rank; ++m) {
      const ModulePlacement p = Schedule::placement(ranks, chunks, r, m);
      if (p.num_stages != out.stages || p.stage < 0 || p.stage >= out.stages)
        throw ConfigError(std::string(Schedule::name) + ": rank " + std::to_string(r) + " module " + std::to_string(m) +
                          " holds stage " + std::to_string(p.stage) + " of " + std::to_string(p.num_stages) +
                          " (expected one of " + std::to_string(out.stages) + ")");
      out.holders[static_cast<std::size_t>(p.stage)].push_back({r, m});  // r, then m ascending: canonical
      row.push_back(p.stage);
    }
  }
  for (int s = 0; s < out.stages; ++s)
    if (out.holders[static_cast<std::size_t>(s)].empty())
      throw ConfigError(std::string(Schedule::name) + ": stage " + std::to_string(s) + " is held by no rank");
  return out;
}

/// The same for a schedule chosen at run time.
[[nodiscard]] inline StageCopies stage_copies(ScheduleKind kind, int ranks, int chunks) {
  return visit_schedule(kind, [&](auto s) { return stage_copies<decltype(s)>(ranks, chunks); });
}

}  // namespace dualpipe
