// profile_step: costs estimated from a measured timeline, the trace simulated with them, both bubbles.
// The "measured" timelines here are simulated ones with known costs, so the estimate must recover them
// exactly and the re-simulation must reproduce the same step.
#include <doctest/doctest.h>

#include <string>

#include "dualpipe/dualpipe.hpp"

using namespace dualpipe;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

Costs known_costs() {
  Costs c;
  c.forward = 1.5;
  c.backward = 2.75;
  c.weight = 1.25;
  c.forward_backward = 3.5;
  return c;
}

/// A "measured" step: the simulated timeline of `t` with `c`, its spans scaled by `scale`.
Timeline measured_from(const Trace& t, const Costs& c, double scale = 1.0) {
  Timeline tl = simulate(t, c, CommModel::async);
  for (auto& rank : tl.spans)
    for (Span& s : rank) {
      s.start *= scale;
      s.end *= scale;
    }
  tl.time_unit = "s";
  return tl;
}

}  // namespace

TEST_CASE("Runtime.Profile.RecoversCostsAndBubble") {
  const Costs c = known_costs();
  for (ScheduleKind kind : all_schedule_kinds) {
    const std::string name(schedule_name(kind));
    CAPTURE(name);
    const int P = 4, C = 10;
    const Trace t = make_trace(kind, P, C);
    const Timeline measured = measured_from(t, c);
    const ProfileReport p = profile_step(measured, t);
    // Every kind that ran is recovered exactly (it is a mean of identical durations).
    CHECK(p.samples[0] > 0);
    CHECK(p.costs.forward == doctest::Approx(c.forward).epsilon(1e-12));
    if (p.samples[1] + p.samples[2] > 0) CHECK(p.costs.backward == doctest::Approx(c.backward).epsilon(1e-12));
    if (p.samples[3] > 0) CHECK(p.costs.weight == doctest::Approx(c.weight).epsilon(1e-12));
    if (p.samples[4] > 0) CHECK(p.costs.forward_backward == doctest::Approx(c.forward_backward).epsilon(1e-12));
    CHECK(p.measured_bubble > 0);
    CHECK(p.simulated_bubble == doctest::Approx(p.measured_bubble).epsilon(1e-12));
    CHECK(p.simulated_makespan == doctest::Approx(p.measured_makespan).epsilon(1e-12));
    CHECK(p.measured_makespan == doctest::Approx(measured.makespan()));
    CHECK(p.chunks_per_second == doctest::Approx(C / measured.makespan()));
    CHECK(p.simulated.time_unit == "s");
  }
  // DualPipe's step has every kind: F, B, Bw, W and FB.
  const ProfileReport d = profile_step(measured_from(make_trace(ScheduleKind::dualpipe, 4, 10), c),
                                       make_trace(ScheduleKind::dualpipe, 4, 10));
  for (std::size_t k = 0; k < 5; ++k) CHECK(d.samples[k] > 0);
}

TEST_CASE("Runtime.Profile.UnitsScaleAndMeansAreMeans") {
  const Trace t = make_trace(ScheduleKind::zb1p, 3, 6);
  const Costs c = known_costs();
  // Twice as slow: costs and makespans double, throughput halves, bubbles stay.
  const ProfileReport a = profile_step(measured_from(t, c), t);
  const ProfileReport b = profile_step(measured_from(t, c, 2.0), t);
  CHECK(b.costs.forward == doctest::Approx(2 * a.costs.forward));
  CHECK(b.costs.backward == doctest::Approx(2 * a.costs.backward));
  CHECK(b.measured_makespan == doctest::Approx(2 * a.measured_makespan));
  CHECK(b.chunks_per_second == doctest::Approx(a.chunks_per_second / 2));
  CHECK(b.simulated_bubble == doctest::Approx(a.simulated_bubble));

  // Uneven forwards: the estimate is their mean (an independent sum over the spans).
  Timeline m = measured_from(t, c);
  double sum = 0;
  int n = 0;
  for (auto& rank : m.spans)
    for (Span& s : rank)
      if (s.lane == Span::Lane::compute && s.op.kind == OpKind::forward) {
        s.end = s.start + (n % 2 == 0 ? 1.0 : 2.0);  // durations only; the estimate reads nothing else
        sum += s.duration();
        ++n;
      }
  REQUIRE(n == 3 * 6);
  CHECK(estimate_costs(m).forward == doctest::Approx(sum / n));
}

TEST_CASE("Runtime.Profile.Errors") {
  const Trace t = make_trace(ScheduleKind::dualpipe, 4, 8);
  Timeline other = simulate(make_trace(ScheduleKind::dualpipe, 4, 10), known_costs(), CommModel::async);
  std::string what;
  try {
    (void)profile_step(other, t);
  } catch (const ConfigError& e) {
    what = e.what();
  }
  CHECK(contains(what, "10 chunks"));
  CHECK(contains(what, "8 chunks"));
}
