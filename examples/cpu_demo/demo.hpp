// cpu_demo/demo.hpp: the demo's core. Trains the MLP with one schedule on a grid of P pipeline ranks x D
// data-parallel replicas and checks every update against the sequential run.
//
// The batch: an update (optimizer step) takes a global batch of K x D x C chunks (K = accumulate, D = dp,
// C = chunks per pipeline step); accumulation step k of replica d trains chunks [(k*D + d)*C, (k*D + d + 1)*C).
// So `--dp 2 --chunks 8` and `--accumulate 2 --chunks 8` train on the same 16-chunk batches as `--chunks 16`.
// The loss scale is 1 / (K x D x C): the reduced gradient is that of the mean chunk loss of the update.
//
// The per-rank work, run_rank<Schedule>(comms, config, sequential), is templated on the communicator and
// uses nothing but its communicators (RankComms: the pipeline's, the gradient reduction's copies and
// replicas) to talk to other ranks. After the last of the K steps, the library's HostGradientReduction sums
// each stage's gradient over its copies (DualPipe holds each stage on two ranks) and the replicas, in a
// fixed order, so every copy everywhere ends with the same bits; the reduction's copy exchange is posted
// from MlpStage::on_grads_ready, during the pipeline's cool-down. At the end every rank's summary goes to
// grid rank 0 (through its pipeline's rank 0, then over the replicas), which alone builds the DemoReport.
// The same function therefore runs one rank per thread (run_demo_inproc, InProcessGrid) or one rank per
// process (MPI communicators, mpi_run.hpp), with the same bits.
//
// What is checked, every update (max relative error as in relative_error(): normwise, max |a-b| / max |b|):
//   - the K x D x C chunk losses against the sequential run's, and that every chunk's loss was computed by
//     exactly one rank of the grid;
//   - every stage's reduced gradient, W1 and W2 separately, against the sequential run's, on every copy;
//   - after the last update, every copy's parameters against the sequential run's (so the updates agree);
//   - that no stage holds a chunk's state after a step (every forward met its weight gradient), and that
//     on_grads_ready ran once per module per step.
// The result line's numbers are deterministic: loss_sum adds the last update's chunk losses in global
// batch-chunk order; grad_norm is sqrt of the sum over stages (in stage order) of each reduced gradient's
// sum of squares.
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

#include "dualpipe/analysis/profile.hpp"
#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/comm/inprocess_grid.hpp"
#include "dualpipe/comm/process_grid.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/runtime/gradient_reduction.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/runtime/run_ranks.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/schedule/stage_copies.hpp"
#include "mlp_stage.hpp"
#include "sequential.hpp"

