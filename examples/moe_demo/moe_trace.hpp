// moe_demo/moe_trace.hpp: the checked step of every grid rank drawn with its phases (--trace-dir): an SVG
// and a Chrome trace (chrome://tracing, Perfetto). Per grid rank four rows: the ops (F, B, W, FB), the
// compute phases of the op's first chunk (an FB's forward), those of an FB's second chunk (its backward),
// and the all-to-alls: each exchange from its start to the end of its wait, the wait (not hidden) darker.
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "dualpipe/core/trace.hpp"
#include "dualpipe/runtime/step_result.hpp"

namespace dualpipe::moe_demo {

namespace detail {
struct Box {
  int row;  // grid rank * 4 + lane
  double start, end;
  std::string label, color;
};

inline std::vector<Box> boxes(const std::vector<StepResult>& ranks, double& origin, double& end) {
  origin = 1e300;
  end = 0;
  for (const StepResult& r : ranks) origin = std::min(origin, r.clock_start);
  std::vector<Box> out;
  for (std::size_t g = 0; g < ranks.size(); ++g) {
    const StepResult& r = ranks[g];
    const double shift = r.clock_start - origin;
    const int base = static_cast<int>(g) * 4;
    for (const Span& s : r.spans) {
      if (s.lane != Span::Lane::compute) continue;
      const char* color = s.op.kind == OpKind::forward_backward ? "#7b61c4"
                          : s.op.kind == OpKind::forward        ? "#4c8bd6"
                          : s.op.kind == OpKind::weight         ? "#8fbf6a"
                                                                : "#e08a3c";
      out.push_back({base, s.start + shift, s.end + shift, to_token(s.op), color});
    }
    for (const PhaseSpan& p : r.phase_spans) {
      const std::string name = std::string(p.name) + " " + std::to_string(p.module) + "." + std::to_string(p.chunk) +
                               (p.layer >= 0 ? " L" + std::to_string(p.layer) : std::string());
      if (p.what == PhaseSpan::What::compute)
        out.push_back({base + (p.second_lane ? 2 : 1), p.start + shift, p.end + shift, name,
                       p.pass == Pass::forward ? "#6fa8e8" : "#f0a868"});
      else
        out.push_back({base + 3, p.start + shift, p.end + shift,
                       name + (p.what == PhaseSpan::What::wait ? " (wait)" : ""),
                       p.what == PhaseSpan::What::wait ? "#a03030" : (p.second_lane ? "#e8b4b4" : "#b4d4b4")});
    }
  }
  for (const Box& b : out) end = std::max(end, b.end);
  return out;
}

inline std::string escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') o += '\\';
    if (ch == '<') o += "&lt;";
    else if (ch == '>') o += "&gt;";
    else if (ch == '&') o += "&amp;";
    else o += ch;
  }
  return o;
}
}  // namespace detail

/// The SVG drawing of the checked step.
[[nodiscard]] inline std::string render_moe_svg(const std::vector<StepResult>& ranks, const std::string& title) {
  double origin = 0, end = 0;
  const std::vector<detail::Box> boxes = detail::boxes(ranks, origin, end);
  const double width = 1400, left = 150, row_h = 16;
  const int rows = static_cast<int>(ranks.size()) * 4;
  const double height = 40 + rows * (row_h + 2) + 20;
  const double scale = end > 0 ? (width - left - 10) / end : 1;
  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(int(width)) + "\" height=\"" +
                    std::to_string(int(height)) + "\" font-family=\"sans-serif\" font-size=\"10\">\n";
  svg += "<text x=\"4\" y=\"14\" font-size=\"12\">" + detail::escape(title) + " (" + std::to_string(end * 1e3) +
         " ms; rows per grid rank: ops, first chunk's compute phases, an FB's second chunk's, all-to-alls with "
         "their waits dark)</text>\n";
  const char* lanes[] = {"ops", "chunk A compute", "chunk B compute", "all-to-all"};
  for (int row = 0; row < rows; ++row) {
    const double y = 30 + row * (row_h + 2);
    svg += "<text x=\"4\" y=\"" + std::to_string(y + 12) + "\">rank " + std::to_string(row / 4) + " " + lanes[row % 4] +
           "</text>\n";
  }
  for (const detail::Box& b : boxes) {
    const double y = 30 + b.row * (row_h + 2), x = left + b.start * scale, w = std::max(0.5, (b.end - b.start) * scale);
    svg += "<rect x=\"" + std::to_string(x) + "\" y=\"" + std::to_string(y) + "\" width=\"" + std::to_string(w) +
           "\" height=\"" + std::to_string(row_h) + "\" fill=\"" + b.color + "\"><title>" + detail::escape(b.label) +
           "</title></rect>\n";
  }
  return svg + "</svg>\n";
}

/// The Chrome trace of the checked step (one process per grid rank, one thread per row).
[[nodiscard]] inline std::string render_moe_chrome(const std::vector<StepResult>& ranks) {
  double origin = 0, end = 0;
  const std::vector<detail::Box> boxes = detail::boxes(ranks, origin, end);
  const char* lanes[] = {"ops", "chunk A compute", "chunk B compute", "all-to-all"};
  std::string json = "{\"traceEvents\":[\n";
  bool first = true;
  for (std::size_t g = 0; g < ranks.size(); ++g)
    for (int lane = 0; lane < 4; ++lane) {
      json += std::string(first ? "" : ",\n") + "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":" + std::to_string(g) +
              ",\"tid\":" + std::to_string(lane) + ",\"args\":{\"name\":\"" + lanes[lane] + "\"}}";
      first = false;
    }
  for (const detail::Box& b : boxes) {
    char buf[96];
    std::snprintf(buf, sizeof buf, ",\"ts\":%.3f,\"dur\":%.3f", b.start * 1e6, (b.end - b.start) * 1e6);
    json += ",\n{\"ph\":\"X\",\"name\":\"" + detail::escape(b.label) + "\",\"pid\":" + std::to_string(b.row / 4) +
            ",\"tid\":" + std::to_string(b.row % 4) + buf + "}";
  }
  return json + "\n]}\n";
}

}  // namespace dualpipe::moe_demo
