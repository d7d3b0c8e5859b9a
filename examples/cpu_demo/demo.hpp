// cpu_demo/demo.hpp: the demo's core. Trains the MLP with one schedule on P ranks and checks every step
// against the sequential run.
//
// The per-rank work, run_rank<Schedule>(comm, config, sequential), is templated on the communicator and
// uses nothing but it to talk to other ranks: after each step the copies of a stage (DualPipe holds each
// stage on two ranks) swap their gradients and every copy adds them in the same fixed order (holders sorted
// by rank, then module), so the copies stay identical bit for bit; at the end every rank sends a summary to
// rank 0, which alone builds the DemoReport. The same function therefore runs one rank per thread
// (run_demo_inproc, InProcessWorld) or one rank per process (an MPI communicator), with the same bits.
//
// What is checked, every step (max relative error as in relative_error(): normwise, max |a-b| / max |b|):
//   - the chunk losses (one vector of C per step) against the sequential run's, and that every chunk's loss
//     was computed by exactly one rank;
//   - every stage's gradient summed over its copies, W1 and W2 separately, against the sequential run's;
//   - after the last step, every copy's parameters against the sequential run's (so the SGD updates agree);
//   - that no stage holds a chunk's state after a step (every forward met its weight gradient).
// The result line's numbers are deterministic: loss_sum adds the last step's chunk losses in batch-chunk
// order; grad_norm is sqrt of the sum over stages (in stage order) of each summed gradient's sum of squares.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "dualpipe/core/timeline.hpp"
#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/analysis/profile.hpp"
#include "dualpipe/runtime/run_ranks.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "mlp_stage.hpp"
#include "sequential.hpp"

