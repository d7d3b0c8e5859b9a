// dualpipe/analysis/profile.hpp: a measured step next to its simulation.
//
//   Timeline measured = merge_timelines("dualpipe", C, Mode::train, results);   // recorder.hpp
//   ProfileReport p = profile_step(measured, make_trace(ScheduleKind::dualpipe, P, C));
//   // p.costs: F, B, W, FB estimated from the measured spans; p.simulated: the same trace under those costs
//
// The costs are the mean duration of the measured compute spans of each op kind; the simulator
// (analysis/simulator.hpp, the async model by default: posts launch when issued, as in the runtime) then
// says what the step would take if every op of a kind took exactly that long and communication were
// free (or cost `transfer_latency`). The gap between the measured and the simulated bubble is what the
// schedule's model does not explain: variance of op times, communication, host overhead.
//
// Measured times are noisy (W timed alone can exceed the B it is part of; two streams' clocks can make a
// span end before it starts), and a profile must never fail on them: fit_measured_costs turns any measured
// costs into ones the simulator accepts and lists what it changed and why (ProfileReport::adjustments).
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/analysis/costs.hpp"
#include "dualpipe/analysis/simulator.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/core/trace.hpp"

namespace dualpipe {

/// A measured cost that the simulator could not take as it was, and the value used instead.
struct CostAdjustment {
  std::string cost;     ///< "F", "B", "W", "FB", "latency", "bytes" or "bandwidth".
  double measured = 0;  ///< What the measurement gave.
  double used = 0;      ///< What the simulation used.
  std::string reason;   ///< Why, in words.
};

/// "W: measured 0.00122, used 0.000781 (W must not exceed B ...)".
[[nodiscard]] inline std::string to_string(const CostAdjustment& a) {
  char buf[96];
  std::snprintf(buf, sizeof buf, ": measured %g, used %g (", a.measured, a.used);
  return a.cost + buf + a.reason + ")";
}

/// Measured costs as the simulator accepts them, and what was changed to get there (empty: nothing).
struct FittedCosts {
  Costs costs;
  std::vector<CostAdjustment> adjustments;
};

/// Turns measured costs into costs the simulator accepts (check_costs passes), never throwing: a value that
/// is not a finite number (a kind never timed, a span without an end) is taken as 0; a negative one (clocks
/// of two streams that disagree by more than the op took) as 0; W above B (each timed with its own noise,
/// or W timed apart from the B it is part of) as B, so that a deferred backward's input part, B - W, costs
/// 0 rather than less. Each change is listed in `adjustments` with its reason.
[[nodiscard]] inline FittedCosts fit_measured_costs(const Costs& measured) {
  FittedCosts out{measured, {}};
  auto fit = [&](const char* name, double& v) {
    if (!std::isfinite(v)) {
      out.adjustments.push_back({name, v, 0.0, "not a finite number: taken as 0"});
      v = 0;
    } else if (v < 0) {
      out.adjustments.push_back({name, v, 0.0, "a time or size cannot be negative: taken as 0"});
      v = 0;
    }
  };
  Costs& c = out.costs;
  fit("F", c.forward);
  fit("B", c.backward);
  fit("W", c.weight);
  fit("FB", c.forward_backward);
  fit("latency", c.latency);
  fit("bytes", c.bytes);
  fit("bandwidth", c.bandwidth);
  if (c.weight > c.backward) {
    out.adjustments.push_back({"W", c.weight, c.backward,
                               "W must not exceed B, since a deferred backward's input part costs B-W: W taken as B"});
    c.weight = c.backward;
  }
  return out;
}

namespace detail {

/// The mean duration of the measured compute spans per op kind, as they are (see estimate_costs).
[[nodiscard]] inline Costs mean_costs(const Timeline& measured, std::array<std::size_t, 5>* samples) {
  std::array<double, 5> sum{};
  std::array<std::size_t, 5> n{};
  for (const auto& rank : measured.spans)
    for (const Span& s : rank) {
      if (s.lane != Span::Lane::compute) continue;
      std::size_t k = 0;
      switch (s.op.kind) {
        case OpKind::forward: k = 0; break;
        case OpKind::backward: k = 1; break;
        case OpKind::backward_input: k = 2; break;
        case OpKind::weight: k = 3; break;
        case OpKind::forward_backward: k = 4; break;
        default: continue;
      }
      sum[k] += s.duration();
      ++n[k];
    }
  auto mean = [&](std::size_t k) { return n[k] > 0 ? sum[k] / static_cast<double>(n[k]) : 0.0; };
  Costs c;
  c.forward = mean(0);
  c.weight = mean(3);
  c.backward = n[1] > 0 ? mean(1) : (n[2] > 0 ? mean(2) + c.weight : 0.0);
  c.forward_backward = n[4] > 0 ? mean(4) : c.forward + c.backward;
  if (samples) *samples = n;
  return c;
}

}  // namespace detail

/// Measured and simulated figures of one step, side by side.
struct ProfileReport {
  Costs costs;  ///< F, B, W, FB (and latency) estimated from the measured spans, in its time unit.
  std::array<std::size_t, 5> samples{};  ///< Compute spans averaged per kind: F, B, Bw, W, FB.
  std::vector<CostAdjustment>
      adjustments;                ///< Estimates the simulator could not take as measured (fit_measured_costs).
  Timeline simulated;             ///< The trace simulated with `costs`.
  double measured_bubble = 0;     ///< Bubble ratio of the measured timeline (Timeline::bubble_ratio).
  double simulated_bubble = 0;    ///< Bubble ratio of the simulated one.
  double measured_makespan = 0;   ///< Measured step time (the measured timeline's unit: seconds when recorded).
  double simulated_makespan = 0;  ///< Simulated step time, same unit.
  double chunks_per_second = 0;   ///< Measured throughput: chunks / measured makespan (per time unit).
};

/// Costs from a measured timeline: the mean duration of its compute spans per op kind. A deferred
/// backward's input part costs backward - weight in the simulator, so B comes from the full B spans when
/// there are any, else from Bw + W; W from the W spans (0 without any); FB from the FB spans, else F + B.
/// Kinds that never ran cost 0 (they do not occur in the simulation either). The means then go through
/// fit_measured_costs (W at most B, nothing negative or not finite), so the result is always valid.
/// Fills `samples` (F, B, Bw, W, FB counts) when given.
[[nodiscard]] inline Costs estimate_costs(const Timeline& measured, std::array<std::size_t, 5>* samples = nullptr) {
  return fit_measured_costs(detail::mean_costs(measured, samples)).costs;
}

/// Profiles one measured step of `trace` (same schedule, ranks, chunks and mode): estimates the costs
/// (estimate_costs), simulates the trace with them under `model` and a transfer cost of
/// `transfer_latency` (in the measured unit), and reports both bubbles, both makespans and the measured
/// throughput. Measured times never make it throw: costs the simulator cannot take are fitted
/// (fit_measured_costs) and listed in `adjustments`. Throws ConfigError when the timeline and the trace do
/// not describe the same step, and whatever simulate() throws for an invalid trace.
[[nodiscard]] inline ProfileReport profile_step(const Timeline& measured, const Trace& trace,
                                                CommModel model = CommModel::async, double transfer_latency = 0) {
  if (measured.ranks != trace.ranks || measured.chunks != trace.chunks || measured.mode != trace.mode ||
      measured.spans.size() != static_cast<std::size_t>(trace.ranks))
    throw ConfigError("profile_step: the measured timeline (" + std::to_string(measured.ranks) + " ranks, " +
                      std::to_string(measured.spans.size()) + " span lists, " + std::to_string(measured.chunks) +
                      " chunks) is not a step of the trace (" + std::to_string(trace.ranks) + " ranks, " +
                      std::to_string(trace.chunks) + " chunks" + (measured.mode != trace.mode ? ", another mode" : "") +
                      ")");
  ProfileReport p;
  Costs means = detail::mean_costs(measured, &p.samples);
  means.latency = transfer_latency;
  FittedCosts fitted = fit_measured_costs(means);
  p.costs = fitted.costs;
  p.adjustments = std::move(fitted.adjustments);
  p.simulated = simulate(trace, p.costs, model);
  p.simulated.time_unit = measured.time_unit;
  p.measured_bubble = measured.bubble_ratio();
  p.simulated_bubble = p.simulated.bubble_ratio();
  p.measured_makespan = measured.makespan();
  p.simulated_makespan = p.simulated.makespan();
  p.chunks_per_second = p.measured_makespan > 0 ? static_cast<double>(measured.chunks) / p.measured_makespan : 0.0;
  return p;
}

}  // namespace dualpipe
