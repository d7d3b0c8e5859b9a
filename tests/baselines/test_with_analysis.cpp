// The baselines through the library's own validator and simulator (analysis/), cross-checked against
// the test-local rendezvous model (rendezvous.hpp) and the spec's table.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "dualpipe/dualpipe.hpp"
#include "rendezvous.hpp"

using namespace dualpipe;

namespace {
constexpr std::array baseline_kinds{ScheduleKind::one_f_one_b, ScheduleKind::gpipe, ScheduleKind::zb1p};
bool near(double a, double b) { return std::fabs(a - b) < 1e-9; }
}  // namespace

TEST_CASE("Baselines.Analysis.ValidOverTheGrid" * doctest::timeout(120)) {
  // P 1..16, C 1..3P+1, both modes: pairing, dependencies and deadlock freedom by the validator.
  int checked = 0;
  for (ScheduleKind kind : baseline_kinds) {
    for (int P = 1; P <= 16; ++P) {
      for (int C = 1; C <= 3 * P + 1; ++C) {
        for (Mode mode : {Mode::train, Mode::forward}) {
          const ValidationResult v = validate(make_trace(kind, P, C, mode), kind);
          if (!v.ok) {
            CAPTURE(schedule_name(kind));
            CAPTURE(P);
            CAPTURE(C);
            FAIL(v.message);
          }
          ++checked;
        }
      }
    }
  }
  CHECK(checked == 3 * 2 * 424);  // sum over P = 1..16 of (3P+1) = 424
}

TEST_CASE("Baselines.Analysis.SimulatorAgreesWithTheTestModel") {
  // Two independent implementations of the commit-rendezvous model must give the same makespan and
  // idle times, with and without latency.
  for (ScheduleKind kind : baseline_kinds) {
    for (int P = 1; P <= 8; ++P) {
      for (int C = 1; C <= 2 * P + 2; ++C) {
        for (double latency : {0.0, 0.3}) {
          CAPTURE(schedule_name(kind));
          CAPTURE(P);
          CAPTURE(C);
          CAPTURE(latency);
          const Trace t = make_trace(kind, P, C);
          Costs costs;
          costs.forward = 1;
          costs.backward = 2.5;
          costs.weight = 1;
          costs.latency = latency;
          const Timeline tl = simulate(t, kind, costs);
          const auto ours = dualpipe::testing::run_rendezvous(t, kind, {1, 2.5, 1, 3, latency});
          REQUIRE(ours.completed);
          CHECK(near(tl.makespan(), ours.makespan));
          for (int r = 0; r < P; ++r) CHECK(near(tl.idle(r), ours.idle[static_cast<std::size_t>(r)]));
        }
      }
    }
  }
}

TEST_CASE("Baselines.Analysis.SpecTable") {
  // F = W = 1, B = 2, free communication; activations per device PP for 1F1B and ZB1P (rank 0).
  for (int P = 1; P <= 16; ++P) {
    for (int C = P; C <= 3 * P + 1; ++C) {
      CAPTURE(P);
      CAPTURE(C);
      const Summary one =
          summarize(simulate(make_trace<OneFOneB>(P, C), ScheduleKind::one_f_one_b), make_trace<OneFOneB>(P, C));
      const Summary zb = summarize(simulate(make_trace<ZB1P>(P, C), ScheduleKind::zb1p), make_trace<ZB1P>(P, C));
      const Summary gp = summarize(simulate(make_trace<GPipe>(P, C), ScheduleKind::gpipe), make_trace<GPipe>(P, C));
      for (int r = 0; r < P; ++r) {
        CHECK(near(one.idle[static_cast<std::size_t>(r)], (P - 1) * 3.0));
        CHECK(near(gp.idle[static_cast<std::size_t>(r)], (P - 1) * 3.0));
      }
      CHECK(zb.max_idle() <= (P - 1) * (1 + 2 - 2 * 1) + 1e-9);
      CHECK(*std::max_element(one.peak_activations.begin(), one.peak_activations.end()) == P);
      CHECK(zb.peak_activations == one.peak_activations);
      CHECK(gp.peak_activations == std::vector<int>(static_cast<std::size_t>(P), C));
    }
  }
}

TEST_CASE("Baselines.Analysis.RenderASimulatedStep") {
  // The renderers on a real simulated timeline: every compute op of the trace is drawn once.
  const Trace t = make_trace<ZB1P>(4, 8);
  const Timeline tl = simulate(t, ScheduleKind::zb1p);
  std::size_t computes = 0;
  for (const auto& ops : t.ops)
    computes +=
        static_cast<std::size_t>(std::count_if(ops.begin(), ops.end(), [](const Op& o) { return is_compute(o.kind); }));
  const std::string svg = render_svg(tl);
  std::size_t rects = 0;
  for (std::size_t p = svg.find("class=\"compute\""); p != std::string::npos; p = svg.find("class=\"compute\"", p + 1))
    ++rects;
  CHECK(rects == computes);
  const std::string grid = render_grid(tl);  // unit costs: one row per unit, makespan 27
  CHECK(std::count(grid.begin(), grid.end(), '\n') == 2 + 27);
  CHECK(render_chrome_trace(tl).find("\"name\":\"B0.7w\"") != std::string::npos);
}
