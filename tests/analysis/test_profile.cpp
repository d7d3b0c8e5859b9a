// profile_step: costs estimated from a measured timeline, the trace simulated with them, both bubbles.
// The "measured" timelines here are simulated ones with known costs, so the estimate must recover them
// exactly and the re-simulation must reproduce the same step; and noisy ones (W above B, spans that end
// before they start, kinds missing), which must still give a profile, saying what was fitted.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "dualpipe/dualpipe.hpp"
#include "support/messages.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;

namespace {

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

/// Every compute span of `kind` in `tl` lasts `d` (its start kept).
void set_durations(Timeline& tl, OpKind kind, double d) {
  for (auto& rank : tl.spans)
    for (Span& s : rank)
      if (s.lane == Span::Lane::compute && s.op.kind == kind) s.end = s.start + d;
}

/// The adjustment of `cost` in `list`, or null.
const CostAdjustment* adjustment(const std::vector<CostAdjustment>& list, const std::string& cost) {
  for (const CostAdjustment& a : list)
    if (a.cost == cost) return &a;
  return nullptr;
}

bool valid(const Costs& c) {
  try {
    check_costs(c);
    return true;
  } catch (const ConfigError&) {
    return false;
  }
}

}  // namespace

TEST_CASE("Profile.RecoversCostsAndBubble") {
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

TEST_CASE("Profile.UnitsScaleAndMeansAreMeans") {
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

TEST_CASE("Profile.Errors") {
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

TEST_CASE("Profile.FitMeasuredCosts") {
  // Nothing to fit: the costs pass unchanged and nothing is listed.
  const FittedCosts same = fit_measured_costs(known_costs());
  CHECK(same.costs == known_costs());
  CHECK(same.adjustments.empty());

  // What the GPU benchmark once measured: W timed alone above the B it is part of (check_costs refuses it).
  Costs noisy = known_costs();
  noisy.weight = 0.001220;
  noisy.backward = 0.000781;
  CHECK_FALSE(valid(noisy));
  const FittedCosts w = fit_measured_costs(noisy);
  CHECK(valid(w.costs));
  CHECK(w.costs.weight == w.costs.backward);
  CHECK(w.costs.backward == 0.000781);
  REQUIRE(w.adjustments.size() == 1);
  CHECK(w.adjustments[0].cost == "W");
  CHECK(w.adjustments[0].measured == 0.001220);
  CHECK(w.adjustments[0].used == 0.000781);
  CHECK(contains(to_string(w.adjustments[0]), "W: measured 0.00122, used 0.000781 (W must not exceed B"));

  // Negative and not-a-number values become 0, each named with its reason.
  Costs bad = known_costs();
  bad.forward = -0.5;
  bad.forward_backward = std::numeric_limits<double>::quiet_NaN();
  bad.latency = -1e-6;
  bad.bandwidth = std::numeric_limits<double>::infinity();
  CHECK_FALSE(valid(bad));
  const FittedCosts f = fit_measured_costs(bad);
  CHECK(valid(f.costs));
  CHECK(f.costs.forward == 0);
  CHECK(f.costs.forward_backward == 0);
  CHECK(f.costs.latency == 0);
  CHECK(f.costs.bandwidth == 0);
  CHECK(f.costs.backward == known_costs().backward);  // the rest kept
  CHECK(f.adjustments.size() == 4);
  REQUIRE(adjustment(f.adjustments, "F"));
  CHECK(contains(adjustment(f.adjustments, "F")->reason, "cannot be negative"));
  REQUIRE(adjustment(f.adjustments, "FB"));
  CHECK(contains(adjustment(f.adjustments, "FB")->reason, "not a finite number"));
  CHECK(adjustment(f.adjustments, "latency"));
  CHECK(adjustment(f.adjustments, "bandwidth"));
}

TEST_CASE("Profile.NoisyMeasuredSpansStillProfile") {
  // Measured spans the simulator could not take as they are: each step must still give a profile (it
  // threw ConfigError before, or would simulate with a negative cost), with the fitted costs listed.
  const Trace t = make_trace(ScheduleKind::dualpipe, 4, 10);  // F, B, Bw, W and FB all occur
  const Costs c = known_costs();

  SUBCASE("W above B") {
    Timeline m = measured_from(t, c);
    set_durations(m, OpKind::weight, 5.0);    // W spans 5
    set_durations(m, OpKind::backward, 1.0);  // full B spans 1
    const ProfileReport p = profile_step(m, t);
    CHECK(p.costs.weight == p.costs.backward);
    CHECK(p.costs.backward == doctest::Approx(1.0));
    REQUIRE(adjustment(p.adjustments, "W"));
    CHECK(adjustment(p.adjustments, "W")->measured == doctest::Approx(5.0));
    CHECK(p.simulated_makespan > 0);
  }
  SUBCASE("spans that end before they start") {
    Timeline m = measured_from(t, c);
    set_durations(m, OpKind::forward, -0.25);                            // F mean -0.25
    set_durations(m, OpKind::forward_backward, -1.0);                    // FB mean -1
    const ProfileReport p = profile_step(m, t, CommModel::async, -0.5);  // and a negative transfer latency
    CHECK(p.costs.forward == 0);
    CHECK(p.costs.forward_backward == 0);
    CHECK(p.costs.latency == 0);
    CHECK(adjustment(p.adjustments, "F"));
    CHECK(adjustment(p.adjustments, "FB"));
    CHECK(adjustment(p.adjustments, "latency"));
    CHECK(valid(p.costs));
  }
  SUBCASE("FB shorter than F, zero-length ops") {
    Timeline m = measured_from(t, c);
    set_durations(m, OpKind::forward_backward, 0.5);  // shorter than F (1.5): odd, but a valid cost
    set_durations(m, OpKind::weight, 0.0);
    set_durations(m, OpKind::backward_input, 0.0);
    const ProfileReport p = profile_step(m, t);
    CHECK(p.costs.forward_backward == doctest::Approx(0.5));
    CHECK(p.costs.weight == 0);
    CHECK(p.adjustments.empty());
    CHECK(p.simulated_makespan > 0);
  }
  SUBCASE("one op kind missing") {
    // No W spans at all (say, the recorder lost them): W costs 0 and Bw the whole B.
    Timeline m = measured_from(t, c);
    for (auto& rank : m.spans) std::erase_if(rank, [](const Span& s) { return s.op.kind == OpKind::weight; });
    const ProfileReport p = profile_step(m, t);
    CHECK(p.samples[3] == 0);
    CHECK(p.costs.weight == 0);
    CHECK(p.adjustments.empty());
    CHECK(p.simulated_makespan > 0);
  }
  SUBCASE("a span without an end") {
    Timeline m = measured_from(t, c);
    REQUIRE(m.spans[0][0].lane == Span::Lane::compute);
    m.spans[0][0].end = std::numeric_limits<double>::infinity();
    const ProfileReport p = profile_step(m, t);
    CHECK(valid(p.costs));
    CHECK_FALSE(p.adjustments.empty());
  }
}