namespace dualpipe::cpu_demo {

/// One run of the demo: a schedule, its ranks, the model and the checks.
struct DemoConfig {
  ScheduleKind schedule = ScheduleKind::dualpipe;
  int ranks = 4;                                  ///< P (pipeline ranks of this schedule).
  ModelSpec model;                                ///< Width, rows, chunks, steps, seed, learning rate.
  std::chrono::milliseconds timeout{60'000};      ///< Bound on every wait (PipelineOptions::timeout).
  int inject_failure = -1;                        ///< Rank whose module 0 throws mid-way through step 0; -1: none.
  double tolerance = 1e-12;                       ///< Largest max relative error that passes.
  std::string comm = "inproc";                    ///< Communicator name for the report ("mpi" with one rank per process).
};

/// Where every copy of every stage sits, for schedule `Schedule` on (P, C).
struct StageLayout {
  struct Holder {
    int rank = 0;
    int module = 0;
  };
  int stages = 0;                                     ///< Model stages.
  std::vector<std::vector<ModulePlacement>> placement;  ///< [rank][module]
  std::vector<std::vector<Holder>> holders;           ///< [stage]: its copies, sorted by rank then module.
};

/// Builds the StageLayout of `Schedule` on (ranks, chunks). Throws ConfigError for an invalid configuration
/// or a layout the demo does not handle (a stage held twice by one rank).
template <class Schedule>
[[nodiscard]] StageLayout make_layout(int ranks, int chunks) {
  Schedule::check(ranks, chunks);
  StageLayout l;
  l.stages = Schedule::placement(ranks, chunks, 0, 0).num_stages;
  l.holders.resize(static_cast<std::size_t>(l.stages));
  for (int r = 0; r < ranks; ++r) {
    auto& row = l.placement.emplace_back();
    for (int m = 0; m < Schedule::modules_per_rank; ++m) {
      const ModulePlacement p = Schedule::placement(ranks, chunks, r, m);
      if (p.num_stages != l.stages || p.stage < 0 || p.stage >= l.stages)
        throw ConfigError("cpu demo: placement of rank " + std::to_string(r) + " module " + std::to_string(m) +
                          " names stage " + std::to_string(p.stage) + " of " + std::to_string(p.num_stages) +
                          " (expected one of " + std::to_string(l.stages) + ")");
      auto& h = l.holders[static_cast<std::size_t>(p.stage)];
      if (!h.empty() && h.back().rank == r)
        throw ConfigError("cpu demo: rank " + std::to_string(r) + " holds stage " + std::to_string(p.stage) +
                          " twice, which the gradient exchange does not handle");
      h.push_back({r, m});
      row.push_back(p);
    }
  }
  for (int s = 0; s < l.stages; ++s)
    if (l.holders[static_cast<std::size_t>(s)].empty())
      throw ConfigError("cpu demo: stage " + std::to_string(s) + " is held by no rank");
  return l;
}

/// Model stages of `kind` on (ranks, chunks): P, or 2P for DualPipeV. Throws ConfigError for bad (P, C).
[[nodiscard]] inline int stages_of(ScheduleKind kind, int ranks, int chunks) {
  return visit_schedule(kind, [&](auto s) { return decltype(s)::placement(ranks, chunks, 0, 0).num_stages; });
}

/// Throws ConfigError, naming the rule and the values, unless `cfg` can run. Nothing runs before it passes.
inline void validate(const DemoConfig& cfg) {
  auto fail = [](const std::string& what) { throw ConfigError("cpu demo: " + what); };
  const ModelSpec& m = cfg.model;
  if (cfg.ranks < 1 || cfg.ranks > 256) fail("ranks must be in [1, 256] (got ranks=" + std::to_string(cfg.ranks) + ")");
  if (m.chunks < 1 || m.chunks > 100'000) fail("chunks must be in [1, 100000] (got chunks=" + std::to_string(m.chunks) + ")");
  check_config(cfg.schedule, cfg.ranks, m.chunks);
  if (m.hidden < 1 || m.hidden > 4096) fail("hidden must be in [1, 4096] (got hidden=" + std::to_string(m.hidden) + ")");
  if (m.rows < 1 || m.rows > 1'000'000) fail("batch rows must be in [1, 1000000] (got rows=" + std::to_string(m.rows) + ")");
  if (m.steps < 1 || m.steps > 1'000'000) fail("steps must be in [1, 1000000] (got steps=" + std::to_string(m.steps) + ")");
  if (!std::isfinite(m.lr)) fail("the learning rate must be finite");
  if (cfg.timeout.count() < 1) fail("timeout must be at least 1 ms (got " + std::to_string(cfg.timeout.count()) + ")");
  if (cfg.inject_failure < -1 || cfg.inject_failure >= cfg.ranks)
    fail("the failing rank must be in [0, ranks) (got rank " + std::to_string(cfg.inject_failure) + ", ranks=" +
         std::to_string(cfg.ranks) + " for " + std::string(schedule_name(cfg.schedule)) + ")");
  const double limit = 2.0 * 1024 * 1024 * 1024;
  const int stages = stages_of(cfg.schedule, cfg.ranks, m.chunks);
  const double batch_bytes = 2.0 * static_cast<double>(m.chunk_values()) * m.chunks * sizeof(double);
  if (batch_bytes > limit) fail("a step's batch must fit in 2 GiB (chunks * rows * hidden too large)");
  if (sequential_run_bytes(m, stages) > limit)
    fail("the sequential check keeps every step's gradients, which must fit in 2 GiB (steps=" +
         std::to_string(m.steps) + ", stages=" + std::to_string(stages) + ", hidden=" + std::to_string(m.hidden) + ")");
}

/// One rank's part of the report.
struct RankReport {
  int rank = 0;
  double busy_seconds = 0;          ///< Compute time in the last step.
  double idle_seconds = 0;          ///< Last step's makespan minus busy_seconds.
  std::size_t peak_buffers = 0;     ///< Most chunk buffers in use at once, over all steps.
  long overlapped_calls = 0;        ///< FB ops run through MlpStage::forward_backward, over all steps.
  long fused_backward_calls = 0;    ///< B ops run through MlpStage::backward, over all steps.
  long deferred_weight_calls = 0;   ///< W ops (deferred weight gradients) run through backward_weight, over all steps.
};

/// What one run of the demo found (built on rank 0).
struct DemoReport {
  std::string schedule;
  std::string comm = "inproc";      ///< DemoConfig::comm.
  int ranks = 0;
  int chunks = 0;
  int stages = 0;
  int copies = 1;                    ///< Copies of each stage (2 for DualPipe).
  int steps = 0;
  double loss_sum = 0;               ///< Last step's chunk losses, added in batch-chunk order.
  double grad_norm = 0;              ///< L2 norm of every stage's summed gradient of the last step.
  double max_rel_err = 0;            ///< Over every check and step (see the file comment).
  double tolerance = 1e-12;
  std::vector<std::string> problems; ///< Failed checks in words; empty when the run passed.
  std::vector<double> step_seconds;  ///< Per step, the slowest rank's step time.
  std::vector<double> step_loss_sums;///< Per step, the chunk losses added in batch-chunk order.
  std::vector<RankReport> per_rank;
  Timeline timeline;                 ///< Measured timeline of the last step (merge_timelines).
  ProfileReport profile;             ///< The last step measured next to its simulation (profile_step).

  /// Every check passed.
  [[nodiscard]] bool pass() const noexcept { return problems.empty() && max_rel_err <= tolerance; }
};

/// The one line a run prints for scripts:
/// `result: schedule=<name> ranks=<P> chunks=<C> comm=<name> loss_sum=<%.17g> grad_norm=<%.17g> max_rel_err=<%.3g> check=<pass|FAIL>`
[[nodiscard]] inline std::string result_line(const DemoReport& r) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "result: schedule=%s ranks=%d chunks=%d comm=%s loss_sum=%.17g grad_norm=%.17g "
                "max_rel_err=%.3g check=%s", r.schedule.c_str(), r.ranks, r.chunks, r.comm.c_str(), r.loss_sum,
                r.grad_norm, r.max_rel_err, r.pass() ? "pass" : "FAIL");
  return buf;
}

/// The profile line a run prints under its table:
/// `profile: measured_bubble=<%.3f> simulated_bubble=<%.3f> measured_ms=<%.3f> simulated_ms=<%.3f> chunks_per_second=<%.1f>`
/// (simulated: the same trace with every op taking the mean measured time of its kind, free communication).
[[nodiscard]] inline std::string profile_line(const DemoReport& r) {
  char buf[256];
  const ProfileReport& p = r.profile;
  std::snprintf(buf, sizeof buf, "profile: measured_bubble=%.3f simulated_bubble=%.3f measured_ms=%.3f simulated_ms=%.3f "
                "chunks_per_second=%.1f", p.measured_bubble, p.simulated_bubble, p.measured_makespan * 1e3,
                p.simulated_makespan * 1e3, p.chunks_per_second);
  return buf;
}

namespace detail {

/// Appends plain values and arrays to a byte string (the summary each rank sends to rank 0).
class ByteWriter {
public:
  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    _bytes.insert(_bytes.end(), p, p + sizeof(T));
  }
  template <class T>
  void put_vector(const std::vector<T>& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    put(static_cast<std::uint64_t>(v.size()));
    const auto* p = reinterpret_cast<const std::byte*>(v.data());
    _bytes.insert(_bytes.end(), p, p + v.size() * sizeof(T));
  }
  void put_string(const std::string& s) { put_vector(std::vector<char>(s.begin(), s.end())); }
  [[nodiscard]] std::vector<std::byte>& bytes() noexcept { return _bytes; }

private:
  std::vector<std::byte> _bytes;
};

/// Reads what ByteWriter wrote; throws Error when the bytes run out.
class ByteReader {
public:
  explicit ByteReader(ConstBytes bytes) noexcept : _bytes(bytes) {}
  template <class T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    std::memcpy(&v, _take(sizeof(T)), sizeof(T));
    return v;
  }
  template <class T>
  std::vector<T> get_vector() {
    const auto n = get<std::uint64_t>();
    if (n > _bytes.size() / sizeof(T)) throw Error("cpu demo: malformed rank summary (vector too long)");
    std::vector<T> v(static_cast<std::size_t>(n));
    if (n) std::memcpy(v.data(), _take(static_cast<std::size_t>(n) * sizeof(T)), static_cast<std::size_t>(n) * sizeof(T));
    return v;
  }
  std::string get_string() {
    const auto v = get_vector<char>();
    return {v.begin(), v.end()};
  }

private:
  const std::byte* _take(std::size_t n) {
    if (n > _bytes.size() - _pos) throw Error("cpu demo: malformed rank summary (too short)");
    const std::byte* p = _bytes.data() + _pos;
    _pos += n;
    return p;
  }
  ConstBytes _bytes;
  std::size_t _pos = 0;
};

