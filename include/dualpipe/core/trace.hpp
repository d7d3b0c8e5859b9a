// dualpipe/core/trace.hpp: the trace grammar of docs/schedules.md, printed and parsed.
//
//   # <schedule> ranks=<P> chunks=<C> mode=<train|forward>
//   rank 0: F0.0 sF0.0 | F0.1 ...
//
// Printing is exact (the golden files are compared byte for byte); parsing reports the offending
// token with its line and column.
#pragma once

#include <charconv>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"

namespace dualpipe {

/// Every rank's op list of one step, with the header that names it.
struct Trace {
  std::string schedule;              ///< e.g. "dualpipe", "dualpipev", "1f1b".
  int ranks = 0;                     ///< P.
  int chunks = 0;                    ///< C.
  Mode mode = Mode::train;           ///< train or forward.
  std::vector<std::vector<Op>> ops;  ///< ops[r] is rank r's list, in issue order.

  friend bool operator==(const Trace&, const Trace&) = default;
};

/// Appends the token of `op` (no separator) to `out`.
inline void append_token(std::string& out, const Op& op) {
  auto mc = [&out](int m, int c) {
    out += std::to_string(m);
    out += '.';
    out += std::to_string(c);
  };
  switch (op.kind) {
    case OpKind::forward:
      out += 'F';
      mc(op.module, op.chunk);
      break;
    case OpKind::backward:
      out += 'B';
      mc(op.module, op.chunk);
      break;
    case OpKind::backward_input:
      out += 'B';
      mc(op.module, op.chunk);
      out += 'w';
      break;
    case OpKind::forward_backward:
      out += "FB";
      mc(op.module, op.chunk);
      out += '/';
      mc(op.module1, op.chunk1);
      break;
    case OpKind::weight: out += 'W'; break;
    case OpKind::send_activation:
      out += "sF";
      mc(op.module, op.chunk);
      break;
    case OpKind::recv_activation:
      out += "rF";
      mc(op.module, op.chunk);
      break;
    case OpKind::send_gradient:
      out += "sB";
      mc(op.module, op.chunk);
      break;
    case OpKind::recv_gradient:
      out += "rB";
      mc(op.module, op.chunk);
      break;
    case OpKind::commit: out += '|'; break;
  }
}

/// The token of one op, e.g. "FB1.2/0.0".
[[nodiscard]] inline std::string to_token(const Op& op) {
  std::string s;
  append_token(s, op);
  return s;
}

/// One rank's line without the trailing newline: "rank R: tok tok ...".
[[nodiscard]] inline std::string format_rank_line(int rank, const std::vector<Op>& ops) {
  std::string out = "rank " + std::to_string(rank) + ":";
  out.reserve(out.size() + ops.size() * 6);
  for (const Op& op : ops) {
    out += ' ';
    append_token(out, op);
  }
  return out;
}

/// The header line without newline: "# <schedule> ranks=P chunks=C mode=M".
[[nodiscard]] inline std::string format_header(const Trace& t) {
  return "# " + t.schedule + " ranks=" + std::to_string(t.ranks) + " chunks=" + std::to_string(t.chunks) +
         " mode=" + std::string(to_string(t.mode));
}

/// The whole trace, header first, each line ended by '\n': byte-identical to the golden files.
[[nodiscard]] inline std::string format_trace(const Trace& t) {
  std::string out = format_header(t) + '\n';
  for (std::size_t r = 0; r < t.ops.size(); ++r) {
    out += format_rank_line(static_cast<int>(r), t.ops[r]);
    out += '\n';
  }
  return out;
}

namespace detail {

struct TokenCursor {
  std::string_view tok;
  std::size_t pos = 0;
  int line;
  int column;

