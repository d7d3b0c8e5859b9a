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
#pragma once

#include <array>
#include <cstddef>
#include <string>

#include "dualpipe/analysis/costs.hpp"
#include "dualpipe/analysis/simulator.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/trace.hpp"

namespace dualpipe {

/// Measured and simulated figures of one step, side by side.
struct ProfileReport {
  Costs costs;                    ///< F, B, W, FB (and latency) estimated from the measured spans, in its time unit.
  std::array<std::size_t, 5> samples{};  ///< Compute spans averaged per kind: F, B, Bw, W, FB.
  Timeline simulated;             ///< The trace simulated with `costs`.
  double measured_bubble = 0;     ///< Bubble ratio of the measured timeline (Timeline::bubble_ratio).
  double simulated_bubble = 0;    ///< Bubble ratio of the simulated one.
  double measured_makespan = 0;   ///< Measured step time (the measured timeline's unit: seconds when recorded).
  double simulated_makespan = 0;  ///< Simulated step time, same unit.
  double chunks_per_second = 0;   ///< Measured throughput: chunks / measured makespan (per time unit).
};

/// Costs from a measured timeline: the mean duration of its compute spans per op kind. A deferred
/// backward's input part costs backward - weight in the simulator, so B comes from the full B spans when
/// there are any, else from Bw + W; W from the W spans (0 without any, and at most B); FB from the FB
/// spans, else F + B. Kinds that never ran cost 0 (they do not occur in the simulation either).
/// Fills `samples` (F, B, Bw, W, FB counts) when given.
[[nodiscard]] inline Costs estimate_costs(const Timeline& measured, std::array<std::size_t, 5>* samples = nullptr) {
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
  if (c.weight > c.backward) c.weight = c.backward;  // the simulator's rule: Bw costs B - W >= 0
  c.forward_backward = n[4] > 0 ? mean(4) : c.forward + c.backward;
  if (samples) *samples = n;
  return c;
}

/// Profiles one measured step of `trace` (same schedule, ranks, chunks and mode): estimates the costs
/// (estimate_costs), simulates the trace with them under `model` and a transfer cost of
/// `transfer_latency` (in the measured unit), and reports both bubbles, both makespans and the measured
/// throughput. Throws ConfigError when the timeline and the trace do not describe the same step, and
/// whatever simulate() throws for an invalid trace.
[[nodiscard]] inline ProfileReport profile_step(const Timeline& measured, const Trace& trace,
                                                CommModel model = CommModel::async, double transfer_latency = 0) {
  if (measured.ranks != trace.ranks || measured.chunks != trace.chunks || measured.mode != trace.mode ||
      measured.spans.size() != static_cast<std::size_t>(trace.ranks))
    throw ConfigError("profile_step: the measured timeline (" + std::to_string(measured.ranks) + " ranks, " +
                      std::to_string(measured.spans.size()) + " span lists, " + std::to_string(measured.chunks) +
                      " chunks) is not a step of the trace (" + std::to_string(trace.ranks) + " ranks, " +
                      std::to_string(trace.chunks) + " chunks" +
                      (measured.mode != trace.mode ? ", another mode" : "") + ")");
  ProfileReport p;
  p.costs = estimate_costs(measured, &p.samples);
  p.costs.latency = transfer_latency;
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