/// What each rank reports to rank 0 at the end.
struct RankSummary {
  int rank = 0;
  double max_rel_err = 0;             // local checks: summed gradients, final parameters
  std::vector<double> losses;         // steps x C, step after step (NaN where this rank computed none)
  std::vector<double> step_seconds;   // per step
  std::vector<int> sumsq_stages;      // stages whose canonical copy (first holder) is on this rank ...
  std::vector<double> sumsq_values;   // ... and the sum of squares of their summed gradient, last step
  StepResult last;                    // the last step (spans, peak buffers, clocks)
  std::uint64_t peak_buffers = 0;     // over all steps
  long overlapped_calls = 0, fused_backward_calls = 0, deferred_weight_calls = 0;
  std::string problems;               // failed local checks, one per line

  [[nodiscard]] std::vector<std::byte> serialize() const {
    ByteWriter w;
    w.put(rank);
    w.put(max_rel_err);
    w.put_vector(losses);
    w.put_vector(step_seconds);
    w.put_vector(sumsq_stages);
    w.put_vector(sumsq_values);
    w.put(last.rank);
    w.put(last.chunks);
    w.put_vector(last.spans);
    w.put(static_cast<std::uint64_t>(last.peak_buffers_in_use));
    w.put(last.step_seconds);
    w.put(last.clock_start);
    w.put(peak_buffers);
    w.put(overlapped_calls);
    w.put(fused_backward_calls);
    w.put(deferred_weight_calls);
    w.put_string(problems);
    return std::move(w.bytes());
  }
  static RankSummary deserialize(ConstBytes bytes) {
    ByteReader rd(bytes);
    RankSummary s;
    s.rank = rd.get<int>();
    s.max_rel_err = rd.get<double>();
    s.losses = rd.get_vector<double>();
    s.step_seconds = rd.get_vector<double>();
    s.sumsq_stages = rd.get_vector<int>();
    s.sumsq_values = rd.get_vector<double>();
    s.last.rank = rd.get<int>();
    s.last.chunks = rd.get<int>();
    s.last.spans = rd.get_vector<Span>();
    s.last.peak_buffers_in_use = static_cast<std::size_t>(rd.get<std::uint64_t>());
    s.last.step_seconds = rd.get<double>();
    s.last.clock_start = rd.get<double>();
    s.peak_buffers = rd.get<std::uint64_t>();
    s.overlapped_calls = rd.get<long>();
    s.fused_backward_calls = rd.get<long>();
    s.deferred_weight_calls = rd.get<long>();
    s.problems = rd.get_string();
    return s;
  }
};