  [[noreturn]] void fail(std::string_view why) const {
    throw TraceParseError("bad trace token '" + std::string(tok) + "': " + std::string(why), line, column);
  }
  bool eat(char c) {
    if (pos < tok.size() && tok[pos] == c) {
      ++pos;
      return true;
    }
    return false;
  }
  int number(std::string_view what) {
    int value = 0;
    auto [p, ec] = std::from_chars(tok.data() + pos, tok.data() + tok.size(), value);
    if (ec != std::errc{} || value < 0) fail("expected a non-negative " + std::string(what));
    pos = static_cast<std::size_t>(p - tok.data());
    return value;
  }
  void module_chunk(int& m, int& c) {
    m = number("module index");
    if (m > 32767) fail("module index " + std::to_string(m) + " is larger than 32767");
    if (!eat('.')) fail("expected '.' between module and chunk");
    c = number("chunk index");
  }
  void done() const {
    if (pos != tok.size()) fail("unexpected trailing characters");
  }
};

}  // namespace detail

/// Parses one token. Throws TraceParseError naming the token, line and column.
[[nodiscard]] inline Op parse_token(std::string_view tok, int line = 1, int column = 1) {
  detail::TokenCursor cur{tok, 0, line, column};
  int m = 0, c = 0;
  if (tok == "|") return Op::commit_op();
  if (tok == "W") return Op::W();
  if (tok.starts_with("FB")) {
    cur.pos = 2;
    int m1 = 0, c1 = 0;
    cur.module_chunk(m, c);
    if (!cur.eat('/')) cur.fail("expected '/' between the forward and backward halves");
    cur.module_chunk(m1, c1);
    cur.done();
    return Op::FB(m, c, m1, c1);
  }
  if (tok.starts_with('F')) {
    cur.pos = 1;
    cur.module_chunk(m, c);
    cur.done();
    return Op::F(m, c);
  }
  if (tok.starts_with('B')) {
    cur.pos = 1;
    cur.module_chunk(m, c);
    const bool deferred = cur.eat('w');
    cur.done();
    return deferred ? Op::Bw(m, c) : Op::B(m, c);
  }
  if (tok.size() >= 2 && (tok[0] == 's' || tok[0] == 'r') && (tok[1] == 'F' || tok[1] == 'B')) {
    cur.pos = 2;
    cur.module_chunk(m, c);
    cur.done();
    if (tok[0] == 's') return tok[1] == 'F' ? Op::sF(m, c) : Op::sB(m, c);
    return tok[1] == 'F' ? Op::rF(m, c) : Op::rB(m, c);
  }
  cur.fail("unknown kind (expected F, B, FB, W, sF, rF, sB, rB or |)");
}

/// Parses a whole trace (header line, then "rank R:" lines in order 0..P-1).
/// Throws TraceParseError on any deviation, naming the token and its position.
[[nodiscard]] inline Trace parse_trace(std::string_view text) {
  Trace t;
  int line_no = 0;
  bool have_header = false;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    ++line_no;
    if (line.empty()) continue;
    if (!have_header) {
      // "# name ranks=P chunks=C mode=M"
      auto fail = [&](std::string_view why) -> void {
        throw TraceParseError("bad trace header '" + std::string(line) + "': " + std::string(why), line_no, 1);
      };
      if (!line.starts_with("# ")) fail("expected '# <schedule> ranks=<P> chunks=<C> mode=<train|forward>'");
      std::vector<std::string_view> words;
      std::string_view rest = line.substr(2);
      while (!rest.empty()) {
        const std::size_t sp = rest.find(' ');
        if (sp != 0) words.push_back(rest.substr(0, sp));
        rest = sp == std::string_view::npos ? std::string_view{} : rest.substr(sp + 1);
      }
      if (words.size() != 4) fail("expected four fields");
      t.schedule = std::string(words[0]);
      auto field = [&](std::string_view w, std::string_view key) -> int {
        if (!w.starts_with(key)) fail("expected '" + std::string(key) + "'");
        int v = 0;
        auto [p, ec] = std::from_chars(w.data() + key.size(), w.data() + w.size(), v);
        if (ec != std::errc{} || p != w.data() + w.size() || v < 0) fail("bad number in '" + std::string(w) + "'");
        return v;
      };
      t.ranks = field(words[1], "ranks=");
      t.chunks = field(words[2], "chunks=");
      if (words[3] == "mode=train") t.mode = Mode::train;
      else if (words[3] == "mode=forward") t.mode = Mode::forward;
      else fail("mode must be train or forward");
      have_header = true;
      continue;
    }
    const std::string expect = "rank " + std::to_string(t.ops.size()) + ":";
    if (!line.starts_with(expect))
      throw TraceParseError("expected '" + expect + "' at the start of the line", line_no, 1);
    std::vector<Op> ops;
    std::size_t pos = expect.size();
    while (pos < line.size()) {
      if (line[pos] == ' ') {
        ++pos;
        continue;
      }
      std::size_t end = line.find(' ', pos);
      if (end == std::string_view::npos) end = line.size();
      ops.push_back(parse_token(line.substr(pos, end - pos), line_no, static_cast<int>(pos) + 1));
      pos = end;
    }
    t.ops.push_back(std::move(ops));
  }
  if (!have_header) throw TraceParseError("empty trace: no header line", line_no == 0 ? 1 : line_no, 1);
  if (static_cast<int>(t.ops.size()) != t.ranks)
    throw TraceParseError(
        "header says ranks=" + std::to_string(t.ranks) + " but " + std::to_string(t.ops.size()) + " rank lines follow",
        line_no, 1);
  return t;
}

}  // namespace dualpipe
