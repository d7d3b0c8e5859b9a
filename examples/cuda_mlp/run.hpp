// cuda_mlp/run.hpp: one rank's training loop and the report, for any communicator that moves device
// memory (CudaLocalCommunicator: every rank a thread of this process; NcclCommunicator: one process each).
//
// Each step: zero the gradients, pipe.step() (the whole batch of C chunks), then the copies of a stage
// (DualPipe holds every stage on two ranks) swap their fp32 gradients through the same communicator and add
// them (a + b == b + a: both copies get the same bits), check the summed gradient against the sequential
// run's, and apply SGD. After the last step each copy's parameters are checked too. The chunk losses, the
// last step's gradient sums of squares and the errors go to rank 0 as a fixed-size array of doubles, which
// builds the report and prints the result line:
//   result: schedule=<name> ranks=<P> chunks=<C> comm=<name> loss_sum=<%.17g> grad_norm=<%.17g> max_rel_err=<%.3g> check=<pass|FAIL>
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "dualpipe/dualpipe.hpp"
#include "mlp_kernels.hpp"
#include "mlp_stage.hpp"
#include "sequential.hpp"

namespace mlp {

/// One run: the model, the schedule's size and the checks.
struct RunConfig {
  ModelConfig model;
  int ranks = 4;  ///< Pipeline ranks of this schedule.
  int chunks = 8;
  int steps = 2;
  float lr = 0.05f;
  std::chrono::milliseconds timeout{60'000};
  double tolerance = 1e-5;          ///< fp32 1e-5, bf16 2e-2.
  std::string comm = "cuda-local";  ///< Name in the result line.
  bool gpu_timeline = false;        ///< Spans from CUDA events (one process: with a shared epoch).
  const dualpipe::Event* epoch = nullptr;
};

/// Where every copy of every stage is: holders[stage] = (rank, module), sorted by rank.
struct Layout {
  int stages = 0;
  std::vector<std::vector<std::pair<int, int>>> holders;
};

template <class Schedule>
[[nodiscard]] Layout make_layout(int ranks, int chunks) {
  Schedule::check(ranks, chunks);
  Layout l;
  l.stages = Schedule::placement(ranks, chunks, 0, 0).num_stages;
  l.holders.resize(static_cast<std::size_t>(l.stages));
  for (int r = 0; r < ranks; ++r)
    for (int m = 0; m < Schedule::modules_per_rank; ++m)
      l.holders[static_cast<std::size_t>(Schedule::placement(ranks, chunks, r, m).stage)].push_back({r, m});
  return l;
}

/// What a rank reports: a fixed-size array of doubles (so it moves as one message of known size).
///   [0] max relative error of its checks, [1] failed checks, [2 .. 2+steps*C) chunk losses (NaN: not here),
///   then per stage the last step's summed-gradient sum of squares (NaN unless this rank holds its first
///   copy), then per step this rank's step seconds, then its last step's busy and makespan seconds.
struct Summary {
  static std::size_t size(int steps, int chunks, int stages) {
    return 2 + static_cast<std::size_t>(steps) * static_cast<std::size_t>(chunks) + static_cast<std::size_t>(stages) +
           static_cast<std::size_t>(steps) + 2;
  }
};

/// The report rank 0 prints.
struct Report {
  std::string schedule, comm;
  int ranks = 0, chunks = 0, stages = 0, steps = 0;
  double loss_sum = 0, grad_norm = 0, max_rel_err = 0, tolerance = 0;
  std::vector<double> step_ms;   ///< Slowest rank per step.
  double bubble = -1;            ///< Measured bubble ratio of the last step (GPU timeline), -1 if not measured.
  double simulated_bubble = -1;  ///< The simulator's for the same step's mean op times (profile_step), or -1.
  std::vector<std::string> problems;
  [[nodiscard]] bool pass() const { return problems.empty() && max_rel_err <= tolerance; }
};

[[nodiscard]] inline std::string result_line(const Report& r) {
  char buf[512];
  std::snprintf(
      buf, sizeof buf,
      "result: schedule=%s ranks=%d chunks=%d comm=%s loss_sum=%.17g grad_norm=%.17g max_rel_err=%.3g check=%s",
      r.schedule.c_str(), r.ranks, r.chunks, r.comm.c_str(), r.loss_sum, r.grad_norm, r.max_rel_err,
      r.pass() ? "pass" : "FAIL");
  return buf;
}

/// One rank's whole run; returns its summary (see Summary) and, through `last`, its last StepResult.
/// `Device` is the device policy (BasicCudaDevice<SyncAllocator> when ranks sit on several GPUs, so that the
/// chunk buffers are cudaMalloc memory the peer copies can read).
template <class Schedule, class StageT, class Comm, class Device = dualpipe::CudaDevice>
std::vector<double> run_rank(Comm& comm, const RunConfig& rc, const Layout& layout, const SequentialRun& seq,
                             const Batches& batches, dualpipe::StepResult* last = nullptr) {
  using namespace dualpipe;
  constexpr int M = Schedule::modules_per_rank;
  const ModelConfig& cfg = rc.model;
  const int r = comm.rank();
  const int C = rc.chunks;
  std::vector<double> out(Summary::size(rc.steps, C, layout.stages), std::numeric_limits<double>::quiet_NaN());
  double max_err = 0;
  double failed = 0;
  auto note = [&](double err) {
    max_err = std::max(max_err, std::isnan(err) ? std::numeric_limits<double>::infinity() : err);
  };

  Stream init;
  Blas blas;
  std::vector<std::unique_ptr<StageT>> stages;
  std::array<StageT*, M> ptrs{};
  for (int m = 0; m < M; ++m) {
    const ModulePlacement p = Schedule::placement(rc.ranks, C, r, m);
    stages.push_back(std::make_unique<StageT>(cfg, p.stage, p.num_chunks, blas, init.get()));
    ptrs[static_cast<std::size_t>(m)] = stages.back().get();
  }
  init.synchronize();
  PipelineOptions po;
  po.timeout = rc.timeout;
  po.scale_loss_by_chunks = true;
  CudaDeviceOptions dopt;
  dopt.gpu_timeline = rc.gpu_timeline;
  dopt.timeline_epoch = rc.epoch;
  Pipeline<Schedule, Comm, StageT, Device> pipe(comm, ptrs, po, Device(dopt));
  const StreamRef main = pipe.device().main_stream();
  // The cuBLAS handles are bound to the pipeline's streams: destroy them before the pipeline (and its
  // streams) goes, on every way out of this function.
  struct ReleaseHandles {
    Blas& blas;
    ~ReleaseHandles() { blas.clear(); }
  } release_handles{blas};

  // Modules in stage order: the gradient exchange posts in this order on both copies (NCCL matches by order).
  std::vector<int> by_stage(M);
  for (int m = 0; m < M; ++m) by_stage[static_cast<std::size_t>(m)] = m;
  std::sort(by_stage.begin(), by_stage.end(), [&](int a, int b) {
    return stages[static_cast<std::size_t>(a)]->stage() < stages[static_cast<std::size_t>(b)]->stage();
  });
  const std::size_t gbytes = cfg.params() * sizeof(float);
  std::vector<DeviceBuffer<SyncAllocator>> theirs, total;
  for (int m = 0; m < M; ++m) {
    theirs.emplace_back(gbytes, main);
    total.emplace_back(gbytes, main);
  }

  StepResult res;
  for (int step = 0; step < rc.steps; ++step) {
    for (auto& st : stages) st->zero_grad(main);
    pipe.step_into(res, C, batches.inputs(step), batches.labels(step));
    for (int c = 0; c < C; ++c)
      out[2 + static_cast<std::size_t>(step * C + c)] = res.losses[static_cast<std::size_t>(c)];
    out[out.size() - 2 - static_cast<std::size_t>(rc.steps) + static_cast<std::size_t>(step)] = res.step_seconds;

    // Swap gradients with the other copy of each stage held twice.
    bool exchanged = false;
    for (int m : by_stage) {
      const auto& h = layout.holders[static_cast<std::size_t>(stages[static_cast<std::size_t>(m)]->stage())];
      if (h.size() < 2) continue;
      const int peer = h[0].first == r && h[0].second == m ? h[1].first : h[0].first;
      const MessageTag tag{0, 100000 + stages[static_cast<std::size_t>(m)]->stage(), Payload::gradient};
      comm.post_send(
          peer, tag,
          ConstBytes(reinterpret_cast<const std::byte*>(stages[static_cast<std::size_t>(m)]->grads()), gbytes));
      comm.post_recv(peer, tag,
                     MutableBytes(static_cast<std::byte*>(theirs[static_cast<std::size_t>(m)].data()), gbytes));
      exchanged = true;
    }
    if (exchanged) {
      comm.commit().wait(rc.timeout);
      DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(comm.stream()));
    }
    for (int m = 0; m < M; ++m) {
      StageT& st = *stages[static_cast<std::size_t>(m)];
      const auto& h = layout.holders[static_cast<std::size_t>(st.stage())];
      float* g = st.grads();
      if (h.size() >= 2) {
        float* t = total[static_cast<std::size_t>(m)].template as<float>();
        DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(t, g, gbytes, cudaMemcpyDeviceToDevice, main));
        add_f32(t, theirs[static_cast<std::size_t>(m)].template as<float>(), cfg.params(), main);
        DUALPIPE_CUDA_CHECK_LAST();
        g = t;
      }
      const std::vector<float> got = to_host(g, cfg.params());
      note(stage_error(got, seq.grads[static_cast<std::size_t>(step)][static_cast<std::size_t>(st.stage())]));
      if (step == rc.steps - 1 && h[0].first == r && h[0].second == m)
        out[2 + static_cast<std::size_t>(rc.steps * C + st.stage())] = sumsq(g, cfg.params(), main);
      st.sgd_step(g, rc.lr, main);
    }
    DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(main));
  }
  for (auto& st : stages)
    note(stage_error(params_to_host(cfg, *st), seq.final_params[static_cast<std::size_t>(st->stage())]));
  // Busy time and makespan of the last step on this rank (GPU or host clock, as recorded).
  double busy = 0, end = 0;
  for (const Span& s : res.spans)
    if (s.lane == Span::Lane::compute) {
      busy += s.duration();
      end = std::max(end, s.end);
    }
  out[out.size() - 2] = busy;
  out[out.size() - 1] = end;
  out[0] = max_err;
  out[1] = failed;
  if (last) *last = res;
  return out;
}

