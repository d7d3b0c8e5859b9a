// moe_demo/moe_run.hpp: one schedule of dualpipe-moe-demo on a P x E grid (pp x ep), what each rank
// measures, and the report built from every rank's summary against the sequential run.
//
// Each rank: its pipeline's stages (MoeStage) on its ep coordinate's tokens, two Pipelines over the same
// stages (overlap on and overlap off, PipelineOptions::overlap_phases), then
//   `repeats` rounds of one step with overlap on and one with overlap off (the first round is a warm-up):
//   the FB, F, B and W op times, and per FB (overlap on) its phases' compute and how much of its exchanges
//   ran while the other chunk computed;
//   one checked step with the overlap the command line asked for: its losses and gradients, and its
//   timeline (drawn with --trace-dir).
// A rank's summary is a flat vector of doubles (flatten below), so that the in-process run and the MPI run
// (moe_mpi.hpp, gathered to rank 0) build the same report from the same numbers: the result line is the
// same bit for bit both ways (its timing fields aside).
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dualpipe/comm/expert_link.hpp"
#include "dualpipe/comm/inprocess_expert.hpp"
#include "dualpipe/comm/inprocess_grid.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/runtime/recorder.hpp"
#include "dualpipe/runtime/run_ranks.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "example_cli.hpp"
#include "moe_model.hpp"
#include "moe_sequential.hpp"
#include "moe_stage.hpp"