namespace dualpipe::cpu_demo {

/// One run of the demo: a schedule, its ranks, the model and the checks.
struct DemoConfig {
  ScheduleKind schedule = ScheduleKind::dualpipe;
  int ranks = 4;                              ///< P (pipeline ranks of this schedule).
  int dp = 1;                                 ///< D: data-parallel replicas (pipelines).
  int accumulate = 1;                         ///< K: pipeline steps per update.
  ModelSpec model;                            ///< Width, rows, chunks per pipeline step C, updates
                                              ///< (steps), seed, learning rate.
  std::chrono::milliseconds timeout{60'000};  ///< Bound on every wait (PipelineOptions::timeout).
  int inject_failure = -1;                    ///< Grid rank whose module 0 throws mid-way through step 0; -1: none.
  double tolerance = 1e-12;                   ///< Largest max relative error that passes.
  std::string comm = "inproc";                ///< Communicator name for the report ("mpi" with one rank per process).
};

/// The ranks of the grid: P x D.
[[nodiscard]] inline int grid_ranks(const DemoConfig& cfg) noexcept { return cfg.ranks * cfg.dp; }

/// The model spec of one update's global batch: K x D x C chunks (what the sequential run trains on).
[[nodiscard]] inline ModelSpec global_spec(const DemoConfig& cfg) noexcept {
  ModelSpec g = cfg.model;
  g.chunks = cfg.model.chunks * cfg.dp * cfg.accumulate;
  return g;
}

/// The process grid of a run: pp fastest, so ranks [d*P, (d+1)*P) are replica d's pipeline.
[[nodiscard]] inline ProcessGrid demo_grid(const DemoConfig& cfg) {
  return ProcessGrid(grid_ranks(cfg), {.pp = cfg.ranks, .dp = cfg.dp}, "pp,dp");
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
  if (m.chunks < 1 || m.chunks > 100'000)
    fail("chunks must be in [1, 100000] (got chunks=" + std::to_string(m.chunks) + ")");
  check_config(cfg.schedule, cfg.ranks, m.chunks);
  if (m.hidden < 1 || m.hidden > 4096)
    fail("hidden must be in [1, 4096] (got hidden=" + std::to_string(m.hidden) + ")");
  if (m.rows < 1 || m.rows > 1'000'000)
    fail("batch rows must be in [1, 1000000] (got rows=" + std::to_string(m.rows) + ")");
  if (m.steps < 1 || m.steps > 1'000'000)
    fail("steps must be in [1, 1000000] (got steps=" + std::to_string(m.steps) + ")");
  if (!std::isfinite(m.lr)) fail("the learning rate must be finite");
  if (cfg.timeout.count() < 1) fail("timeout must be at least 1 ms (got " + std::to_string(cfg.timeout.count()) + ")");
  if (cfg.dp < 1 || cfg.dp > 256) fail("dp must be in [1, 256] (got dp=" + std::to_string(cfg.dp) + ")");
  if (cfg.accumulate < 1 || cfg.accumulate > 10'000)
    fail("accumulate must be in [1, 10000] (got accumulate=" + std::to_string(cfg.accumulate) + ")");
  if (grid_ranks(cfg) > 1024)
    fail("ranks x dp must be at most 1024 (got ranks=" + std::to_string(cfg.ranks) + " x dp=" + std::to_string(cfg.dp) +
         ")");
  if (static_cast<long long>(m.chunks) * cfg.dp * cfg.accumulate > 1'000'000)
    fail("chunks x dp x accumulate must be at most 1000000 (got " + std::to_string(m.chunks) + " x " +
         std::to_string(cfg.dp) + " x " + std::to_string(cfg.accumulate) + ")");
  if (cfg.inject_failure < -1 || cfg.inject_failure >= grid_ranks(cfg)) {
    if (cfg.dp == 1)
      fail("the failing rank must be in [0, ranks) (got rank " + std::to_string(cfg.inject_failure) +
           ", ranks=" + std::to_string(cfg.ranks) + " for " + std::string(schedule_name(cfg.schedule)) + ")");
    fail("the failing rank (a grid rank) must be in [0, ranks x dp) (got rank " + std::to_string(cfg.inject_failure) +
         ", ranks=" + std::to_string(cfg.ranks) + " x dp=" + std::to_string(cfg.dp) + " for " +
         std::string(schedule_name(cfg.schedule)) + ")");
  }
  const double limit = 2.0 * 1024 * 1024 * 1024;
  const int stages = stages_of(cfg.schedule, cfg.ranks, m.chunks);
  const ModelSpec global = global_spec(cfg);
  const double batch_bytes = 2.0 * static_cast<double>(global.chunk_values()) * global.chunks * sizeof(double);
  if (batch_bytes > limit) fail("a step's batch must fit in 2 GiB (chunks * rows * hidden too large)");
  if (sequential_run_bytes(global, stages) > limit)
    fail("the sequential check keeps every step's gradients, which must fit in 2 GiB (steps=" +
         std::to_string(m.steps) + ", stages=" + std::to_string(stages) + ", hidden=" + std::to_string(m.hidden) + ")");
}

/// One rank's part of the report.
struct RankReport {
  int rank = 0;
  double busy_seconds = 0;         ///< Compute time in the last step.
  double idle_seconds = 0;         ///< Last step's makespan minus busy_seconds.
  std::size_t peak_buffers = 0;    ///< Most chunk buffers in use at once, over all steps.
  long overlapped_calls = 0;       ///< FB ops run through MlpStage::forward_backward, over all steps.
  long fused_backward_calls = 0;   ///< B ops run through MlpStage::backward, over all steps.
  long deferred_weight_calls = 0;  ///< W ops (deferred weight gradients) run through backward_weight, over all steps.
};

/// What one run of the demo found (built on rank 0).
struct DemoReport {
  std::string schedule;
  std::string comm = "inproc";  ///< DemoConfig::comm.
  int ranks = 0;
  int chunks = 0;      ///< Per pipeline step (C).
  int dp = 1;          ///< Replicas (D).
  int accumulate = 1;  ///< Pipeline steps per update (K).
  int stages = 0;
  int copies = 1;          ///< Copies of each stage (2 for DualPipe).
  int steps = 0;           ///< Updates.
  double loss_sum = 0;     ///< Last update's K x D x C chunk losses, added in global batch-chunk order.
  double grad_norm = 0;    ///< L2 norm of every stage's reduced gradient of the last update.
  double max_rel_err = 0;  ///< Over every check and step (see the file comment).
  double tolerance = 1e-12;
  std::vector<std::string> problems;   ///< Failed checks in words; empty when the run passed.
  std::vector<double> step_seconds;    ///< Per pipeline step (updates x K), the slowest rank's step time.
  std::vector<double> step_loss_sums;  ///< Per update, its chunk losses added in global batch-chunk order.
  std::vector<RankReport> per_rank;    ///< Replica 0's pipeline ranks.
  Timeline timeline;                   ///< Measured timeline of replica 0's last step (merge_timelines).
  ProfileReport profile;               ///< The last step measured next to its simulation (profile_step).

  /// Every check passed.
  [[nodiscard]] bool pass() const noexcept { return problems.empty() && max_rel_err <= tolerance; }
};

/// The one line a run prints for scripts:
/// `result: schedule=<name> ranks=<P> chunks=<C> dp=<D> accumulate=<K> comm=<name> loss_sum=<%.17g>
/// grad_norm=<%.17g> max_rel_err=<%.3g> check=<pass|FAIL>`
[[nodiscard]] inline std::string result_line(const DemoReport& r) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "result: schedule=%s ranks=%d chunks=%d dp=%d accumulate=%d comm=%s loss_sum=%.17g "
                "grad_norm=%.17g max_rel_err=%.3g check=%s",
                r.schedule.c_str(), r.ranks, r.chunks, r.dp, r.accumulate, r.comm.c_str(), r.loss_sum, r.grad_norm,
                r.max_rel_err, r.pass() ? "pass" : "FAIL");
  return buf;
}

/// The profile line a run prints under its table:
/// `profile: measured_bubble=<%.3f> simulated_bubble=<%.3f> measured_ms=<%.3f> simulated_ms=<%.3f> chunks_per_second=<%.1f>`
/// (simulated: the same trace with every op taking the mean measured time of its kind, free communication).
[[nodiscard]] inline std::string profile_line(const DemoReport& r) {
  char buf[256];
  const ProfileReport& p = r.profile;
  std::snprintf(buf, sizeof buf,
                "profile: measured_bubble=%.3f simulated_bubble=%.3f measured_ms=%.3f simulated_ms=%.3f "
                "chunks_per_second=%.1f",
                p.measured_bubble, p.simulated_bubble, p.measured_makespan * 1e3, p.simulated_makespan * 1e3,
                p.chunks_per_second);
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
    if (n)
      std::memcpy(v.data(), _take(static_cast<std::size_t>(n) * sizeof(T)), static_cast<std::size_t>(n) * sizeof(T));
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
  int rank = 0;                      // pipeline rank
  int replica = 0;                   // dp coordinate
  double max_rel_err = 0;            // local checks: reduced gradients, final parameters
  std::vector<double> losses;        // (updates x K) x C, step after step (NaN where this rank computed none)
  std::vector<double> step_seconds;  // per pipeline step
  std::vector<int> sumsq_stages;     // stages whose canonical copy (first holder, replica 0) is this rank's ...
  std::vector<double> sumsq_values;  // ... and the sum of squares of their reduced gradient, last update
  StepResult last;                   // the last step (spans, peak buffers, clocks)
  std::uint64_t peak_buffers = 0;    // over all steps
  long overlapped_calls = 0, fused_backward_calls = 0, deferred_weight_calls = 0;
  std::string problems;  // failed local checks, one per line

  [[nodiscard]] std::vector<std::byte> serialize() const {
    ByteWriter w;
    w.put(rank);
    w.put(replica);
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
    s.replica = rd.get<int>();
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

/// Grid rank 0 receives every rank's bytes: each pipeline's rank 0 gathers its pipeline's, then those go
/// over the replicas to replica 0, replica after replica. Others get an empty list.
template <Communicator Comm>
std::vector<std::vector<std::byte>> gather_grid(Comm& pipeline, Comm* replicas, std::vector<std::byte> mine,
                                                std::chrono::milliseconds timeout) {
  std::vector<std::vector<std::byte>> group = gather_to_root(pipeline, std::move(mine), timeout);
  if (pipeline.rank() != 0 || replicas == nullptr || replicas->size() == 1) return group;
  ByteWriter w;
  w.put(static_cast<std::uint64_t>(group.size()));
  for (const auto& bytes : group) w.put_vector(bytes);
  const std::vector<std::vector<std::byte>> packed = gather_to_root(*replicas, std::move(w.bytes()), timeout);
  std::vector<std::vector<std::byte>> all;
  for (const auto& p : packed) {
    ByteReader rd(p);
    const auto n = rd.get<std::uint64_t>();
    for (std::uint64_t i = 0; i < n; ++i) all.push_back(rd.get_vector<std::byte>());
  }
  return all;
}

/// Grid rank 0: the report from every rank's summary and the sequential run.
inline DemoReport build_report(const DemoConfig& cfg, std::string schedule, const StageCopies& copies,
                               const SequentialRun& seq, std::vector<RankSummary> summaries) {
  const int C = cfg.model.chunks;
  const int D = cfg.dp;
  const int K = cfg.accumulate;
  const int G = C * D * K;  // chunks of an update
  const int steps = cfg.model.steps;
  DemoReport rep;
  rep.schedule = std::move(schedule);
  rep.comm = cfg.comm;
  rep.ranks = cfg.ranks;
  rep.chunks = C;
  rep.dp = D;
  rep.accumulate = K;
  rep.stages = copies.stages;
  rep.copies = static_cast<int>(copies.copies(0).size());
  rep.steps = steps;
  rep.tolerance = cfg.tolerance;
  for (const RankSummary& s : summaries) {
    rep.max_rel_err =
        std::max(rep.max_rel_err, std::isnan(s.max_rel_err) ? std::numeric_limits<double>::infinity() : s.max_rel_err);
    std::size_t at = 0;
    while (at < s.problems.size()) {
      std::size_t nl = s.problems.find('\n', at);
      if (nl == std::string::npos) nl = s.problems.size();
      if (nl > at) rep.problems.push_back(s.problems.substr(at, nl - at));
      at = nl + 1;
    }
  }
  // Chunk losses: exactly one rank of the grid computes each; compare each update's K x D x C losses with
  // the sequential run's. Rank (replica d) step k of update u, chunk c is global chunk (k*D + d)*C + c.
  std::vector<double> last_losses;
  for (int u = 0; u < steps; ++u) {
    std::vector<double> losses(static_cast<std::size_t>(G), std::numeric_limits<double>::quiet_NaN());
    std::vector<int> owners(static_cast<std::size_t>(G), 0);
    for (const RankSummary& s : summaries)
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < C; ++c) {
          const double v = s.losses.at(static_cast<std::size_t>((u * K + k) * C + c));
          if (std::isnan(v)) continue;
          const auto g = static_cast<std::size_t>((k * D + s.replica) * C + c);
          ++owners[g];
          losses[g] = v;
        }
    for (int g = 0; g < G; ++g)
      if (owners[static_cast<std::size_t>(g)] != 1)
        rep.problems.push_back("update " + std::to_string(u) + ", chunk " + std::to_string(g) + ": loss computed on " +
                               std::to_string(owners[static_cast<std::size_t>(g)]) + " ranks (expected 1)");
    const double err = relative_error(losses, seq.losses[static_cast<std::size_t>(u)]);
    rep.max_rel_err = std::max(rep.max_rel_err, err);
    if (err > cfg.tolerance)
      rep.problems.push_back("step " + std::to_string(u) +
                             ": chunk losses differ from the sequential run (max rel err " + std::to_string(err) + ")");
    double step_sum = 0;
    for (double l : losses) step_sum += l;
    rep.step_loss_sums.push_back(step_sum);
    if (u == steps - 1) last_losses = std::move(losses);
  }
  for (double l : last_losses) rep.loss_sum += l;
  // grad_norm: stage order, each stage's sum of squares from its canonical copy (replica 0).
  std::vector<double> sumsq(static_cast<std::size_t>(copies.stages), std::numeric_limits<double>::quiet_NaN());
  for (const RankSummary& s : summaries)
    for (std::size_t i = 0; i < s.sumsq_stages.size(); ++i)
      sumsq.at(static_cast<std::size_t>(s.sumsq_stages[i])) = s.sumsq_values[i];
  double total = 0;
  for (double v : sumsq) total += v;
  rep.grad_norm = std::sqrt(total);
  if (std::isnan(rep.grad_norm)) rep.problems.push_back("a stage's gradient norm is missing or NaN");
  if (rep.max_rel_err > cfg.tolerance)
    rep.problems.push_back("max relative error " + std::to_string(rep.max_rel_err) + " exceeds " +
                           std::to_string(cfg.tolerance));
  // Timing: replica 0's last step; step times of the slowest rank of the grid.
  std::vector<StepResult> last;
  for (RankSummary& s : summaries)
    if (s.replica == 0) last.push_back(std::move(s.last));
  rep.timeline = merge_timelines(rep.schedule, C, Mode::train, last);
  // Measured next to simulated: the same trace under the mean measured op times.
  rep.profile = profile_step(rep.timeline, make_trace(cfg.schedule, cfg.ranks, C, Mode::train));
  const auto pipeline_steps = static_cast<std::size_t>(steps) * static_cast<std::size_t>(K);
  rep.step_seconds.assign(pipeline_steps, 0.0);
  for (const RankSummary& s : summaries)
    for (std::size_t t = 0; t < pipeline_steps; ++t)
      rep.step_seconds[t] = std::max(rep.step_seconds[t], s.step_seconds.at(t));
  for (const RankSummary& s : summaries) {
    if (s.replica != 0) continue;
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

/// One rank's communicators: its pipeline group twice (the pipeline's, and one of its own for the gradient
/// reduction's copy exchange, posted during a step) and its data-parallel group.
template <Communicator Comm>
struct RankComms {
  Comm& pipeline;            ///< Pipeline group (rank = pipeline rank): the steps, then the summaries.
  Comm& copies;              ///< Pipeline group, a communicator of its own: the reduction over copies.
  Comm* replicas = nullptr;  ///< Data-parallel group (rank = replica): the reduction over replicas; null for dp=1.
  int replica = 0;           ///< This rank's replica (dp coordinate).
};

/// One rank's whole run with stages of type StageT: build its stages, train cfg.model.steps updates of cfg.accumulate pipeline steps
/// with `Schedule`, reduce the gradients over copies and replicas (HostGradientReduction), apply SGD, check
/// against `seq`, and send a summary to grid rank 0. Returns the report on grid rank 0 and nothing elsewhere.
/// Throws StepError when a step fails on any rank, ConfigError for a bad configuration.
template <class Schedule, class StageT, Communicator Comm>
std::optional<DemoReport> run_rank_with(RankComms<Comm> comms, const DemoConfig& cfg, const SequentialRun& seq) {
  constexpr int M = Schedule::modules_per_rank;
  Comm& comm = comms.pipeline;
  const int rank = comm.rank();
  const int replica = comms.replica;
  const int C = cfg.model.chunks;
  const int D = cfg.dp;
  const int K = cfg.accumulate;
  if (comm.size() != cfg.ranks || comms.copies.size() != cfg.ranks)
    throw ConfigError("cpu demo: the pipeline communicators have " + std::to_string(comm.size()) + " and " +
                      std::to_string(comms.copies.size()) + " ranks, the run needs " + std::to_string(cfg.ranks));
  if ((comms.replicas ? comms.replicas->size() : 1) != D || replica < 0 || replica >= D ||
      (comms.replicas && comms.replicas->rank() != replica))
    throw ConfigError("cpu demo: the replica communicator does not match dp=" + std::to_string(D) + " (replica " +
                      std::to_string(replica) + ")");
  const StageCopies copies = stage_copies<Schedule>(cfg.ranks, C);
  if (seq.stages != copies.stages || static_cast<int>(seq.grads.size()) != cfg.model.steps)
    throw ConfigError("cpu demo: the sequential run has " + std::to_string(seq.stages) + " stages and " +
                      std::to_string(seq.grads.size()) + " updates; the run needs " + std::to_string(copies.stages) +
                      " and " + std::to_string(cfg.model.steps));

  std::vector<StageT> modules;
  modules.reserve(M);
  std::array<StageT*, M> ptrs{};
  std::array<ModulePlacement, M> mine{};
  bool reads_inputs = false, reads_labels = false;
  for (int m = 0; m < M; ++m) {
    const ModulePlacement p = Schedule::placement(cfg.ranks, C, rank, m);
    mine[static_cast<std::size_t>(m)] = p;
    modules.emplace_back(cfg.model.hidden, cfg.model.rows, cfg.model.seed, p.stage);
    reads_inputs = reads_inputs || p.is_first_stage();
    reads_labels = reads_labels || p.is_last_stage();
  }
  for (int m = 0; m < M; ++m) ptrs[static_cast<std::size_t>(m)] = &modules[static_cast<std::size_t>(m)];
  if (cfg.inject_failure == replica * cfg.ranks + rank) modules[0].inject_failure(std::max(0, mine[0].num_chunks / 2));

  PipelineOptions options;
  options.timeout = cfg.timeout;
  options.scale_loss_by_chunks = true;  // loss_scale = 1/(C x K x D), as the global batch's 1/chunks
  options.accumulation_steps = K;
  options.replicas = D;
  options.record_timeline = true;
  Pipeline<Schedule, Comm, StageT> pipeline(comm, ptrs, options);

  // The library's reduction, its copy exchange posted as soon as a module's gradients of the update are final.
  std::vector<std::span<double>> grads;
  for (StageT& st : modules) grads.push_back(st.gradient_buffer());
  HostGradientReduction<double, Comm> reduce(copies, comms.copies, grads, {.timeout = cfg.timeout}, comms.replicas);
  for (StageT& st : modules)
    st.when_grads_ready([&reduce](const StageContext& ctx) {
      if (ctx.last_accumulation_step()) reduce.post(ctx.module);
    });

  detail::RankSummary sum;
  sum.rank = rank;
  sum.replica = replica;
  auto problem = [&](const std::string& what) {
    sum.problems += "rank " + std::to_string(rank) +
                    (D > 1 ? " of replica " + std::to_string(replica) : std::string()) + ": " + what + "\n";
  };
  const ModelSpec global = global_spec(cfg);
  std::vector<std::size_t> table;  // --variable-lengths: this step's rows, chunk x 2 tensors (X and A)
  table.reserve(static_cast<std::size_t>(C) * 2);

  try {
    for (int u = 0; u < cfg.model.steps; ++u) {
      const Batch batch = make_batch(global, u);
      for (int k = 0; k < K; ++k) {
        // This step's chunks [g0, g0 + C) of the global batch, at their own sizes.
        const auto g0 = static_cast<std::size_t>((k * D + replica) * C);
        const auto g1 = g0 + static_cast<std::size_t>(C);
        const std::size_t in0 = batch.input_offset[g0], in1 = batch.input_offset[g1];
        const std::size_t l0 = batch.label_offset[g0], l1 = batch.label_offset[g1];
        const ConstBytes inputs =
            reads_inputs ? as_bytes(std::span<const double>(batch.inputs).subspan(in0, in1 - in0)) : ConstBytes{};
        const ConstBytes labels =
            reads_labels ? as_bytes(std::span<const double>(batch.labels).subspan(l0, l1 - l0)) : ConstBytes{};
        StepOptions step_options;
        if (cfg.model.variable_rows) {  // every rank gives the table (the data is a function of the seed)
          table.clear();
          for (std::size_t g = g0; g < g1; ++g) table.insert(table.end(), {batch.rows[g], batch.rows[g]});
          step_options.sizes = ChunkSizes{table, 2};
        }
        StepResult res = pipeline.step(C, inputs, labels, step_options);
        const int step = u * K + k;
        if (static_cast<int>(res.losses.size()) != C) {
          problem("step " + std::to_string(step) + " returned " + std::to_string(res.losses.size()) + " losses");
          res.losses.assign(static_cast<std::size_t>(C), std::numeric_limits<double>::quiet_NaN());
        }
        sum.losses.insert(sum.losses.end(), res.losses.begin(), res.losses.end());
        sum.step_seconds.push_back(res.step_seconds);
        sum.peak_buffers = std::max<std::uint64_t>(sum.peak_buffers, res.peak_buffers_in_use);
        for (const StageT& st : modules)
          if (st.chunks_in_flight() != 0)
            problem("stage " + std::to_string(st.stage()) + " still holds " + std::to_string(st.chunks_in_flight()) +
                    " chunks after step " + std::to_string(step));
        if (u == cfg.model.steps - 1 && k == K - 1) sum.last = std::move(res);
      }

      // The update: gradients summed over copies and replicas, the same bits on every copy.
      reduce.finish();
      for (int m = 0; m < M; ++m) {
        StageT& st = modules[static_cast<std::size_t>(m)];
        const int s = st.stage();
        const double err =
            stage_relative_error(st.gradients(), seq.grads[static_cast<std::size_t>(u)][static_cast<std::size_t>(s)]);
        sum.max_rel_err = std::max(sum.max_rel_err, std::isnan(err) ? std::numeric_limits<double>::infinity() : err);
        if (err > cfg.tolerance)
          problem("update " + std::to_string(u) + ", stage " + std::to_string(s) +
                  ": reduced gradient differs from the sequential run (max rel err " + std::to_string(err) + ")");
        if (u == cfg.model.steps - 1 && replica == 0 && copies.copies(s)[0] == StageCopy{rank, m}) {
          double sq = 0;
          for (double v : st.gradients()) sq += v * v;
          sum.sumsq_stages.push_back(s);
          sum.sumsq_values.push_back(sq);
        }
      }
      for (StageT& st : modules) {
        st.sgd_step(st.gradients(), cfg.model.lr);
        st.zero_grad();
      }
    }
  } catch (const std::exception& e) {
    // Wake every rank of the grid instead of leaving them to time out: this pipeline (the runtime did that
    // when a step failed) and the reduction's communicators, which reach the other replicas.
    FailureOrigin origin{rank, -1, -1, "demo", e.what()};
    if (const auto* step_error = dynamic_cast<const StepError*>(&e)) {
      origin = step_error->origin();  // a rank of this pipeline: say which replica, for the other replicas
      if (D > 1)
        origin.what += " [replica " + std::to_string(replica) + ": grid rank " +
                       std::to_string(replica * cfg.ranks + origin.rank) + "]";
    }
    if (const auto* aborted = dynamic_cast<const CommAborted*>(&e)) origin = aborted->origin();
    comm.abort(origin);
    comms.copies.abort(origin);
    if (comms.replicas) comms.replicas->abort(origin);
    throw;
  }
  const long want_calls = static_cast<long>(cfg.model.steps) * K;
  for (const StageT& st : modules) {
    const double err = stage_relative_error(st.parameters(), seq.final_params[static_cast<std::size_t>(st.stage())]);
    sum.max_rel_err = std::max(sum.max_rel_err, std::isnan(err) ? std::numeric_limits<double>::infinity() : err);
    if (err > cfg.tolerance)
      problem("stage " + std::to_string(st.stage()) +
              ": final parameters differ from the sequential run (max rel err " + std::to_string(err) + ")");
    if (st.grads_ready_calls() != want_calls)
      problem("stage " + std::to_string(st.stage()) + ": on_grads_ready ran " + std::to_string(st.grads_ready_calls()) +
              " times in " + std::to_string(want_calls) + " steps");
    sum.overlapped_calls += st.overlapped_calls();
    sum.fused_backward_calls += st.fused_backward_calls();
    sum.deferred_weight_calls += st.deferred_weight_calls();
  }

  auto all = detail::gather_grid(comm, comms.replicas, sum.serialize(), cfg.timeout);
  if (rank != 0 || replica != 0) return std::nullopt;
  std::vector<detail::RankSummary> summaries;
  for (const auto& bytes : all) summaries.push_back(detail::RankSummary::deserialize(bytes));
  return detail::build_report(cfg, std::string(Schedule::name), copies, seq, std::move(summaries));
}

/// One rank's whole run (run_rank_with): MlpStage, or AuxMlpStage with --variable-lengths.
template <class Schedule, Communicator Comm>
std::optional<DemoReport> run_rank(RankComms<Comm> comms, const DemoConfig& cfg, const SequentialRun& seq) {
  if (cfg.model.variable_rows) return run_rank_with<Schedule, AuxMlpStage>(comms, cfg, seq);
  return run_rank_with<Schedule, MlpStage>(comms, cfg, seq);
}

/// The sequential run that `cfg` is checked against: one model, the whole grid's batch (K x D x C chunks
/// per update).
[[nodiscard]] inline SequentialRun sequential_for(const DemoConfig& cfg) {
  return run_sequential(global_spec(cfg), stages_of(cfg.schedule, cfg.ranks, cfg.model.chunks));
}

/// Runs the demo on P x D threads of this process (two InProcessGrids: the pipelines', the reduction's;
/// run_ranks) and returns grid rank 0's report. `seq` defaults to sequential_for(cfg); pass another to check
/// against something else. Throws ConfigError (before anything runs) for a bad configuration, StepError when
/// a step fails.
[[nodiscard]] inline DemoReport run_demo_inproc(const DemoConfig& config, const SequentialRun* seq = nullptr) {
  DemoConfig cfg = config;
  cfg.comm = "inproc";
  validate(cfg);
  std::optional<SequentialRun> own;
  if (seq == nullptr) seq = &own.emplace(sequential_for(cfg));
  return visit_schedule(cfg.schedule, [&](auto schedule) {
    using Schedule = decltype(schedule);
    const ProcessGrid layout = demo_grid(cfg);
    InProcessGrid pipes(layout), grads(layout);
    const int W = layout.world_size();
    std::vector<std::optional<DemoReport>> out(static_cast<std::size_t>(W));
    run_ranks(W, [&](int w) {
      RankComms<InProcessCommunicator> comms{pipes.communicator(GridDim::pp, w), grads.communicator(GridDim::pp, w),
                                             cfg.dp > 1 ? &grads.communicator(GridDim::dp, w) : nullptr,
                                             layout.coord(w, GridDim::dp)};
      out[static_cast<std::size_t>(w)] = run_rank<Schedule>(comms, cfg, *seq);
    });
    return std::move(*out[0]);
  });
}

}  // namespace dualpipe::cpu_demo
