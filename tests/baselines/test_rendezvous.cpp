// Deadlock freedom and idle times of the baselines under the commit-rendezvous model, with a small
// test-local model (rendezvous.hpp) that is first checked against the spec's own DualPipe figures.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "dualpipe/dualpipe.hpp"
#include "rendezvous.hpp"
#include "support/golden_files.hpp"

using namespace dualpipe;
using dualpipe::testing::RendezvousCosts;
using dualpipe::testing::run_rendezvous;

namespace {
bool near(double a, double b) { return std::fabs(a - b) < 1e-9; }
}  // namespace

TEST_CASE("Rendezvous.ModelReproducesTheSpecFiguresOnDualPipe") {
  // docs/schedules.md: DualPipe 8 ranks 20 chunks, F=W=1, B=2. F&B=3: every rank idles 6, makespan 66.
  // F&B=2.5: idles 3.5 4 4.5 4.5 4.5 4.5 4 3.5, makespan 59. Run on the reference's own trace.
  const Trace golden = parse_trace(
      dualpipe::testing::read_text(std::filesystem::path(DUALPIPE_GOLDEN_DIR) / "dualpipe_pp8_c20_train.txt"));
  auto r3 = run_rendezvous(golden, ScheduleKind::dualpipe, {1, 2, 1, 3, 0});
  REQUIRE(r3.completed);
  CHECK(near(r3.makespan, 66));
  for (double idle : r3.idle) CHECK(near(idle, 6));
  auto r25 = run_rendezvous(golden, ScheduleKind::dualpipe, {1, 2, 1, 2.5, 0});
  REQUIRE(r25.completed);
  CHECK(near(r25.makespan, 59));
  const double want[] = {3.5, 4, 4.5, 4.5, 4.5, 4.5, 4, 3.5};
  for (int r = 0; r < 8; ++r) CHECK(near(r25.idle[static_cast<std::size_t>(r)], want[r]));
}

TEST_CASE("Rendezvous.ModelFindsDeadlocks") {
  // Rank 0 waits for a gradient before sending the activation rank 1 needs to make it.
  const Trace crossed = parse_trace(
      "# 1f1b ranks=2 chunks=1 mode=train\n"
      "rank 0: rB0.0 | F0.0 sF0.0 | B0.0\n"
      "rank 1: rF0.0 | F0.0 B0.0 sB0.0 |\n");
  const auto res = run_rendezvous(crossed, ScheduleKind::one_f_one_b, {});
  CHECK_FALSE(res.completed);
  CHECK(res.problem.find("deadlock") != std::string::npos);
  // Two blocking sends facing each other: rank 0 sends F0.1 alone and waits for rank 1 to receive it,
  // while rank 1 sends B0.0 alone and waits for rank 0 to receive that. Grouping each send with the
  // receive the rank needs next (Megatron's send_forward_recv_backward pairing) resolves it.
  const Trace facing = parse_trace(
      "# 1f1b ranks=2 chunks=2 mode=train\n"
      "rank 0: F0.0 sF0.0 | F0.1 sF0.1 | rB0.0 | B0.0 rB0.1 | B0.1\n"
      "rank 1: rF0.0 | F0.0 B0.0 sB0.0 | rF0.1 | F0.1 B0.1 sB0.1 |\n");
  CHECK_FALSE(run_rendezvous(facing, ScheduleKind::one_f_one_b, {}).completed);
  const Trace grouped = parse_trace(
      "# 1f1b ranks=2 chunks=2 mode=train\n"
      "rank 0: F0.0 sF0.0 | F0.1 sF0.1 rB0.0 | B0.0 rB0.1 | B0.1\n"
      "rank 1: rF0.0 | F0.0 B0.0 sB0.0 rF0.1 | F0.1 B0.1 sB0.1 |\n");
  CHECK(run_rendezvous(grouped, ScheduleKind::one_f_one_b, {}).completed);
  CHECK(grouped == make_trace<OneFOneB>(2, 2));
  // A post with no peer is reported.
  const Trace no_peer = parse_trace(
      "# 1f1b ranks=2 chunks=1 mode=forward\n"
      "rank 0: rF0.0 | F0.0 sF0.0 |\n"
      "rank 1: rF0.0 | F0.0\n");
  CHECK(run_rendezvous(no_peer, ScheduleKind::one_f_one_b, {}).problem.find("no peer") != std::string::npos);
}

