// Every DualPipe and DualPipeV configuration of the grid is a correct step, train and forward.
#include <doctest/doctest.h>

#include <string>

#include "dualpipe/analysis/validator.hpp"
#include "dualpipe/schedule/registry.hpp"

using namespace dualpipe;

namespace {

int validate_all(ScheduleKind kind, int ranks, int first_chunks, int last_chunks, int chunk_step) {
  int checked = 0;
  for (Mode mode : {Mode::train, Mode::forward})
    for (int c = first_chunks; c <= last_chunks; c += chunk_step) {
      const Trace t = make_trace(kind, ranks, c, mode);
      const ValidationResult r = validate(t, kind);
      if (!r.ok) {
        FAIL_CHECK(schedule_name(kind) << " ranks=" << ranks << " chunks=" << c << " mode=" << to_string(mode) << ":\n"
                                       << r.message);
        continue;
      }
      ++checked;
    }
  return checked;
}

}  // namespace

TEST_CASE("Validator.Grid.DualPipe" * doctest::timeout(120)) {
  // Every even P up to 32, every even C from 2P to 4P+2.
  int checked = 0;
  for (int p = 2; p <= 32; p += 2) checked += validate_all(ScheduleKind::dualpipe, p, 2 * p, 4 * p + 2, 2);
  CHECK(checked == 2 * 304);  // 2 modes x sum over p of (p+2) configurations
}

TEST_CASE("Validator.Grid.DualPipeV" * doctest::timeout(120)) {
  // P from 1 to 32, every C from 2P to 4P+3.
  int checked = 0;
  for (int p = 1; p <= 32; ++p) checked += validate_all(ScheduleKind::dualpipev, p, 2 * p, 4 * p + 3, 1);
  CHECK(checked == 2 * 1184);  // 2 modes x sum over p of (2p+4) configurations
}