// Tags of the demo's own messages. They are sent only between steps, when the pipeline has nothing in
// flight, so they cannot be mistaken for a step's messages.
inline constexpr MessageTag summary_size_tag{0, 0, Payload::activation};
inline constexpr MessageTag summary_tag{0, 1, Payload::activation};
[[nodiscard]] inline MessageTag gradient_tag(int stage) noexcept { return {0, stage, Payload::gradient}; }

/// Rank 0 receives every rank's bytes (its own included, without communication); others get an empty list.
template <Communicator Comm>
std::vector<std::vector<std::byte>> gather_to_root(Comm& comm, std::vector<std::byte> mine,
                                                   std::chrono::milliseconds timeout) {
  const int size = comm.size();
  std::vector<std::vector<std::byte>> all;
  if (comm.rank() != 0) {
    const std::uint64_t n = mine.size();
    comm.post_send(0, summary_size_tag, std::as_bytes(std::span(&n, 1)));
    comm.commit().wait(timeout);
    comm.post_send(0, summary_tag, ConstBytes(mine));
    comm.commit().wait(timeout);
    return all;
  }
  std::vector<std::uint64_t> sizes(static_cast<std::size_t>(size), 0);
  for (int r = 1; r < size; ++r)
    comm.post_recv(r, summary_size_tag, std::as_writable_bytes(std::span(&sizes[static_cast<std::size_t>(r)], 1)));
  if (size > 1) comm.commit().wait(timeout);
  all.resize(static_cast<std::size_t>(size));
  all[0] = std::move(mine);
  for (int r = 1; r < size; ++r) {
    auto& buf = all[static_cast<std::size_t>(r)];
    buf.resize(static_cast<std::size_t>(sizes[static_cast<std::size_t>(r)]));
    comm.post_recv(r, summary_tag, MutableBytes(buf));
  }
  if (size > 1) comm.commit().wait(timeout);
  return all;
}

