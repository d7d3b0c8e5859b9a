// dualpipe/core/timeline.hpp: what ran where and when, on every rank of one step. The simulator
// produces it from costs; the runtime's recorder produces it from clocks. Summaries and pictures
// (text grid, SVG, Chrome trace) are made from a Timeline, so simulated and measured steps look alike.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "dualpipe/core/op.hpp"

namespace dualpipe {

/// One interval on one rank. Compute spans are F, B, Bw, FB and W ops; transfer spans are posts (sF,
/// rF, sB, rB) from their launch to their completion; wait spans are the time a commit blocked (or, in
/// the simulator's async model, the time a compute op waited for the data it reads).
struct Span {
  enum class Lane : unsigned char { compute, transfer, wait };
  Op op;                      ///< The op (wait span: the commit that blocked, or the compute op that waited for data).
  double start = 0;           ///< Seconds, or cost units for a simulated step, from the step's start.
  double end = 0;             ///< end >= start.
  Lane lane = Lane::compute;  ///< Which kind of interval this is.
  int index = -1;             ///< Index of the op in the rank's op list.

  [[nodiscard]] double duration() const noexcept { return end - start; }
};

/// Every rank's spans of one step.
struct Timeline {
  std::string schedule;                  ///< Schedule name, e.g. "dualpipe".
  int ranks = 0;                         ///< P.
  int chunks = 0;                        ///< C.
  Mode mode = Mode::train;               ///< train or forward.
  std::string time_unit = "units";       ///< "units" for simulated costs, "s" for measured time.
  std::vector<std::vector<Span>> spans;  ///< spans[r]: rank r's spans, sorted by start within each lane.

  /// Time from the step's start to the end of its last span.
  [[nodiscard]] double makespan() const noexcept {
    double m = 0;
    for (const auto& rank : spans)
      for (const Span& s : rank) m = std::max(m, s.end);
    return m;
  }

  /// Time rank r spent computing (sum of its compute spans).
  [[nodiscard]] double busy(int r) const noexcept {
    double b = 0;
    for (const Span& s : spans[static_cast<std::size_t>(r)])
      if (s.lane == Span::Lane::compute) b += s.duration();
    return b;
  }

  /// Idle time of rank r: makespan minus its busy time (docs/schedules.md).
  [[nodiscard]] double idle(int r) const noexcept { return makespan() - busy(r); }

  /// Total idle over ranks / (ranks x makespan); 0 for an empty timeline.
  [[nodiscard]] double bubble_ratio() const noexcept {
    const double m = makespan();
    if (m <= 0 || ranks <= 0) return 0;
    double total = 0;
    for (int r = 0; r < ranks; ++r) total += idle(r);
    return total / (static_cast<double>(ranks) * m);
  }
};

}  // namespace dualpipe