/// Rank 0: the report from every rank's summary and the sequential run.
[[nodiscard]] inline Report build_report(const RunConfig& rc, std::string schedule, const Layout& layout,
                                         const SequentialRun& seq, const std::vector<std::vector<double>>& all) {
  Report rep;
  rep.schedule = std::move(schedule);
  rep.comm = rc.comm;
  rep.ranks = rc.ranks;
  rep.chunks = rc.chunks;
  rep.stages = layout.stages;
  rep.steps = rc.steps;
  rep.tolerance = rc.tolerance;
  const int C = rc.chunks;
  for (const auto& s : all) {
    rep.max_rel_err = std::max(rep.max_rel_err, std::isnan(s[0]) ? INFINITY : s[0]);
    if (s[1] > 0) rep.problems.push_back("a rank's checks failed");
  }
  std::vector<double> last;
  for (int step = 0; step < rc.steps; ++step) {
    std::vector<double> losses(static_cast<std::size_t>(C), NAN);
    for (int c = 0; c < C; ++c) {
      int owners = 0;
      for (const auto& s : all) {
        const double v = s[2 + static_cast<std::size_t>(step * C + c)];
        if (!std::isnan(v)) {
          ++owners;
          losses[static_cast<std::size_t>(c)] = v;
        }
      }
      if (owners != 1)
        rep.problems.push_back("step " + std::to_string(step) + " chunk " + std::to_string(c) + ": loss from " +
                               std::to_string(owners) + " ranks (expected 1)");
    }
    const double err = relative_error(losses, seq.losses[static_cast<std::size_t>(step)]);
    rep.max_rel_err = std::max(rep.max_rel_err, err);
    double ms = 0;
    for (const auto& s : all)
      ms = std::max(ms, 1e3 * s[s.size() - 2 - static_cast<std::size_t>(rc.steps) + static_cast<std::size_t>(step)]);
    rep.step_ms.push_back(ms);
    if (step == rc.steps - 1) last = losses;
  }
  for (double l : last) rep.loss_sum += l;
  double total = 0;
  for (int st = 0; st < layout.stages; ++st) {
    double v = NAN;
    for (const auto& s : all) {
      const double x = s[2 + static_cast<std::size_t>(rc.steps * C + st)];
      if (!std::isnan(x)) v = x;
    }
    total += v;
  }
  rep.grad_norm = std::sqrt(total);
  if (std::isnan(rep.grad_norm)) rep.problems.push_back("a stage's gradient norm is missing");
  if (rep.max_rel_err > rep.tolerance)
    rep.problems.push_back("max relative error " + std::to_string(rep.max_rel_err) + " exceeds " +
                           std::to_string(rep.tolerance));
  return rep;
}

}  // namespace mlp
