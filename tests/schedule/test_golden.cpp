// The schedules against the reference's own recorded control flow (tests/golden/), token for token.
#include <doctest/doctest.h>

#include "dualpipe/dualpipe.hpp"
#include "support/golden_files.hpp"

using namespace dualpipe;

TEST_CASE("Golden.AllReferenceTracesReproduced") {
  const auto files = testing::golden_files();
  REQUIRE(files.size() >= 17);
  for (const auto& path : files) {
    CAPTURE(path.filename().string());
    const std::string text = testing::read_text(path);
    const Trace golden = parse_trace(text);
    const Trace ours = make_trace(parse_schedule_kind(golden.schedule), golden.ranks, golden.chunks, golden.mode);
    CHECK(ours == golden);
    CHECK(format_trace(ours) == text);  // byte for byte, header and spacing included
  }
}

TEST_CASE("Golden.EveryConfigurationIsCovered") {
  // Both schedules, both modes, odd and even DualPipeV chunk counts, P = 1 for DualPipeV.
  int dualpipe_train = 0, dualpipe_forward = 0, v_train = 0, v_forward = 0, v_odd = 0, v_one_rank = 0;
  for (const auto& path : testing::golden_files()) {
    const Trace t = parse_trace(testing::read_text(path));
    if (t.schedule == "dualpipe") (t.mode == Mode::train ? dualpipe_train : dualpipe_forward)++;
    if (t.schedule == "dualpipev") {
      (t.mode == Mode::train ? v_train : v_forward)++;
      v_odd += t.chunks % 2;
      v_one_rank += t.ranks == 1;
    }
  }
  CHECK(dualpipe_train > 0);
  CHECK(dualpipe_forward > 0);
  CHECK(v_train > 0);
  CHECK(v_forward > 0);
  CHECK(v_odd > 0);
  CHECK(v_one_rank > 0);
}

// Computed by the compiler: the schedules are usable in constant expressions.
struct HalfCounts {
  int forwards = 0, backwards = 0, deferred = 0, weights = 0;
};
constexpr HalfCounts count_halves(int rank) {
  HalfCounts n;
  for (const Op& op : DualPipe::ops(8, 20, rank)) {
    n.forwards += op.has_forward();
    n.backwards += op.has_backward();
    n.deferred += op.kind == OpKind::backward_input;
    n.weights += op.kind == OpKind::weight;
  }
  return n;
}
constexpr int compute_ops_on_rank(int rank) {
  int n = 0;
  for (const Op& op : DualPipe::ops(8, 20, rank))
    if (is_compute(op.kind)) ++n;
  return n;
}
// DualPipe 8x20: every rank forwards and backwards its 10 chunks of each module (20 halves each), and
// runs one W per deferred backward.
static_assert(count_halves(0).forwards == 20 && count_halves(0).backwards == 20);
static_assert(count_halves(3).forwards == 20 && count_halves(3).backwards == 20);
static_assert(count_halves(0).deferred == count_halves(0).weights && count_halves(0).weights > 0);
static_assert(DualPipeV::ops(1, 2, 0).size() == 8);  // "F0.0 F1.0 F0.1 B1.0 FB1.1/0.0 B1.1 B0.1w W"

TEST_CASE("Golden.ConstexprAgreesWithRuntime") {
  constexpr int c0 = compute_ops_on_rank(0);
  constexpr int c3 = compute_ops_on_rank(3);
  int rt0 = 0, rt3 = 0;
  for (const Op& op : schedule_ops(ScheduleKind::dualpipe, 8, 20, 0)) rt0 += is_compute(op.kind);
  for (const Op& op : schedule_ops(ScheduleKind::dualpipe, 8, 20, 3)) rt3 += is_compute(op.kind);
  CHECK(c0 == rt0);
  CHECK(c3 == rt3);
  static_assert(compute_ops_on_rank(7) == compute_ops_on_rank(0), "DualPipe is symmetric: rank 0 and P-1");
}
