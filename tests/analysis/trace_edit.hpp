// tests/analysis/trace_edit.hpp: small edits of a trace by token, to break schedules by hand, and the
// placement of a pipeline written by hand.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "dualpipe/core/trace.hpp"
#include "dualpipe/schedule/placement.hpp"

namespace dualpipe::testing {

/// Rank r's tokens.
inline std::vector<std::string> tokens(const Trace& t, int r) {
  std::vector<std::string> out;
  for (const Op& op : t.ops[static_cast<std::size_t>(r)]) out.push_back(to_token(op));
  return out;
}

/// Replaces rank r's ops by the parsed `toks`.
inline void set_tokens(Trace& t, int r, const std::vector<std::string>& toks) {
  std::vector<Op> ops;
  for (const std::string& s : toks) ops.push_back(parse_token(s));
  t.ops[static_cast<std::size_t>(r)] = std::move(ops);
}

/// Index of the `nth` (0-based) occurrence of `tok` on rank r; fails the test if there is none.
inline int find(const Trace& t, int r, const std::string& tok, int nth = 0) {
  const auto toks = tokens(t, r);
  for (std::size_t i = 0; i < toks.size(); ++i)
    if (toks[i] == tok && nth-- == 0) return static_cast<int>(i);
  FAIL("token " << tok << " not found on rank " << r);
  return -1;
}

/// Replaces the token at `index` of rank r.
inline void replace_at(Trace& t, int r, int index, const std::string& tok) {
  auto toks = tokens(t, r);
  toks.at(static_cast<std::size_t>(index)) = tok;
  set_tokens(t, r, toks);
}

/// Inserts `tok` before position `index` of rank r.
inline void insert_at(Trace& t, int r, int index, const std::string& tok) {
  auto toks = tokens(t, r);
  toks.insert(toks.begin() + index, tok);
  set_tokens(t, r, toks);
}

/// Removes the token at `index` of rank r.
inline void erase_at(Trace& t, int r, int index) {
  auto toks = tokens(t, r);
  toks.erase(toks.begin() + index);
  set_tokens(t, r, toks);
}

/// Moves the token at `from` so that it ends up at index `to` (indices of the resulting list).
inline void move_token(Trace& t, int r, int from, int to) {
  auto toks = tokens(t, r);
  const std::string tok = toks.at(static_cast<std::size_t>(from));
  toks.erase(toks.begin() + from);
  toks.insert(toks.begin() + to, tok);
  set_tokens(t, r, toks);
}

/// Rank r's ops as one line of tokens, for failure messages.
inline std::string line(const Trace& t, int r) { return format_rank_line(r, t.ops[static_cast<std::size_t>(r)]); }

/// The placement of a pipeline written by hand: two ranks, one module each (stage r on rank r), `chunks`
/// chunks.
inline ModulePlacement two_stage_placement(int rank, int chunks) {
  ModulePlacement p;
  p.stage = rank;
  p.num_stages = 2;
  p.num_chunks = chunks;
  p.prev_rank = rank == 1 ? 0 : -1;
  p.next_rank = rank == 0 ? 1 : -1;
  return p;
}

}  // namespace dualpipe::testing
