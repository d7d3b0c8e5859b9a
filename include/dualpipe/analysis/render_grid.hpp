// dualpipe/analysis/render_grid.hpp: a Timeline as a text grid for a terminal: time runs down, one
// fixed-width column per rank, each cell showing the compute op running then.
//
//   # 1f1b ranks=2 chunks=3 mode=train makespan=12 bubble=25% cell=1 units
//   time | rank 0 | rank 1
//      0 | F0.0   | .
//      1 | F0.1   | F0.0
//      2 | .      | B0.0
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "dualpipe/analysis/detail/format.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/core/trace.hpp"

namespace dualpipe {

/// Rows an automatically chosen cell size may produce at most.
inline constexpr std::size_t grid_max_auto_rows = 400;
/// Rows any grid may have; a smaller `cell` is refused with ConfigError.
inline constexpr std::size_t grid_max_rows = 1'000'000;

/// Renders `tl` as a text grid. Row i covers the time cell [i*cell, (i+1)*cell); a rank's column shows
/// the token of the compute span that covers the largest part of that cell (the earlier one on a tie)
/// if it covers at least half of it, else '.' (idle, or mostly idle). Transfer and wait spans are not
/// drawn. `cell <= 0` chooses the cell: the shortest compute span, so that every compute op fills at
/// least half of some row, widened if needed to keep at most grid_max_auto_rows rows.
/// Throws ConfigError if an explicit `cell` would need more than grid_max_rows rows.
[[nodiscard]] inline std::string render_grid(const Timeline& tl, double cell = 0) {
  const double makespan = tl.makespan();
  const std::size_t nranks = tl.spans.size();

  // Shortest compute span, for the automatic cell.
  if (!(cell > 0)) {
    double shortest = 0;
    for (const auto& rank : tl.spans)
      for (const Span& s : rank)
        if (s.lane == Span::Lane::compute && s.duration() > 0 && (shortest == 0 || s.duration() < shortest))
          shortest = s.duration();
    cell = shortest > 0 ? shortest : (makespan > 0 ? makespan : 1);
    if (makespan / cell > static_cast<double>(grid_max_auto_rows))
      cell = makespan / static_cast<double>(grid_max_auto_rows);
  }
  const double row_estimate = std::ceil(makespan / cell - 1e-9);
  if (row_estimate > static_cast<double>(grid_max_rows))
    throw ConfigError("render_grid: cell too small: makespan=" + detail::format_number(makespan, 6) + " / cell=" +
                      detail::format_number(cell, 9) + " needs more than " + std::to_string(grid_max_rows) + " rows");
  const std::size_t rows = row_estimate > 0 ? static_cast<std::size_t>(row_estimate) : 0;

  // For each rank and row: the best-covering compute span (index into spans[r]) and its overlap.
  std::vector<std::vector<int>> best(nranks, std::vector<int>(rows, -1));
  std::vector<std::vector<double>> cover(nranks, std::vector<double>(rows, 0.0));
  std::size_t width = 1;  // widest token, for the column width
  for (std::size_t r = 0; r < nranks; ++r) {
    const auto& spans = tl.spans[r];
    for (std::size_t i = 0; i < spans.size(); ++i) {
      const Span& s = spans[i];
      if (s.lane != Span::Lane::compute || !(s.end > s.start)) continue;
      width = std::max(width, to_token(s.op).size());
      auto first = static_cast<std::size_t>(std::max(0.0, std::floor(s.start / cell)));
      for (std::size_t row = first; row < rows; ++row) {
        const double lo = static_cast<double>(row) * cell, hi = lo + cell;
        if (lo >= s.end) break;
        const double overlap = std::min(hi, s.end) - std::max(lo, s.start);
        if (overlap <= 0) continue;
        const bool earlier = best[r][row] < 0 || s.start < spans[static_cast<std::size_t>(best[r][row])].start;
        if (overlap > cover[r][row] + 1e-12 || (overlap > cover[r][row] - 1e-12 && earlier)) {
          cover[r][row] = overlap;
          best[r][row] = static_cast<int>(i);
        }
      }
    }
  }

  // Column widths: every column as wide as the widest token or "rank N" label.
  std::vector<std::string> times(rows);
  std::size_t time_width = 4;  // "time"
  for (std::size_t row = 0; row < rows; ++row) {
    times[row] = detail::format_number(static_cast<double>(row) * cell, 3);
    time_width = std::max(time_width, times[row].size());
  }
  for (std::size_t r = 0; r < nranks; ++r) width = std::max(width, ("rank " + std::to_string(r)).size());

  auto pad_left = [](const std::string& s, std::size_t w) {
    return std::string(w > s.size() ? w - s.size() : 0, ' ') + s;
  };
  auto pad_right = [](const std::string& s, std::size_t w) {
    return s + std::string(w > s.size() ? w - s.size() : 0, ' ');
  };
  auto finish_line = [](std::string& out, std::string line) {
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  };

  std::string out = "# " + tl.schedule + " ranks=" + std::to_string(tl.ranks) + " chunks=" + std::to_string(tl.chunks) +
                    " mode=" + std::string(to_string(tl.mode)) + " makespan=" + detail::format_number(makespan, 6) +
                    " bubble=" + detail::format_number(100 * tl.bubble_ratio(), 1) +
                    "% cell=" + detail::format_number(cell, 6) + " " + tl.time_unit + "\n";
  std::string header = pad_left("time", time_width);
  for (std::size_t r = 0; r < nranks; ++r) header += " | " + pad_right("rank " + std::to_string(r), width);
  finish_line(out, header);
  for (std::size_t row = 0; row < rows; ++row) {
    std::string line = pad_left(times[row], time_width);
    for (std::size_t r = 0; r < nranks; ++r) {
      std::string cell_text = ".";
      if (best[r][row] >= 0 && cover[r][row] >= 0.5 * cell - 1e-12)
        cell_text = to_token(tl.spans[r][static_cast<std::size_t>(best[r][row])].op);
      line += " | " + pad_right(cell_text, width);
    }
    finish_line(out, line);
  }
  return out;
}

}  // namespace dualpipe