/// Rank 0: the report from every rank's summary and the sequential run.
inline DemoReport build_report(const DemoConfig& cfg, std::string schedule, const StageLayout& layout,
                               const SequentialRun& seq, std::vector<RankSummary> summaries) {
  const int C = cfg.model.chunks;
  const int steps = cfg.model.steps;
  DemoReport rep;
  rep.schedule = std::move(schedule);
  rep.comm = cfg.comm;
  rep.ranks = cfg.ranks;
  rep.chunks = C;
  rep.stages = layout.stages;
  rep.copies = static_cast<int>(layout.holders[0].size());
  rep.steps = steps;
  rep.tolerance = cfg.tolerance;
  for (const RankSummary& s : summaries) {
    rep.max_rel_err = std::max(rep.max_rel_err, std::isnan(s.max_rel_err) ? std::numeric_limits<double>::infinity()
                                                                          : s.max_rel_err);
    std::size_t at = 0;
    while (at < s.problems.size()) {
      std::size_t nl = s.problems.find('\n', at);
      if (nl == std::string::npos) nl = s.problems.size();
      if (nl > at) rep.problems.push_back(s.problems.substr(at, nl - at));
      at = nl + 1;
    }
  }
  // Chunk losses: exactly one rank computes each; compare each step's C losses with the sequential run.
  std::vector<double> last_losses;
  for (int step = 0; step < steps; ++step) {
    std::vector<double> losses(static_cast<std::size_t>(C), std::numeric_limits<double>::quiet_NaN());
    for (int c = 0; c < C; ++c) {
      int owners = 0;
      for (const RankSummary& s : summaries) {
        const double v = s.losses.at(static_cast<std::size_t>(step * C + c));
        if (!std::isnan(v)) {
          ++owners;
          losses[static_cast<std::size_t>(c)] = v;
        }
      }
      if (owners != 1)
        rep.problems.push_back("step " + std::to_string(step) + ", chunk " + std::to_string(c) + ": loss computed on " +
                               std::to_string(owners) + " ranks (expected 1)");
    }
    const double err = relative_error(losses, seq.losses[static_cast<std::size_t>(step)]);
    rep.max_rel_err = std::max(rep.max_rel_err, err);
    if (err > cfg.tolerance)
      rep.problems.push_back("step " + std::to_string(step) + ": chunk losses differ from the sequential run (max rel err " +
                             std::to_string(err) + ")");
    double step_sum = 0;
    for (double l : losses) step_sum += l;
    rep.step_loss_sums.push_back(step_sum);
    if (step == steps - 1) last_losses = std::move(losses);
  }
  for (double l : last_losses) rep.loss_sum += l;
  // grad_norm: stage order, each stage's sum of squares from its canonical copy.
  std::vector<double> sumsq(static_cast<std::size_t>(layout.stages), std::numeric_limits<double>::quiet_NaN());
  for (const RankSummary& s : summaries)
    for (std::size_t i = 0; i < s.sumsq_stages.size(); ++i) sumsq.at(static_cast<std::size_t>(s.sumsq_stages[i])) = s.sumsq_values[i];
  double total = 0;
  for (double v : sumsq) total += v;
  rep.grad_norm = std::sqrt(total);
  if (std::isnan(rep.grad_norm)) rep.problems.push_back("a stage's gradient norm is missing or NaN");
  if (rep.max_rel_err > cfg.tolerance)
    rep.problems.push_back("max relative error " + std::to_string(rep.max_rel_err) + " exceeds " + std::to_string(cfg.tolerance));
  // Timing: the last step's timeline; step times of the slowest rank.
  std::vector<StepResult> last;
  for (RankSummary& s : summaries) last.push_back(std::move(s.last));
  rep.timeline = merge_timelines(rep.schedule, C, Mode::train, last);
  // Measured next to simulated: the same trace under the mean measured op times.
  rep.profile = profile_step(rep.timeline, make_trace(cfg.schedule, cfg.ranks, C, Mode::train));
  rep.step_seconds.assign(static_cast<std::size_t>(steps), 0.0);
  for (const RankSummary& s : summaries)
    for (int step = 0; step < steps; ++step)
      rep.step_seconds[static_cast<std::size_t>(step)] =
          std::max(rep.step_seconds[static_cast<std::size_t>(step)], s.step_seconds.at(static_cast<std::size_t>(step)));
  for (const RankSummary& s : summaries) {
    RankReport rr;
    rr.rank = s.rank;
    if (s.rank < rep.timeline.ranks) {
      rr.busy_seconds = rep.timeline.busy(s.rank);
      rr.idle_seconds = rep.timeline.idle(s.rank);
    }
    rr.peak_buffers = static_cast<std::size_t>(s.peak_buffers);
    rr.overlapped_calls = s.overlapped_calls;
    rr.fused_backward_calls = s.fused_backward_calls;
    rr.deferred_weight_calls = s.deferred_weight_calls;
    rep.per_rank.push_back(rr);
  }
  return rep;
}

}  // namespace detail

