// dualpipe/schedule/registry.hpp: every schedule by name, for programs that choose one at run time.
// Code that knows its schedule at compile time uses the policy types (DualPipe, DualPipeV, ...) directly.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/trace.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/dualpipev.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/zb1p.hpp"

namespace dualpipe {

/// The schedules this library implements.
enum class ScheduleKind { dualpipe, dualpipev, one_f_one_b, gpipe, zb1p };

/// Every ScheduleKind, in the order programs list them.
inline constexpr std::array all_schedule_kinds{ScheduleKind::dualpipe, ScheduleKind::dualpipev,
                                               ScheduleKind::one_f_one_b, ScheduleKind::gpipe, ScheduleKind::zb1p};

/// Calls `f(Schedule{})` with the policy type of `kind` and returns what it returns.
template <class F>
decltype(auto) visit_schedule(ScheduleKind kind, F&& f) {
  switch (kind) {
    case ScheduleKind::dualpipe: return std::forward<F>(f)(DualPipe{});
    case ScheduleKind::dualpipev: return std::forward<F>(f)(DualPipeV{});
    case ScheduleKind::one_f_one_b: return std::forward<F>(f)(OneFOneB{});
    case ScheduleKind::gpipe: return std::forward<F>(f)(GPipe{});
    case ScheduleKind::zb1p: return std::forward<F>(f)(ZB1P{});
  }
  throw ConfigError("unknown schedule kind " + std::to_string(static_cast<int>(kind)));
}

/// The schedule's name as used in traces and on command lines ("dualpipe", "1f1b", ...).
[[nodiscard]] inline std::string_view schedule_name(ScheduleKind kind) {
  return visit_schedule(kind, [](auto s) { return decltype(s)::name; });
}

/// The names of all schedules, comma-separated, for error messages and help texts.
[[nodiscard]] inline std::string schedule_names() {
  std::string out;
  for (ScheduleKind k : all_schedule_kinds) {
    if (!out.empty()) out += ", ";
    out += schedule_name(k);
  }
  return out;
}

/// Looks a schedule up by name. Throws ConfigError naming the choices if there is none.
[[nodiscard]] inline ScheduleKind parse_schedule_kind(std::string_view name) {
  for (ScheduleKind k : all_schedule_kinds)
    if (schedule_name(k) == name) return k;
  throw ConfigError("unknown schedule '" + std::string(name) + "' (choose from " + schedule_names() + ")");
}

/// Modules each rank holds under `kind` (2 for the bidirectional schedules, 1 for the baselines).
[[nodiscard]] inline int modules_per_rank(ScheduleKind kind) {
  return visit_schedule(kind, [](auto s) { return decltype(s)::modules_per_rank; });
}

/// Throws ConfigError if (ranks, chunks) is not a valid configuration of `kind`.
inline void check_config(ScheduleKind kind, int ranks, int chunks) {
  visit_schedule(kind, [&](auto s) { decltype(s)::check(ranks, chunks); });
}

/// One rank's op list.
[[nodiscard]] inline std::vector<Op> schedule_ops(ScheduleKind kind, int ranks, int chunks, int rank,
                                                  Mode mode = Mode::train) {
  return visit_schedule(kind, [&](auto s) { return decltype(s)::ops(ranks, chunks, rank, mode); });
}

/// Where module `module` of rank `rank` sits.
[[nodiscard]] inline ModulePlacement schedule_placement(ScheduleKind kind, int ranks, int chunks, int rank,
                                                        int module) {
  return visit_schedule(kind, [&](auto s) { return decltype(s)::placement(ranks, chunks, rank, module); });
}

/// All ranks' op lists of schedule policy `Schedule`, as a Trace.
template <class Schedule>
[[nodiscard]] Trace make_trace(int ranks, int chunks, Mode mode = Mode::train) {
  Schedule::check(ranks, chunks);
  Trace t{std::string(Schedule::name), ranks, chunks, mode, {}};
  t.ops.reserve(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) t.ops.push_back(Schedule::ops(ranks, chunks, r, mode));
  return t;
}

/// All ranks' op lists of the schedule named by `kind`, as a Trace.
[[nodiscard]] inline Trace make_trace(ScheduleKind kind, int ranks, int chunks, Mode mode = Mode::train) {
  return visit_schedule(kind, [&](auto s) { return make_trace<decltype(s)>(ranks, chunks, mode); });
}

}  // namespace dualpipe
