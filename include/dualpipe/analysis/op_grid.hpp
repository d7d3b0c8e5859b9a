// dualpipe/analysis/op_grid.hpp: a window of a trace as a text table, rows = op index, columns =
// ranks, with chosen ops marked `>>tok<<`. The validator puts one in every error message, so the
// faulty op is seen next to what the neighbouring ranks issue at the same position.
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/core/trace.hpp"

namespace dualpipe {

/// A position in a trace: op `index` of rank `rank`. `index == ops[rank].size()` names the end of the
/// rank's list (a grid shows it as `>>END<<`).
struct OpRef {
  int rank = 0;   ///< Rank.
  int index = 0;  ///< Index into that rank's op list.

  friend constexpr bool operator==(const OpRef&, const OpRef&) = default;
};

/// Rows [first marked index - radius, last marked index + radius] of `t`, all ranks if there are at most
/// `max_columns` of them, else the ranks nearest the marked ones. Marked ops read `>>tok<<`.
[[nodiscard]] inline std::string format_op_grid(const Trace& t, const std::vector<OpRef>& marks, int radius = 6,
                                                int max_columns = 16) {
  const int ranks = static_cast<int>(t.ops.size());
  if (ranks == 0) return "(empty trace)\n";
  int lo = 0, hi = 0;
  int rlo = 0, rhi = ranks - 1;
  if (!marks.empty()) {
    lo = hi = marks.front().index;
    rlo = rhi = marks.front().rank;
    for (const OpRef& m : marks) {
      lo = std::min(lo, m.index);
      hi = std::max(hi, m.index);
      rlo = std::min(rlo, m.rank);
      rhi = std::max(rhi, m.rank);
    }
  }
  lo = std::max(0, lo - radius);
  hi += radius;
  // Columns: every rank when they fit, else the marked span widened evenly to max_columns.
  if (ranks <= max_columns) {
    rlo = 0;
    rhi = ranks - 1;
  } else {
    while (rhi - rlo + 1 < max_columns) {
      if (rlo > 0) --rlo;
      if (rhi - rlo + 1 < max_columns && rhi < ranks - 1) ++rhi;
    }
  }
  std::size_t longest = 0;
  for (int r = rlo; r <= rhi; ++r) longest = std::max(longest, t.ops[static_cast<std::size_t>(r)].size());
  hi = std::min(hi, static_cast<int>(longest));  // row `longest` can only hold END marks

  auto cell = [&](int r, int i) -> std::string {
    const auto& ops = t.ops[static_cast<std::size_t>(r)];
    std::string tok;
    if (i < static_cast<int>(ops.size())) tok = to_token(ops[static_cast<std::size_t>(i)]);
    const bool marked =
        std::any_of(marks.begin(), marks.end(), [&](const OpRef& m) { return m.rank == r && m.index == i; });
    if (marked) return ">>" + (tok.empty() ? std::string("END") : tok) + "<<";
    return tok;
  };
  std::vector<std::vector<std::string>> rows;
  std::vector<std::size_t> width(static_cast<std::size_t>(rhi - rlo + 1), 0);
  for (int r = rlo; r <= rhi; ++r) width[static_cast<std::size_t>(r - rlo)] = ("rank " + std::to_string(r)).size();
  for (int i = lo; i <= hi; ++i) {
    std::vector<std::string> row;
    for (int r = rlo; r <= rhi; ++r) {
      row.push_back(cell(r, i));
      auto& w = width[static_cast<std::size_t>(r - rlo)];
      w = std::max(w, row.back().size());
    }
    rows.push_back(std::move(row));
  }
  const std::size_t index_width = std::max<std::size_t>(2, std::to_string(hi).size());
  auto pad = [](std::string s, std::size_t w) {
    s.resize(std::max(w, s.size()), ' ');
    return s;
  };
  std::string out = pad("op", index_width);
  for (int r = rlo; r <= rhi; ++r)
    out += " | " + pad("rank " + std::to_string(r), width[static_cast<std::size_t>(r - rlo)]);
  out += '\n';
  for (int i = lo; i <= hi; ++i) {
    std::string line = pad(std::to_string(i), index_width);
    for (int r = rlo; r <= rhi; ++r)
      line += " | " + pad(rows[static_cast<std::size_t>(i - lo)][static_cast<std::size_t>(r - rlo)],
                          width[static_cast<std::size_t>(r - rlo)]);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  }
  return out;
}

}  // namespace dualpipe
