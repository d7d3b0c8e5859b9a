// dualpipe/runtime/recorder.hpp: the host-clock timeline of a measured step.
//
// While a step runs, the Recorder appends one compute span per F, B, Bw, FB and W op and one wait span per
// commit (the time the rank blocked on its group) to StepResult::spans, in seconds from the rank's step
// start. Every rank reads the same std::chrono::steady_clock, so merge_timelines() can put the ranks of one
// process (or one host) on a common time axis and hand the renderers and summaries a Timeline
// (analysis/timeline.hpp) just like a simulated one.
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/runtime/step_result.hpp"

namespace dualpipe {

/// Appends measured spans to a StepResult. Allocation-free once the span vector has its capacity.
class Recorder {
public:
  using clock = std::chrono::steady_clock;

  /// Starts a step: the origin is now; spans go to `spans` (cleared) when `enabled`.
  void begin(std::vector<Span>& spans, std::size_t expected_spans, bool enabled) {
    _spans = &spans;
    _enabled = enabled;
    spans.clear();
    if (enabled) spans.reserve(expected_spans);
    _origin = clock::now();
  }

  /// Whether spans are being recorded.
  [[nodiscard]] bool enabled() const noexcept { return _enabled; }

  /// The clock, read only when recording (a default time point otherwise, which is free).
  [[nodiscard]] clock::time_point now() const noexcept { return _enabled ? clock::now() : clock::time_point{}; }

  /// Records [start, end) of op number `index`.
  void record(const Op& op, int index, Span::Lane lane, clock::time_point start, clock::time_point end) {
    if (!_enabled) return;
    _spans->push_back(Span{op, seconds(start), seconds(end), lane, index});
  }

  /// Seconds from the step's origin to `t`.
  [[nodiscard]] double seconds(clock::time_point t) const noexcept {
    return std::chrono::duration<double>(t - _origin).count();
  }

  /// The step's origin.
  [[nodiscard]] clock::time_point origin() const noexcept { return _origin; }

  /// The origin in seconds of the steady clock (StepResult::clock_start).
  [[nodiscard]] double origin_seconds() const noexcept {
    return std::chrono::duration<double>(_origin.time_since_epoch()).count();
  }

private:
  std::vector<Span>* _spans = nullptr;
  bool _enabled = false;
  clock::time_point _origin{};
};

/// Merges every rank's result of one step into one Timeline (time_unit "s"). Rank r's spans land in
/// spans[result.rank], shifted so that time 0 is the earliest rank's step start. Throws ConfigError when
/// the results disagree on the chunk count or two results claim the same rank.
[[nodiscard]] inline Timeline merge_timelines(std::string schedule, int chunks, Mode mode,
                                              const std::vector<StepResult>& per_rank) {
  Timeline t;
  t.schedule = std::move(schedule);
  t.chunks = chunks;
  t.mode = mode;
  t.time_unit = "s";
  int ranks = 0;
  double origin = 0;
  bool first = true;
  for (const StepResult& r : per_rank) {
    if (r.rank < 0) throw ConfigError("merge_timelines: negative rank " + std::to_string(r.rank));
    if (r.chunks != chunks)
      throw ConfigError("merge_timelines: rank " + std::to_string(r.rank) + " ran chunks=" + std::to_string(r.chunks) +
                        ", expected chunks=" + std::to_string(chunks));
    ranks = std::max(ranks, r.rank + 1);
    origin = first ? r.clock_start : std::min(origin, r.clock_start);
    first = false;
  }
  t.ranks = ranks;
  t.spans.assign(static_cast<std::size_t>(ranks), {});
  std::vector<bool> seen(static_cast<std::size_t>(ranks), false);
  for (const StepResult& r : per_rank) {
    const auto idx = static_cast<std::size_t>(r.rank);
    if (seen[idx]) throw ConfigError("merge_timelines: two results for rank " + std::to_string(r.rank));
    seen[idx] = true;
    const double shift = r.clock_start - origin;
    auto& out = t.spans[idx];
    out.reserve(r.spans.size());
    for (Span s : r.spans) {
      s.start += shift;
      s.end += shift;
      out.push_back(s);
    }
    std::stable_sort(out.begin(), out.end(), [](const Span& a, const Span& b) { return a.start < b.start; });
  }
  return t;
}

/// Measured bubble ratio of a merged step: total idle / (ranks x makespan), idle = makespan - compute time.
[[nodiscard]] inline double measured_bubble_ratio(const Timeline& t) noexcept { return t.bubble_ratio(); }

/// Throughput of a merged step: chunks per second of its makespan (0 for an empty timeline).
[[nodiscard]] inline double chunks_per_second(const Timeline& t) noexcept {
  const double m = t.makespan();
  return m > 0 ? t.chunks / m : 0.0;
}

/// Throughput from the ranks' own step times: chunks per second of the slowest rank's step.
[[nodiscard]] inline double chunks_per_second(const std::vector<StepResult>& per_rank) noexcept {
  double slowest = 0;
  int chunks = 0;
  for (const StepResult& r : per_rank) {
    slowest = std::max(slowest, r.step_seconds);
    chunks = r.chunks;
  }
  return slowest > 0 ? chunks / slowest : 0.0;
}

}  // namespace dualpipe