/// One rank's whole run: build its stages, train cfg.model.steps steps with `Schedule`, sum gradients over
/// the copies of each stage, apply SGD, check against `seq`, and send a summary to rank 0. Returns the
/// report on rank 0 and nothing elsewhere. `comm` is pipeline rank comm.rank() of cfg.ranks.
/// Throws StepError when a step fails on any rank, ConfigError for a bad configuration.
template <class Schedule, Communicator Comm>
std::optional<DemoReport> run_rank(Comm& comm, const DemoConfig& cfg, const SequentialRun& seq) {
  constexpr int M = Schedule::modules_per_rank;
  const int rank = comm.rank();
  const int C = cfg.model.chunks;
  if (comm.size() != cfg.ranks)
    throw ConfigError("cpu demo: the communicator has " + std::to_string(comm.size()) + " ranks, the run needs " +
                      std::to_string(cfg.ranks));
  const StageLayout layout = make_layout<Schedule>(cfg.ranks, C);
  if (seq.stages != layout.stages || static_cast<int>(seq.grads.size()) != cfg.model.steps)
    throw ConfigError("cpu demo: the sequential run has " + std::to_string(seq.stages) + " stages and " +
                      std::to_string(seq.grads.size()) + " steps; the run needs " + std::to_string(layout.stages) +
                      " and " + std::to_string(cfg.model.steps));
  const auto& mine = layout.placement[static_cast<std::size_t>(rank)];

  std::vector<MlpStage> modules;
  modules.reserve(M);
  std::array<MlpStage*, M> ptrs{};
  bool reads_inputs = false, reads_labels = false;
  for (int m = 0; m < M; ++m) {
    const ModulePlacement& p = mine[static_cast<std::size_t>(m)];
    modules.emplace_back(cfg.model.hidden, cfg.model.rows, cfg.model.seed, p.stage);
    reads_inputs = reads_inputs || p.is_first_stage();
    reads_labels = reads_labels || p.is_last_stage();
  }
  for (int m = 0; m < M; ++m) ptrs[static_cast<std::size_t>(m)] = &modules[static_cast<std::size_t>(m)];
  if (cfg.inject_failure == rank) modules[0].inject_failure(std::max(0, mine[0].num_chunks / 2));

  PipelineOptions options;
  options.timeout = cfg.timeout;
  options.scale_loss_by_chunks = true;  // loss_scale = 1/C, as ModelSpec::loss_scale()
  options.record_timeline = true;
  Pipeline<Schedule, Comm, MlpStage> pipeline(comm, ptrs, options);

  detail::RankSummary sum;
  sum.rank = rank;
  std::vector<std::vector<double>> summed(M), received(M * 4);
  auto problem = [&](const std::string& what) { sum.problems += "rank " + std::to_string(rank) + ": " + what + "\n"; };

  for (int step = 0; step < cfg.model.steps; ++step) {
    const Batch batch = make_batch(cfg.model, step);
    StepResult res = pipeline.step(C, reads_inputs ? as_bytes(batch.inputs) : ConstBytes{},
                                   reads_labels ? as_bytes(batch.labels) : ConstBytes{});
    try {
      if (static_cast<int>(res.losses.size()) != C) {
        problem("step " + std::to_string(step) + " returned " + std::to_string(res.losses.size()) + " losses");
        res.losses.assign(static_cast<std::size_t>(C), std::numeric_limits<double>::quiet_NaN());
      }
      sum.losses.insert(sum.losses.end(), res.losses.begin(), res.losses.end());
      sum.step_seconds.push_back(res.step_seconds);
      sum.peak_buffers = std::max<std::uint64_t>(sum.peak_buffers, res.peak_buffers_in_use);
      for (const MlpStage& st : modules)
        if (st.chunks_in_flight() != 0)
          problem("stage " + std::to_string(st.stage()) + " still holds " + std::to_string(st.chunks_in_flight()) +
                  " chunks after step " + std::to_string(step));

      // Swap gradients with the other copies of each stage, then add all copies in holder order.
      std::size_t slot = 0;
      std::vector<std::vector<const double*>> parts(M);
      for (int m = 0; m < M; ++m) {
        const int s = mine[static_cast<std::size_t>(m)].stage;
        for (const auto& h : layout.holders[static_cast<std::size_t>(s)]) {
          if (h.rank == rank) {
            parts[static_cast<std::size_t>(m)].push_back(modules[static_cast<std::size_t>(m)].gradients().data());
            continue;
          }
          // Growing the outer vector moves the inner ones, whose buffers (posted above) stay put.
          if (slot >= received.size()) received.resize(slot + 1);
          auto& buf = received[slot++];
          buf.resize(cfg.model.stage_params());
          comm.post_send(h.rank, detail::gradient_tag(s), std::as_bytes(modules[static_cast<std::size_t>(m)].gradients()));
          comm.post_recv(h.rank, detail::gradient_tag(s), std::as_writable_bytes(std::span<double>(buf)));
          parts[static_cast<std::size_t>(m)].push_back(buf.data());
        }
      }
      if (slot > 0) comm.commit().wait(cfg.timeout);
      const std::size_t n = cfg.model.stage_params();
      for (int m = 0; m < M; ++m) {
        auto& g = summed[static_cast<std::size_t>(m)];
        const auto& ps = parts[static_cast<std::size_t>(m)];
        g.assign(ps[0], ps[0] + n);
        for (std::size_t k = 1; k < ps.size(); ++k)
          for (std::size_t i = 0; i < n; ++i) g[i] += ps[k][i];
        const int s = mine[static_cast<std::size_t>(m)].stage;
        const double err = stage_relative_error(g, seq.grads[static_cast<std::size_t>(step)][static_cast<std::size_t>(s)]);
        sum.max_rel_err = std::max(sum.max_rel_err, std::isnan(err) ? std::numeric_limits<double>::infinity() : err);
        if (err > cfg.tolerance)
          problem("step " + std::to_string(step) + ", stage " + std::to_string(s) +
                  ": summed gradient differs from the sequential run (max rel err " + std::to_string(err) + ")");
        if (step == cfg.model.steps - 1 && layout.holders[static_cast<std::size_t>(s)][0].rank == rank) {
          double sq = 0;
          for (double v : g) sq += v * v;
          sum.sumsq_stages.push_back(s);
          sum.sumsq_values.push_back(sq);
        }
      }
      for (int m = 0; m < M; ++m) {
        modules[static_cast<std::size_t>(m)].sgd_step(summed[static_cast<std::size_t>(m)], cfg.model.lr);
        modules[static_cast<std::size_t>(m)].zero_grad();
      }
      if (step == cfg.model.steps - 1) sum.last = std::move(res);
    } catch (const std::exception& e) {
      // Wake the other ranks instead of leaving them to time out in the exchange.
      comm.abort(FailureOrigin{rank, -1, -1, "demo", e.what()});
      throw;
    }
  }
  for (const MlpStage& st : modules) {
    const double err = stage_relative_error(st.parameters(), seq.final_params[static_cast<std::size_t>(st.stage())]);
    sum.max_rel_err = std::max(sum.max_rel_err, std::isnan(err) ? std::numeric_limits<double>::infinity() : err);
    if (err > cfg.tolerance)
      problem("stage " + std::to_string(st.stage()) + ": final parameters differ from the sequential run (max rel err " +
              std::to_string(err) + ")");
    sum.overlapped_calls += st.overlapped_calls();
    sum.fused_backward_calls += st.fused_backward_calls();
    sum.deferred_weight_calls += st.deferred_weight_calls();
  }

  auto all = detail::gather_to_root(comm, sum.serialize(), cfg.timeout);
  if (rank != 0) return std::nullopt;
  std::vector<detail::RankSummary> summaries;
  for (const auto& bytes : all) summaries.push_back(detail::RankSummary::deserialize(bytes));
  return detail::build_report(cfg, std::string(Schedule::name), layout, seq, std::move(summaries));
}

