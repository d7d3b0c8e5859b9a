// dualpipe/schedule/schedule_policy.hpp: the SchedulePolicy concept, what a schedule type (DualPipe,
// DualPipeV, the baselines) offers the runtime and the analysis: pure functions of (ranks, chunks, rank,
// mode), no state.
//
//   static name -> string_view                      the schedule's name, as in a trace's header.
//   static modules_per_rank -> int                  modules (model stages) each rank holds.
//   static check(ranks, chunks)                     throws ConfigError for a configuration it cannot run.
//   static ops(ranks, chunks, rank, mode) -> vector<Op>
//                                                   rank `rank`'s op list, in issue order.
//   static placement(ranks, chunks, rank, module) -> ModulePlacement
//                                                   where module `module` of rank `rank` sits.
// Each requirement is written once, as a detail:: concept that both SchedulePolicy and
// check_schedule_policy() use.
#pragma once

#include <concepts>
#include <string_view>
#include <vector>

#include "dualpipe/core/op.hpp"
#include "dualpipe/schedule/placement.hpp"

namespace dualpipe {

namespace detail {
template <class S>
concept schedule_has_name = requires {
  { S::name } -> std::convertible_to<std::string_view>;
};
template <class S>
concept schedule_has_modules_per_rank = requires {
  { S::modules_per_rank } -> std::convertible_to<int>;
};
template <class S>
concept schedule_has_check = requires(int ranks, int chunks) {
  S::check(ranks, chunks);
};
template <class S>
concept schedule_has_ops = requires(int ranks, int chunks, int rank, Mode mode) {
  { S::ops(ranks, chunks, rank, mode) } -> std::convertible_to<std::vector<Op>>;
};
template <class S>
concept schedule_has_placement = requires(int ranks, int chunks, int rank, int module) {
  { S::placement(ranks, chunks, rank, module) } -> std::convertible_to<ModulePlacement>;
};
}  // namespace detail

/// A schedule policy type (DualPipe, DualPipeV, the baselines): a name, a module count, a configuration
/// check, per-rank op lists and module placements.
template <class S>
concept SchedulePolicy = detail::schedule_has_name<S> && detail::schedule_has_modules_per_rank<S> &&
    detail::schedule_has_check<S> && detail::schedule_has_ops<S> && detail::schedule_has_placement<S>;

/// Compile-time check with messages in plain words: `static_assert(check_schedule_policy<MySchedule>())`.
template <class S>
consteval bool check_schedule_policy() {
  static_assert(detail::schedule_has_name<S>,
                "Schedule policy needs: static constexpr std::string_view name (the schedule's name)");
  static_assert(detail::schedule_has_modules_per_rank<S>,
                "Schedule policy needs: static constexpr int modules_per_rank (model stages per rank)");
  static_assert(detail::schedule_has_check<S>,
                "Schedule policy needs: static void check(int ranks, int chunks) (throws ConfigError)");
  static_assert(detail::schedule_has_ops<S>,
                "Schedule policy needs: static std::vector<dualpipe::Op> ops(int ranks, int chunks, int rank, "
                "dualpipe::Mode)");
  static_assert(detail::schedule_has_placement<S>,
                "Schedule policy needs: static dualpipe::ModulePlacement placement(int ranks, int chunks, int rank, "
                "int module)");
  return SchedulePolicy<S>;
}

}  // namespace dualpipe