TEST_CASE("Rendezvous.BaselinesNeverDeadlock" * doctest::timeout(120)) {
  // P 1..16, C 1..3P+1, both modes, with and without latency.
  for (ScheduleKind kind : {ScheduleKind::one_f_one_b, ScheduleKind::gpipe, ScheduleKind::zb1p}) {
    for (int P = 1; P <= 16; ++P) {
      for (int C = 1; C <= 3 * P + 1; ++C) {
        for (Mode mode : {Mode::train, Mode::forward}) {
          const Trace t = make_trace(kind, P, C, mode);
          for (double latency : {0.0, 0.25}) {
            const auto res = run_rendezvous(t, kind, {1, 2, 1, 3, latency});
            if (!res.completed) {
              CAPTURE(schedule_name(kind));
              CAPTURE(P);
              CAPTURE(C);
              CAPTURE(to_string(mode));
              CAPTURE(latency);
              FAIL(res.problem);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("Rendezvous.BaselineIdleMatchesTheSpecTable") {
  // F = W = 1, B = 2, free communication. 1F1B: every rank idles (P-1)(F+B) when C >= P; GPipe the
  // same for any C; ZB1P: the worst rank idles at most (P-1)(F+B-2W); forward-only steps take
  // (C+P-1)F, the pipeline's lower bound.
  const RendezvousCosts costs{1, 2, 1, 3, 0};
  for (int P = 1; P <= 16; ++P) {
    for (int C = 1; C <= 3 * P + 1; ++C) {
      CAPTURE(P);
      CAPTURE(C);
      const double bubble = (P - 1) * (costs.F + costs.B);
      const auto one = run_rendezvous(make_trace<OneFOneB>(P, C), ScheduleKind::one_f_one_b, costs);
      const auto gp = run_rendezvous(make_trace<GPipe>(P, C), ScheduleKind::gpipe, costs);
      const auto zb = run_rendezvous(make_trace<ZB1P>(P, C), ScheduleKind::zb1p, costs);
      REQUIRE(one.completed);
      REQUIRE(gp.completed);
      REQUIRE(zb.completed);
      for (int r = 0; r < P; ++r) {
        CAPTURE(r);
        if (C >= P) CHECK(near(one.idle[static_cast<std::size_t>(r)], bubble));
        CHECK(near(gp.idle[static_cast<std::size_t>(r)], bubble));
      }
      if (C >= P) {
        CHECK(near(one.makespan, C * (costs.F + costs.B) + bubble));
        CHECK(zb.worst_idle() <= (P - 1) * (costs.F + costs.B - 2 * costs.W) + 1e-9);
      }
      CHECK(zb.makespan <= one.makespan + 1e-9);
      for (ScheduleKind kind : {ScheduleKind::one_f_one_b, ScheduleKind::gpipe, ScheduleKind::zb1p}) {
        const auto fwd = run_rendezvous(make_trace(kind, P, C, Mode::forward), kind, costs);
        REQUIRE(fwd.completed);
        CHECK(near(fwd.makespan, (C + P - 1) * costs.F));
      }
    }
  }
}

TEST_CASE("Rendezvous.ZB1PBeats1F1BWithOtherCosts") {
  // Not a spec figure, a sanity check: with B = 3, W = 1.5 and some latency ZB1P is never slower.
  const RendezvousCosts costs{1, 3, 1.5, 4, 0.1};
  for (int P = 2; P <= 8; ++P) {
    for (int C = P; C <= 3 * P; ++C) {
      CAPTURE(P);
      CAPTURE(C);
      const auto one = run_rendezvous(make_trace<OneFOneB>(P, C), ScheduleKind::one_f_one_b, costs);
      const auto zb = run_rendezvous(make_trace<ZB1P>(P, C), ScheduleKind::zb1p, costs);
      REQUIRE(one.completed);
      REQUIRE(zb.completed);
      CHECK(zb.makespan < one.makespan);
    }
  }
}
