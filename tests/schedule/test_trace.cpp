// The trace grammar: printing, parsing, round trips, and parse errors that point at the token.
#include <doctest/doctest.h>

#include "dualpipe/dualpipe.hpp"
#include "support/golden_files.hpp"

using namespace dualpipe;

TEST_CASE("Trace.TokensPrintAsTheGrammarSays") {
  CHECK(to_token(Op::F(0, 3)) == "F0.3");
  CHECK(to_token(Op::B(1, 12)) == "B1.12");
  CHECK(to_token(Op::Bw(1, 2)) == "B1.2w");
  CHECK(to_token(Op::FB(1, 2, 0, 0)) == "FB1.2/0.0");
  CHECK(to_token(Op::W()) == "W");
  CHECK(to_token(Op::sF(0, 1)) == "sF0.1");
  CHECK(to_token(Op::rF(1, 1)) == "rF1.1");
  CHECK(to_token(Op::sB(0, 9)) == "sB0.9");
  CHECK(to_token(Op::rB(1, 10)) == "rB1.10");
  CHECK(to_token(Op::commit_op()) == "|");
}

TEST_CASE("Trace.EveryTokenRoundTrips") {
  const Op ops[] = {Op::F(0, 3),  Op::B(1, 12),  Op::Bw(1, 2), Op::FB(1, 2, 0, 0), Op::W(),
                    Op::sF(0, 1), Op::rF(1, 11), Op::sB(0, 9), Op::rB(1, 10),      Op::commit_op()};
  for (const Op& op : ops) {
    CAPTURE(to_token(op));
    CHECK(parse_token(to_token(op)) == op);
  }
}

TEST_CASE("Trace.GoldenFilesRoundTrip") {
  for (const auto& path : testing::golden_files()) {
    const std::string text = testing::read_text(path);
    CHECK(format_trace(parse_trace(text)) == text);
  }
}

TEST_CASE("Trace.ParseErrorsNameTheTokenAndPosition") {
  try {
    (void)parse_trace("# dualpipe ranks=1 chunks=2 mode=train\nrank 0: F0.0 Fx.1 |\n");
    FAIL("expected a TraceParseError");
  } catch (const TraceParseError& e) {
    CHECK(e.line() == 2);
    CHECK(e.column() == 14);
    CHECK(std::string(e.what()).find("'Fx.1'") != std::string::npos);
  }
  CHECK_THROWS_AS((void)parse_token("B0.1x"), TraceParseError);
  CHECK_THROWS_AS((void)parse_token("FB0.1"), TraceParseError);
  CHECK_THROWS_AS((void)parse_token("Q"), TraceParseError);
  CHECK_THROWS_AS((void)parse_token("F-1.0"), TraceParseError);
  CHECK_THROWS_AS((void)parse_trace(""), TraceParseError);
  CHECK_THROWS_AS((void)parse_trace("# dualpipe ranks=2 chunks=4 mode=train\nrank 0: F0.0\n"), TraceParseError);
  CHECK_THROWS_AS((void)parse_trace("# dualpipe ranks=1 chunks=4 mode=fast\nrank 0: F0.0\n"), TraceParseError);
  CHECK_THROWS_AS((void)parse_trace("# dualpipe ranks=1 chunks=4 mode=train\nrank 1: F0.0\n"), TraceParseError);
}

TEST_CASE("Trace.ModuleIndexMustFitTheIR") {
  CHECK(parse_token("F32767.1") == Op::F(32767, 1));
  CHECK_THROWS_AS((void)parse_token("F70000.1"), TraceParseError);  // would wrap to 4464
}