/// The sequential run that `cfg` is checked against.
[[nodiscard]] inline SequentialRun sequential_for(const DemoConfig& cfg) {
  return run_sequential(cfg.model, stages_of(cfg.schedule, cfg.ranks, cfg.model.chunks));
}

/// Runs the demo on cfg.ranks threads of this process (InProcessWorld, run_ranks) and returns rank 0's
/// report. `seq` defaults to sequential_for(cfg); pass another to check against something else.
/// Throws ConfigError (before anything runs) for a bad configuration, StepError when a step fails.
[[nodiscard]] inline DemoReport run_demo_inproc(const DemoConfig& config, const SequentialRun* seq = nullptr) {
  DemoConfig cfg = config;
  cfg.comm = "inproc";
  validate(cfg);
  std::optional<SequentialRun> own;
  if (seq == nullptr) seq = &own.emplace(sequential_for(cfg));
  return visit_schedule(cfg.schedule, [&](auto schedule) {
    using Schedule = decltype(schedule);
    InProcessWorld world(cfg.ranks);
    std::vector<std::optional<DemoReport>> out(static_cast<std::size_t>(cfg.ranks));
    run_ranks(cfg.ranks, [&](int r) { out[static_cast<std::size_t>(r)] = run_rank<Schedule>(world.communicator(r), cfg, *seq); });
    return std::move(*out[0]);
  });
}

}  // namespace dualpipe::cpu_demo