namespace dualpipe::moe_demo {

/// One run of the demo.
struct MoeConfig {
  ScheduleKind schedule = ScheduleKind::dualpipe;
  int ranks = 2;        ///< P: pipeline ranks.
  MoeSpec spec;         ///< ep, layers, sizes, chunks; stages is set from the schedule.
  ExpertLink link;      ///< The modelled link of every all-to-all.
  bool overlap = true;  ///< The checked step's overlap (the timing rounds run both).
  int repeats = 3;      ///< Timing rounds (each: one step with overlap on, one off); the first is a warm-up.
  std::chrono::milliseconds timeout{60'000};
  int inject_failure = -1;  ///< Grid rank whose module 0 throws inside the dispatch of chunk 1, layer 0.
  std::string comm = "inproc";
  double tolerance = 1e-12;
};

/// The grid: ep fastest, so grid rank g is (pp g / E, ep g % E).
[[nodiscard]] inline ProcessGrid moe_grid(const MoeConfig& c) {
  return ProcessGrid(c.ranks * c.spec.ep, GridSizes{.pp = c.ranks, .ep = c.spec.ep}, "ep,pp");
}

/// Throws ConfigError naming the rule and the values unless `c` can run; sets c.spec.stages.
inline void validate(MoeConfig& c) {
  auto fail = [](const std::string& what) { throw ConfigError("moe demo: " + what); };
  if (c.ranks < 1 || c.ranks > 64) fail("ranks must be in [1, 64] (got ranks=" + std::to_string(c.ranks) + ")");
  if (c.spec.ep < 1 || c.spec.ep > 64) fail("ep must be in [1, 64] (got ep=" + std::to_string(c.spec.ep) + ")");
  if (c.ranks * c.spec.ep > 256)
    fail("ranks x ep must be at most 256 (got " + std::to_string(c.ranks) + " x " + std::to_string(c.spec.ep) + ")");
  if (c.spec.experts() < 2)
    fail("top-2 routing needs at least 2 experts: ep x experts-per-rank (got " + std::to_string(c.spec.ep) + " x " +
         std::to_string(c.spec.experts_per_rank) + ")");
  check_config(c.schedule, c.ranks, c.spec.chunks);
  c.spec.stages = visit_schedule(
      c.schedule, [&](auto s) { return decltype(s)::placement(c.ranks, c.spec.chunks, 0, 0).num_stages; });
  const double values = double(c.spec.stages) * c.spec.layers * double(layer_values(c.spec));
  if (values > 64.0 * 1024 * 1024)
    fail("the model's gradients must fit in 512 MiB (stages x layers x sizes too large)");
  if (c.inject_failure < -1 || c.inject_failure >= c.ranks * c.spec.ep)
    fail("the failing rank (a grid rank) must be in [0, ranks x ep) (got " + std::to_string(c.inject_failure) + ")");
  if (c.timeout.count() < 1) fail("timeout must be at least 1 ms");
  if (c.repeats < 2) fail("repeats must be at least 2 (the first round is a warm-up)");
}

/// What a rank measured (sums over the timing rounds after the first).
struct RankTimes {
  double fb_on = 0, fb_on_n = 0, fb_off = 0, fb_off_n = 0;  ///< FB op seconds, overlap on / off
  double f = 0, f_n = 0, b = 0, b_n = 0, w = 0, w_n = 0;    ///< F, B (and B..w), W op seconds (both modes)
  double fb_compute = 0;                                    ///< FB compute phases' seconds (overlap on)
  double exchange = 0, hidden = 0;  ///< FB exchanges' seconds (overlap on) and the part the other chunk computed
};

namespace detail {
inline constexpr std::size_t times_values = 13;

// Adds one step's op and phase times to `t`.
inline void add_times(RankTimes& t, const StepResult& r, bool overlap) {
  for (const Span& s : r.spans) {
    if (s.lane != Span::Lane::compute) continue;
    const double d = s.duration();
    switch (s.op.kind) {
      case OpKind::forward_backward:
        (overlap ? t.fb_on : t.fb_off) += d;
        (overlap ? t.fb_on_n : t.fb_off_n) += 1;
        break;
      case OpKind::forward: t.f += d, t.f_n += 1; break;
      case OpKind::backward:
      case OpKind::backward_input: t.b += d, t.b_n += 1; break;
      case OpKind::weight: t.w += d, t.w_n += 1; break;
      default: break;
    }
  }
  if (!overlap) return;
  // Which op indices are FBs (an index counts every op of the list, transfers and commits included).
  int last = 0;
  for (const Span& s : r.spans) last = std::max(last, s.index);
  std::vector<bool> in_fb(static_cast<std::size_t>(last) + 1, false);
  for (const Span& s : r.spans)
    if (s.op.kind == OpKind::forward_backward && s.index >= 0 && static_cast<std::size_t>(s.index) < in_fb.size())
      in_fb[static_cast<std::size_t>(s.index)] = true;
  auto fb = [&](int index) {
    return index >= 0 && static_cast<std::size_t>(index) < in_fb.size() && in_fb[static_cast<std::size_t>(index)];
  };
  for (const PhaseSpan& p : r.phase_spans) {
    if (!fb(p.index)) continue;
    if (p.what == PhaseSpan::What::compute) t.fb_compute += p.end - p.start;
    if (p.what != PhaseSpan::What::exchange) continue;
    t.exchange += p.end - p.start;
    for (const PhaseSpan& q : r.phase_spans)
      if (q.index == p.index && q.second_lane != p.second_lane && q.what == PhaseSpan::What::compute)
        t.hidden += std::max(0.0, std::min(p.end, q.end) - std::max(p.start, q.start));
  }
}
}  // namespace detail

/// A rank's summary: [times (13)] [losses (C; NaN where none)] [held chunks] then per module [stage] and its
/// layers' gradients (Wd, Wr, Ws1, Ws2, the X held experts' W1, then their W2).
template <class EC>
[[nodiscard]] std::vector<double> flatten(const RankTimes& t, const StepResult& checked,
                                          const std::vector<std::unique_ptr<MoeStage<EC>>>& stages) {
  std::vector<double> v{t.fb_on, t.fb_on_n, t.fb_off, t.fb_off_n,   t.f,        t.f_n,   t.b,
                        t.b_n,   t.w,       t.w_n,    t.fb_compute, t.exchange, t.hidden};
  v.insert(v.end(), checked.losses.begin(), checked.losses.end());
  double held = 0;
  for (const auto& s : stages) held += static_cast<double>(s->held());
  v.push_back(held);
  for (const auto& s : stages) {
    v.push_back(s->stage());
    for (const LayerParams& g : s->grads()) {
      v.insert(v.end(), g.wd.begin(), g.wd.end());
      v.insert(v.end(), g.wr.begin(), g.wr.end());
      v.insert(v.end(), g.ws1.begin(), g.ws1.end());
      v.insert(v.end(), g.ws2.begin(), g.ws2.end());
      for (const auto& w : g.w1) v.insert(v.end(), w.begin(), w.end());
      for (const auto& w : g.w2) v.insert(v.end(), w.begin(), w.end());
    }
  }
  return v;
}

/// Values in one rank's summary under `Schedule`.
[[nodiscard]] inline std::size_t summary_values(const MoeConfig& c, int modules) {
  const MoeSpec& s = c.spec;
  const auto h = static_cast<std::size_t>(s.hidden), f = static_cast<std::size_t>(s.ffn),
             n = static_cast<std::size_t>(s.experts()), x = static_cast<std::size_t>(s.experts_per_rank);
  const std::size_t per_layer = h * h + h * n + 2 * h * f + 2 * x * h * f;
  return detail::times_values + static_cast<std::size_t>(s.chunks) + 1 +
         static_cast<std::size_t>(modules) * (1 + static_cast<std::size_t>(s.layers) * per_layer);
}

/// What one rank returns: its summary, and the checked step's result (for the drawing).
struct RankRun {
  std::vector<double> summary;
  StepResult checked;
};

/// The work of grid rank `g` (pipeline communicator `pp`, expert communicator `ec`) under `Schedule`.
template <class Schedule, class Comm, class EC>
[[nodiscard]] RankRun run_rank(Comm& pp, EC& ec, const MoeConfig& c, int g) {
  using Stage = MoeStage<EC>;
  using Pipe = Pipeline<Schedule, Comm, Stage>;
  constexpr int M = Schedule::modules_per_rank;
  const ProcessGrid grid = moe_grid(c);
  const int p = grid.coord(g, GridDim::pp), e = grid.coord(g, GridDim::ep);
  std::vector<std::unique_ptr<Stage>> stages;
  std::array<Stage*, M> ptrs{};
  for (int m = 0; m < M; ++m) {
    stages.push_back(std::make_unique<Stage>(c.spec, Schedule::placement(c.ranks, c.spec.chunks, p, m).stage, e, ec));
    stages.back()->timeout = c.timeout;
    ptrs[static_cast<std::size_t>(m)] = stages.back().get();
  }
  PipelineOptions on, off;
  on.timeout = off.timeout = c.timeout;
  off.overlap_phases = false;
  Pipe pipe_on(pp, ptrs, on), pipe_off(pp, ptrs, off);
  std::vector<double> inputs, labels;
  for (int k = 0; k < c.spec.chunks; ++k) {
    const std::vector<double> x = chunk_data(c.spec, t_input, e, k), y = chunk_data(c.spec, t_label, e, k);
    inputs.insert(inputs.end(), x.begin(), x.end());
    labels.insert(labels.end(), y.begin(), y.end());
  }
  const ConstBytes in = std::as_bytes(std::span(inputs)), lab = std::as_bytes(std::span(labels));
  if (g == c.inject_failure) stages[0]->inject_failure(std::min(1, c.spec.chunks - 1), 0);
  RankTimes times;
  for (int round = 0; round < c.repeats; ++round)
    for (bool overlap : {true, false}) {
      const StepResult r = (overlap ? pipe_on : pipe_off).step(c.spec.chunks, in, lab);
      if (round > 0) detail::add_times(times, r, overlap);
      for (auto& s : stages) s->zero_grad();
    }
  RankRun out;
  out.checked = (c.overlap ? pipe_on : pipe_off).step(c.spec.chunks, in, lab);
  out.summary = flatten(times, out.checked, stages);
  return out;
}

/// What one schedule's run found.
struct MoeReport {
  std::string schedule, comm;
  int ranks = 0, ep = 0, chunks = 0, stages = 0;
  bool overlap = true;
  double loss_sum = 0, grad_norm = 0, max_rel_err = 0, tolerance = 1e-12;
  bool has_fb = false;
  double fb_on_ms = 0, fb_off_ms = 0, f_ms = 0, b_ms = 0, w_ms = 0, fb_compute_ms = 0;
  double a2a_hidden = 0;  ///< Fraction of the FBs' exchange time the other chunk computed through (overlap on).
  double a2a_ms = 0;      ///< Mean exchange time per FB (overlap on).
  std::vector<std::string> problems;
  std::vector<StepResult> checked;  ///< The checked step of every grid rank (gathered to rank 0 under MPI).
  [[nodiscard]] bool pass() const noexcept { return problems.empty() && max_rel_err <= tolerance; }
  [[nodiscard]] double fb_speedup() const noexcept { return fb_on_ms > 0 ? fb_off_ms / fb_on_ms : 0.0; }
};

/// The result line (see --help); fb_speedup and a2a_hidden are n/a for a schedule without FB ops.
[[nodiscard]] inline std::string result_line(const MoeReport& r) {
  char hidden[32], speedup[32], buf[640];
  if (r.has_fb) {
    std::snprintf(hidden, sizeof hidden, "%.2f", r.a2a_hidden);
    std::snprintf(speedup, sizeof speedup, "%.2f", r.fb_speedup());
  } else {
    std::snprintf(hidden, sizeof hidden, "n/a");
    std::snprintf(speedup, sizeof speedup, "n/a");
  }
  std::snprintf(buf, sizeof buf,
                "result: schedule=%s ranks=%d ep=%d chunks=%d comm=%s overlap=%s loss_sum=%.17g grad_norm=%.17g "
                "max_rel_err=%.3g a2a_hidden=%s fb_speedup=%s check=%s",
                r.schedule.c_str(), r.ranks, r.ep, r.chunks, r.comm.c_str(), r.overlap ? "on" : "off", r.loss_sum,
                r.grad_norm, r.max_rel_err, hidden, speedup, r.pass() ? "pass" : "FAIL");
  return buf;
}

/// Builds the report from every grid rank's summary (in grid-rank order) and the sequential run.
[[nodiscard]] inline MoeReport make_report(const MoeConfig& c, int modules,
                                           const std::vector<std::vector<double>>& ranks, const SequentialResult& seq) {
  const MoeSpec& s = c.spec;
  const ProcessGrid grid = moe_grid(c);
  MoeReport r;
  r.schedule = std::string(schedule_name(c.schedule));
  r.comm = c.comm;
  r.ranks = c.ranks;
  r.ep = s.ep;
  r.chunks = s.chunks;
  r.stages = s.stages;
  r.overlap = c.overlap;
  r.tolerance = c.tolerance;
  const auto C = static_cast<std::size_t>(s.chunks);
  const auto h = static_cast<std::size_t>(s.hidden), f = static_cast<std::size_t>(s.ffn),
             n = static_cast<std::size_t>(s.experts()), X = static_cast<std::size_t>(s.experts_per_rank);
  std::vector<double> losses(static_cast<std::size_t>(s.ep) * C, 0.0), grads(seq.grads.size(), 0.0);
  std::vector<int> computed(losses.size(), 0);
  RankTimes t;
  for (std::size_t g = 0; g < ranks.size(); ++g) {
    const std::vector<double>& v = ranks[g];
    if (v.size() != summary_values(c, modules)) {
      r.problems.push_back("grid rank " + std::to_string(g) + " sent " + std::to_string(v.size()) +
                           " values, expected " + std::to_string(summary_values(c, modules)));
      continue;
    }
    const double* x = v.data();
    t.fb_on += x[0], t.fb_on_n += x[1], t.fb_off += x[2], t.fb_off_n += x[3], t.f += x[4], t.f_n += x[5];
    t.b += x[6], t.b_n += x[7], t.w += x[8], t.w_n += x[9], t.fb_compute += x[10], t.exchange += x[11],
        t.hidden += x[12];
    x += detail::times_values;
    const int e = grid.coord(static_cast<int>(g), GridDim::ep);
    for (std::size_t k = 0; k < C; ++k, ++x)
      if (!std::isnan(*x)) {
        losses[static_cast<std::size_t>(e) * C + k] += *x;
        ++computed[static_cast<std::size_t>(e) * C + k];
      }
    if (*x++ != 0) r.problems.push_back("grid rank " + std::to_string(g) + " still holds chunk state after the step");
    for (int m = 0; m < modules; ++m) {
      const int stage = static_cast<int>(*x++);
      for (int l = 0; l < s.layers; ++l) {
        const LayerOffsets o = layer_offsets(s, stage, l);
        for (std::size_t i = 0; i < h * h; ++i) grads[o.wd + i] += *x++;
        for (std::size_t i = 0; i < h * n; ++i) grads[o.wr + i] += *x++;
        for (std::size_t i = 0; i < h * f; ++i) grads[o.ws1 + i] += *x++;
        for (std::size_t i = 0; i < h * f; ++i) grads[o.ws2 + i] += *x++;
        for (std::size_t j = 0; j < X; ++j)
          for (std::size_t i = 0; i < h * f; ++i)
            grads[o.w1 + (static_cast<std::size_t>(e) * X + j) * h * f + i] += *x++;
        for (std::size_t j = 0; j < X; ++j)
          for (std::size_t i = 0; i < h * f; ++i)
            grads[o.w2 + (static_cast<std::size_t>(e) * X + j) * h * f + i] += *x++;
      }
    }
  }
  for (std::size_t i = 0; i < computed.size(); ++i)
    if (computed[i] != 1)
      r.problems.push_back("the loss of ep rank " + std::to_string(i / C) + "'s chunk " + std::to_string(i % C) +
                           " was computed " + std::to_string(computed[i]) + " times (expected once)");
  r.max_rel_err = examples::relative_error(losses, seq.losses);
  for (int st = 0; st < s.stages; ++st)
    for (int l = 0; l < s.layers; ++l) {
      const LayerOffsets o = layer_offsets(s, st, l);
      auto check = [&](std::size_t at, std::size_t count) {
        r.max_rel_err = std::max(r.max_rel_err, examples::relative_error(std::span(grads).subspan(at, count),
                                                                         std::span(seq.grads).subspan(at, count)));
      };
      check(o.wd, h * h);
      check(o.wr, h * n);
      check(o.ws1, h * f);
      check(o.ws2, h * f);
      for (std::size_t j = 0; j < n; ++j) {
        check(o.w1 + j * h * f, h * f);
        check(o.w2 + j * h * f, h * f);
      }
    }
  for (double l : losses) r.loss_sum += l;
  double sq = 0;
  for (double gv : grads) sq += gv * gv;
  r.grad_norm = std::sqrt(sq);
  auto mean_ms = [](double sum, double count) { return count > 0 ? 1e3 * sum / count : 0.0; };
  r.has_fb = t.fb_on_n > 0 && t.fb_off_n > 0;
  r.fb_on_ms = mean_ms(t.fb_on, t.fb_on_n);
  r.fb_off_ms = mean_ms(t.fb_off, t.fb_off_n);
  r.f_ms = mean_ms(t.f, t.f_n);
  r.b_ms = mean_ms(t.b, t.b_n);
  r.w_ms = mean_ms(t.w, t.w_n);
  r.fb_compute_ms = mean_ms(t.fb_compute, t.fb_on_n);
  r.a2a_ms = mean_ms(t.exchange, t.fb_on_n);
  r.a2a_hidden = t.exchange > 0 ? std::min(1.0, t.hidden / t.exchange) : 0.0;
  return r;
}

/// The checked step's timeline as doubles (for a gather to the printing rank): [rank, chunks, clock_start,
/// spans, phase spans], then 9 values per span and 10 per phase span.
[[nodiscard]] inline std::vector<double> flatten_timeline(const StepResult& r) {
  std::vector<double> v{double(r.rank), double(r.chunks), r.clock_start, double(r.spans.size()),
                        double(r.phase_spans.size())};
  for (const Span& s : r.spans)
    v.insert(v.end(), {double(s.op.kind), double(s.op.module), double(s.op.module1), double(s.op.chunk),
                       double(s.op.chunk1), s.start, s.end, double(s.lane), double(s.index)});
  for (const PhaseSpan& p : r.phase_spans)
    v.insert(v.end(), {double(p.index), double(p.module), double(p.chunk), double(p.layer), double(p.phase),
                       double(p.pass), double(p.what), p.second_lane ? 1.0 : 0.0, p.start, p.end});
  return v;
}

/// The inverse of flatten_timeline; `name(pass, phase)` gives a phase's name back.
template <class Name>
[[nodiscard]] StepResult unflatten_timeline(const std::vector<double>& v, Name name) {
  StepResult r;
  if (v.size() < 5) return r;
  r.rank = static_cast<int>(v[0]);
  r.chunks = static_cast<int>(v[1]);
  r.clock_start = v[2];
  const auto spans = static_cast<std::size_t>(v[3]), phases = static_cast<std::size_t>(v[4]);
  if (v.size() != 5 + 9 * spans + 10 * phases) return r;
  const double* x = v.data() + 5;
  for (std::size_t i = 0; i < spans; ++i, x += 9) {
    Span s;
    s.op.kind = static_cast<OpKind>(x[0]);
    s.op.module = static_cast<std::int16_t>(x[1]);
    s.op.module1 = static_cast<std::int16_t>(x[2]);
    s.op.chunk = static_cast<std::int32_t>(x[3]);
    s.op.chunk1 = static_cast<std::int32_t>(x[4]);
    s.start = x[5];
    s.end = x[6];
    s.lane = static_cast<Span::Lane>(x[7]);
    s.index = static_cast<int>(x[8]);
    r.spans.push_back(s);
  }
  for (std::size_t i = 0; i < phases; ++i, x += 10) {
    PhaseSpan p;
    p.index = static_cast<int>(x[0]);
    p.module = static_cast<int>(x[1]);
    p.chunk = static_cast<int>(x[2]);
    p.layer = static_cast<int>(x[3]);
    p.phase = static_cast<int>(x[4]);
    p.pass = static_cast<Pass>(x[5]);
    p.what = static_cast<PhaseSpan::What>(x[6]);
    p.second_lane = x[7] != 0;
    p.name = name(p.pass, p.phase);
    p.start = x[8];
    p.end = x[9];
    r.phase_spans.push_back(p);
  }
  return r;
}

/// Runs `c` with one thread per grid rank (P x E threads).
[[nodiscard]] inline MoeReport run_inproc(MoeConfig c) {
  c.comm = "inproc";
  validate(c);
  const SequentialResult seq = run_sequential(c.spec);
  return visit_schedule(c.schedule, [&](auto schedule) {
    using Schedule = decltype(schedule);
    const ProcessGrid grid = moe_grid(c);
    InProcessGrid comms(grid);
    InProcessExpertGroups experts(grid);
    const int n = grid.world_size();
    std::vector<std::unique_ptr<LinkedExpertComm<InProcessExpertComm>>> linked;
    for (int g = 0; g < n; ++g)
      linked.push_back(std::make_unique<LinkedExpertComm<InProcessExpertComm>>(experts.comm(g), c.link));
    std::vector<RankRun> runs(static_cast<std::size_t>(n));
    run_ranks(n, [&](int g) {
      runs[static_cast<std::size_t>(g)] =
          run_rank<Schedule>(comms.communicator(GridDim::pp, g), *linked[static_cast<std::size_t>(g)], c, g);
    });
    std::vector<std::vector<double>> summaries;
    for (RankRun& rr : runs) summaries.push_back(std::move(rr.summary));
    MoeReport r = make_report(c, Schedule::modules_per_rank, summaries, seq);
    for (RankRun& rr : runs) r.checked.push_back(std::move(rr.checked));
    return r;
  });
}

}  // namespace dualpipe::moe_demo
