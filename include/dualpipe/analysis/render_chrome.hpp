// dualpipe/analysis/render_chrome.hpp: a Timeline as Chrome trace event JSON, for chrome://tracing or
// Perfetto (ui.perfetto.dev): one process per rank, one thread per lane (compute, transfer, wait).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "dualpipe/analysis/detail/format.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/core/trace.hpp"

namespace dualpipe {

/// Microseconds per unit of a Timeline's time_unit in Chrome traces: "s" -> 1e6, "ms" -> 1e3,
/// "us" -> 1, "ns" -> 1e-3; "units" (simulated cost units) and anything else -> 1000, so that one cost
/// unit reads as one millisecond.
[[nodiscard]] inline double chrome_us_per_unit(std::string_view time_unit) noexcept {
  if (time_unit == "s") return 1e6;
  if (time_unit == "ms") return 1e3;
  if (time_unit == "us") return 1;
  if (time_unit == "ns") return 1e-3;
  return 1e3;
}

/// Renders `tl` as `{"traceEvents":[...],"otherData":{...}}`. Each rank is a process (pid = rank, named
/// "rank R") with threads tid 0 "compute", 1 "transfer", 2 "wait". Every span is one complete ("X")
/// event with ts/dur in microseconds (see chrome_us_per_unit), name = the op's token (a wait span's
/// is "|"), cat = the lane, and args: module/chunk (and module1/chunk1 for FB) where the op has them,
/// plus the op's index in the rank's list.
[[nodiscard]] inline std::string render_chrome_trace(const Timeline& tl) {
  using detail::json_escape;
  const double us = chrome_us_per_unit(tl.time_unit);
  auto number = [](double v) { return detail::format_number(v, 3); };
  static constexpr std::string_view lane_names[] = {"compute", "transfer", "wait"};

  std::string out = "{\"traceEvents\":[\n";
  bool first = true;
  auto event = [&](const std::string& body) {
    if (!first) out += ",\n";
    first = false;
    out += body;
  };
  for (std::size_t r = 0; r < tl.spans.size(); ++r) {
    const std::string pid = std::to_string(r);
    event("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":" + pid + ",\"tid\":0,\"args\":{\"name\":\"rank " + pid +
          "\"}}");
    event("{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":" + pid +
          ",\"tid\":0,\"args\":{\"sort_index\":" + pid + "}}");
    for (int lane = 0; lane < 3; ++lane)
      event("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":" + pid + ",\"tid\":" + std::to_string(lane) +
            ",\"args\":{\"name\":\"" + std::string(lane_names[lane]) + "\"}}");
    for (const Span& s : tl.spans[r]) {
      const int lane = static_cast<int>(s.lane);
      std::string args = "{";
      if (s.op.module >= 0) args += "\"module\":" + std::to_string(s.op.module) + ",";
      if (s.op.chunk >= 0) args += "\"chunk\":" + std::to_string(s.op.chunk) + ",";
      if (s.op.kind == OpKind::forward_backward)
        args += "\"module1\":" + std::to_string(s.op.module1) + ",\"chunk1\":" + std::to_string(s.op.chunk1) + ",";
      args += "\"index\":" + std::to_string(s.index) + "}";
      event("{\"name\":\"" + json_escape(to_token(s.op)) + "\",\"cat\":\"" + std::string(lane_names[lane]) +
            "\",\"ph\":\"X\",\"pid\":" + pid + ",\"tid\":" + std::to_string(lane) + ",\"ts\":" + number(s.start * us) +
            ",\"dur\":" + number(s.duration() * us) + ",\"args\":" + args + "}");
    }
  }
  out += "\n],\"otherData\":{\"schedule\":\"" + json_escape(tl.schedule) + "\",\"ranks\":" + std::to_string(tl.ranks) +
         ",\"chunks\":" + std::to_string(tl.chunks) + ",\"mode\":\"" + std::string(to_string(tl.mode)) +
         "\",\"time_unit\":\"" + json_escape(tl.time_unit) + "\",\"makespan\":" + number(tl.makespan()) +
         ",\"bubble_ratio\":" + detail::format_number(tl.bubble_ratio(), 6) + "}}\n";
  return out;
}

}  // namespace dualpipe
