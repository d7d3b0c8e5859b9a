// The CUDA device policy on a GPU: every schedule with CudaLocalCommunicator + CudaDevice gives the in-process
// host run's losses, gradients and outputs; the streams each call gets; the forward_backward hook; a failed
// step and reset; graph capture and replay; the GPU timeline.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "dualpipe/dualpipe.hpp"
#ifdef DUALPIPE_TEST_NCCL
#include "dualpipe/nccl.hpp"
#endif
#include "gpu_affine_stage.hpp"
#ifdef DUALPIPE_TEST_NCCL
#include "nccl_ranks.hpp"
#endif

using namespace dualpipe;
using namespace gputest;

TYPE_TO_STRING(DualPipe);
TYPE_TO_STRING(DualPipeV);
TYPE_TO_STRING(OneFOneB);
TYPE_TO_STRING(ZB1P);
TYPE_TO_STRING(GPipe);

namespace {

constexpr double tolerance = 1e-12;

/// What a run of every rank gives, in a form both runs can be compared in.
struct RunResult {
  std::vector<std::vector<double>> losses;     // [step][batch chunk]
  std::map<int, std::vector<double>> grads;    // model stage -> (d/da, d/db) summed over its copies
  std::map<int, std::vector<double>> outputs;  // batch chunk -> last-stage output (last step)
  std::vector<StepResult> last;                // last step, per pipeline rank
  std::vector<std::vector<Call>> calls;        // per pipeline rank: every module's calls, module 0 first
  std::vector<long> slot_waits;                // per rank
  std::vector<long> replays;                   // per rank
  std::vector<std::string> errors;             // per rank: what a failed step threw

  /// Keeps step `s`'s losses (the chunks whose loss this rank computed) and, for the last step, its outputs.
  void record(int s, const StepResult& sr, bool last_step, std::size_t n) {
    auto& mine = losses[static_cast<std::size_t>(s)];
    for (std::size_t c = 0; c < mine.size(); ++c)
      if (!std::isnan(sr.losses[c])) mine[c] = sr.losses[c];
    if (!last_step) return;
    std::size_t off = 0;
    for (int b : sr.output_chunks) {
      const auto* p = reinterpret_cast<const double*>(sr.outputs.data() + off);
      outputs[b].assign(p, p + n);
      off += n * sizeof(double);
    }
  }

  /// Adds a stage copy's gradients to its model stage's.
  void add_grads(int stage, const std::vector<double>& mine) {
    auto& g = grads[stage];
    if (g.empty()) g = mine;
    else
      for (std::size_t i = 0; i < 2; ++i) g[i] += mine[i];
  }
};

struct Batch {
  std::vector<double> inputs, labels;
};

Batch make_batch(int chunks, std::size_t n, int step) {
  Batch b;
  b.inputs.resize(static_cast<std::size_t>(chunks) * n);
  b.labels.resize(b.inputs.size());
  for (std::size_t i = 0; i < b.inputs.size(); ++i) {
    b.inputs[i] = std::sin(0.001 * static_cast<double>(i) + step) * 0.5;
    b.labels[i] = std::cos(0.0007 * static_cast<double>(i) - step) * 0.25;
  }
  return b;
}

double rel_err(const std::vector<double>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return INFINITY;
  double d = 0, s = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    d = std::max(d, std::abs(got[i] - want[i]));
    s = std::max(s, std::abs(want[i]));
  }
  return d / std::max(s, 1e-300);
}

struct GpuRunOptions {
  int steps = 2;
  bool return_outputs = true;
  Mode mode = Mode::train;
  unsigned spin_ns = 20'000;
  unsigned backward_spin_ns = 0;  // > 0: the stages' backward_input kernel spins this long instead
  int slow_backward_rank = -1;    // >= 0: only this pipeline rank's stages take backward_spin_ns
  CudaDeviceOptions device;
  const Event* epoch = nullptr;
  int fail_rank = -1;  // this pipeline rank's module 0 throws in the forward of its chunk 1, in step 0
};

/// The ranks of a run on CudaLocalCommunicator: all on device 0 of this process.
struct LocalRanks {
  using Comm = CudaLocalCommunicator;
  static constexpr bool resettable = true;  // a failed step is followed by reset() and more steps
  explicit LocalRanks(int P) : world(P) {}
  [[nodiscard]] static int device(int /*rank*/) { return 0; }
  template <class F>
  void run(int rank, F&& f) {
    f(world.communicator(rank));
  }
  CudaLocalWorld world;
};

template <class Schedule, bool Hook, class Ranks = LocalRanks>
RunResult run_gpu(int P, int C, std::size_t n, GpuRunOptions o = {}) {
  using StageT = GpuAffineStage<Hook>;
  constexpr int M = Schedule::modules_per_rank;
  Ranks ranks(P);
  RunResult res;
  res.losses.assign(static_cast<std::size_t>(o.steps), std::vector<double>(static_cast<std::size_t>(C), NAN));
  res.last.resize(static_cast<std::size_t>(P));
  res.calls.resize(static_cast<std::size_t>(P));
  res.slot_waits.assign(static_cast<std::size_t>(P), 0);
  res.replays.assign(static_cast<std::size_t>(P), 0);
  res.errors.resize(static_cast<std::size_t>(P));
  std::mutex mu;
  run_ranks(P, [&](int r) {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(Ranks::device(r)));
    // Each rank's copy of every step's batch, on its device (the legacy stream: the step waits for it).
    std::vector<DeviceBuffer<SyncAllocator>> d_in, d_lab;
    for (int s = 0; s < o.steps; ++s) {
      const Batch b = make_batch(C, n, s);
      d_in.emplace_back(b.inputs.size() * sizeof(double), StreamRef());
      d_lab.emplace_back(b.labels.size() * sizeof(double), StreamRef());
      DUALPIPE_CUDA_CHECK(cudaMemcpy(d_in.back().data(), b.inputs.data(), d_in.back().size(), cudaMemcpyHostToDevice));
      DUALPIPE_CUDA_CHECK(
          cudaMemcpy(d_lab.back().data(), b.labels.data(), d_lab.back().size(), cudaMemcpyHostToDevice));
    }
    std::vector<std::unique_ptr<StageT>> stages;
    std::array<StageT*, M> ptrs{};
    for (int m = 0; m < M; ++m) {
      const ModulePlacement pl = Schedule::placement(P, C, r, m);
      const bool slow = o.slow_backward_rank < 0 || o.slow_backward_rank == r;
      stages.push_back(std::make_unique<StageT>(pl.stage, pl.num_chunks, n, o.spin_ns, slow ? o.backward_spin_ns : 0));
      ptrs[static_cast<std::size_t>(m)] = stages.back().get();
    }
    PipelineOptions po;
    po.timeout = std::chrono::milliseconds(o.fail_rank >= 0 ? 5'000 : 30'000);
    po.scale_loss_by_chunks = true;
    CudaDeviceOptions dopt = o.device;
    dopt.device = Ranks::device(r);
    dopt.timeline_epoch = o.epoch;
    ranks.run(r, [&](typename Ranks::Comm& comm) {
      Pipeline<Schedule, typename Ranks::Comm, StageT, CudaDevice> pipe(comm, ptrs, po, CudaDevice(dopt));
      for (int s = 0; s < o.steps; ++s) {
        if (s == 0 && r == o.fail_rank) stages[0]->fail_forward_of_chunk = 1;
        for (auto& st : stages) st->zero_grad();
        const auto size_b = static_cast<std::size_t>(C) * n * sizeof(double);
        const ConstBytes in(static_cast<const std::byte*>(d_in[static_cast<std::size_t>(s)].data()), size_b);
        const ConstBytes lab(static_cast<const std::byte*>(d_lab[static_cast<std::size_t>(s)].data()), size_b);
        StepResult sr;
        if (s == 0 && o.fail_rank >= 0) {
          try {
            sr = pipe.step(C, in, lab);
            FAIL("rank " << r << ": the step did not fail");
          } catch (const StepError& e) {
            res.errors[static_cast<std::size_t>(r)] = e.what();
          }
          stages[0]->fail_forward_of_chunk = -1;
          if constexpr (!Ranks::resettable) return;
          pipe.reset();
          continue;
        }
        sr = o.mode == Mode::train ? pipe.step(C, in, lab, {o.return_outputs})
                                   : pipe.eval(C, in, lab, {o.return_outputs});
        std::lock_guard lk(mu);
        res.record(s, sr, s == o.steps - 1, n);
        if (s == o.steps - 1) res.last[static_cast<std::size_t>(r)] = sr;
      }
      std::lock_guard lk(mu);
      for (auto& st : stages) {
        res.add_grads(st->stage(), st->grads());
        res.calls[static_cast<std::size_t>(r)].insert(res.calls[static_cast<std::size_t>(r)].end(), st->calls.begin(),
                                                      st->calls.end());
      }
      res.slot_waits[static_cast<std::size_t>(r)] = pipe.device().slot_waits();
      res.replays[static_cast<std::size_t>(r)] = pipe.device().graph_replays();
    });
  });
  return res;
}

template <class Schedule>
RunResult run_cpu(int P, int C, std::size_t n, int steps, Mode mode = Mode::train) {
  constexpr int M = Schedule::modules_per_rank;
  InProcessWorld world(P);
  RunResult res;
  res.losses.assign(static_cast<std::size_t>(steps), std::vector<double>(static_cast<std::size_t>(C), NAN));
  std::mutex mu;
  run_ranks(P, [&](int r) {
    std::vector<std::unique_ptr<CpuAffineStage>> stages;
    std::array<CpuAffineStage*, M> ptrs{};
    for (int m = 0; m < M; ++m) {
      const ModulePlacement pl = Schedule::placement(P, C, r, m);
      stages.push_back(std::make_unique<CpuAffineStage>(pl.stage, pl.num_chunks, n));
      ptrs[static_cast<std::size_t>(m)] = stages.back().get();
    }
    PipelineOptions po;
    po.scale_loss_by_chunks = true;
    Pipeline<Schedule, InProcessCommunicator, CpuAffineStage> pipe(world.communicator(r), ptrs, po);
    for (int s = 0; s < steps; ++s) {
      for (auto& st : stages) st->zero_grad();
      const Batch b = make_batch(C, n, s);
      const ConstBytes in = std::as_bytes(std::span(b.inputs));
      const ConstBytes lab = std::as_bytes(std::span(b.labels));
      const StepResult sr = mode == Mode::train ? pipe.step(C, in, lab, {true}) : pipe.eval(C, in, lab, {true});
      std::lock_guard lk(mu);
      res.record(s, sr, s == steps - 1, n);
    }
    std::lock_guard lk(mu);
    for (auto& st : stages) res.add_grads(st->stage(), st->grads());
  });
  return res;
}

void check_same(const RunResult& gpu, const RunResult& cpu) {
  REQUIRE(gpu.losses.size() == cpu.losses.size());
  for (std::size_t s = 0; s < gpu.losses.size(); ++s) {
    CAPTURE(s);
    CHECK(rel_err(gpu.losses[s], cpu.losses[s]) <= tolerance);
  }
  CHECK(gpu.grads.size() == cpu.grads.size());
  for (const auto& [stage, g] : cpu.grads) {
    CAPTURE(stage);
    REQUIRE(gpu.grads.count(stage) == 1);
    CHECK(rel_err(gpu.grads.at(stage), g) <= tolerance);
  }
  CHECK(gpu.outputs.size() == cpu.outputs.size());
  for (const auto& [chunk, out] : cpu.outputs) {
    CAPTURE(chunk);
    REQUIRE(gpu.outputs.count(chunk) == 1);
    CHECK(rel_err(gpu.outputs.at(chunk), out) <= tolerance);
  }
}

template <class Schedule>
std::vector<std::pair<int, int>> configs() {
  std::vector<std::pair<int, int>> out;
  for (auto [P, C] : std::vector<std::pair<int, int>>{{2, 4}, {4, 8}, {4, 10}, {8, 16}}) {
    try {
      Schedule::check(P, C);
    } catch (const ConfigError&) {
      continue;
    }
    out.emplace_back(P, C);
  }
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("Gpu.Pipeline.EqualsInProcess" * doctest::timeout(600), Schedule, DualPipe, DualPipeV, OneFOneB,
                   ZB1P, GPipe) {
  const std::size_t n = 4096;
  for (auto [P, C] : configs<Schedule>()) {
    CAPTURE(P);
    CAPTURE(C);
    const RunResult cpu = run_cpu<Schedule>(P, C, n, 2);
    check_same(run_gpu<Schedule, false>(P, C, n), cpu);
    if constexpr (Schedule::modules_per_rank == 2) check_same(run_gpu<Schedule, true>(P, C, n), cpu);
  }
}

TEST_CASE("Gpu.Pipeline.Eval" * doctest::timeout(300)) {
  GpuRunOptions o;
  o.mode = Mode::forward;
  o.steps = 1;
  check_same(run_gpu<DualPipe, false>(4, 8, 1024, o), run_cpu<DualPipe>(4, 8, 1024, 1, Mode::forward));
}

TEST_CASE("Gpu.Pipeline.OrderingWithoutSpinToo" * doctest::timeout(300)) {
  // No busy-waits: the GPU runs as fast as it can, the host is the slow side. Same answers.
  GpuRunOptions o;
  o.spin_ns = 0;
  check_same(run_gpu<DualPipeV, false>(4, 12, 65536, o), run_cpu<DualPipeV>(4, 12, 65536, 2));
}

TEST_CASE("Gpu.Pipeline.StreamsOfEachCall" * doctest::timeout(300)) {
  const int P = 4, C = 10;
  for (bool hook : {false, true}) {
    CAPTURE(hook);
    const RunResult r = hook ? run_gpu<DualPipeV, true>(P, C, 1024) : run_gpu<DualPipeV, false>(P, C, 1024);
    long fb_backwards_on_second = 0, hooks = 0;
    for (int rank = 0; rank < P; ++rank) {
      CAPTURE(rank);
      const auto& calls = r.calls[static_cast<std::size_t>(rank)];
      REQUIRE(!calls.empty());
      std::vector<void*> streams;
      for (const Call& c : calls) {
        CHECK(c.stream != nullptr);
        if (std::find(streams.begin(), streams.end(), c.stream) == streams.end()) streams.push_back(c.stream);
        if (c.kind == 'H') ++hooks;
      }
      CHECK(streams.size() <= 2);  // main and (for FB backward halves) second, nothing else
      // Forwards and losses always run on the first stream the rank used (main); so do W ops.
      void* main = calls.front().stream;
      for (const Call& c : calls)
        if (c.kind == 'F' || c.kind == 'L') CHECK(c.stream == main);
      for (const Call& c : calls)
        if ((c.kind == 'I' || c.kind == 'W') && c.stream != main) ++fb_backwards_on_second;
      CHECK(r.slot_waits[static_cast<std::size_t>(rank)] > 0);
    }
    // Every FB of DualPipeV ran its backward on the second stream, with or without the hook.
    long fb_ops = 0;
    for (int rank = 0; rank < P; ++rank)
      for (const Op& op : make_rank_plan<DualPipeV>(P, C, rank, Mode::train).ops)
        if (op.kind == OpKind::forward_backward) ++fb_ops;
    CHECK(fb_ops > 0);
    CHECK(fb_backwards_on_second == 2 * 2 * fb_ops);  // 2 steps x (I and W) per FB
    CHECK(hooks == (hook ? 2 * fb_ops : 0));
  }
}

TEST_CASE("Gpu.Pipeline.FailureAndReset" * doctest::timeout(300)) {
  GpuRunOptions o;
  o.steps = 2;  // step 0 fails on rank 1 (every rank sees a StepError), step 1 must be right
  o.fail_rank = 1;
  const RunResult gpu = run_gpu<DualPipe, false>(4, 8, 1024, o);
  const RunResult cpu = run_cpu<DualPipe>(4, 8, 1024, 2);
  CHECK(rel_err(gpu.losses[1], cpu.losses[1]) <= tolerance);
}

TEST_CASE("Gpu.Pipeline.GraphCaptureAndReplay" * doctest::timeout(300)) {
  // One rank (its transfers can be captured): ZB1P on P=1 runs F, B-input and W ops of every chunk.
  const int C = 6;
  const std::size_t n = 2048;
  GpuRunOptions eager;
  eager.steps = 1;
  const RunResult ref = run_gpu<ZB1P, false>(1, C, n, eager);
  // Same batch every step: make_batch depends on the step, so use one step's batch by running 4 steps of
  // a pipeline whose batch pointers do not change: build it by hand.
  CudaLocalWorld world(1);
  GpuAffineStage<false> stage(0, C, n);
  CudaDeviceOptions dopt;
  dopt.graph = GraphMode::capture;
  dopt.graph_warmup_steps = 1;
  PipelineOptions po;
  po.scale_loss_by_chunks = true;
  Pipeline<ZB1P, CudaLocalCommunicator, GpuAffineStage<false>, CudaDevice> pipe(world.communicator(0), {&stage}, po,
                                                                                CudaDevice(dopt));
  const Batch b = make_batch(C, n, 0);
  DeviceBuffer<SyncAllocator> din(b.inputs.size() * sizeof(double), StreamRef());
  DeviceBuffer<SyncAllocator> dlab(b.labels.size() * sizeof(double), StreamRef());
  DUALPIPE_CUDA_CHECK(cudaMemcpy(din.data(), b.inputs.data(), din.size(), cudaMemcpyHostToDevice));
  DUALPIPE_CUDA_CHECK(cudaMemcpy(dlab.data(), b.labels.data(), dlab.size(), cudaMemcpyHostToDevice));
  const ConstBytes in(static_cast<const std::byte*>(din.data()), din.size());
  const ConstBytes lab(static_cast<const std::byte*>(dlab.data()), dlab.size());
  for (int s = 0; s < 4; ++s) {
    CAPTURE(s);
    stage.zero_grad();
    const std::size_t calls_before = stage.calls.size();
    const StepResult r = pipe.step(C, in, lab);
    CHECK(rel_err(r.losses, ref.losses[0]) == 0.0);  // the same kernels on the same data: the same bits
    CHECK(rel_err(stage.grads(), ref.grads.at(0)) == 0.0);
    // Steps 0 (warm-up) and 1 (captured) run the stage's host code; replays run none.
    CHECK((stage.calls.size() > calls_before) == (s < 2));
  }
  CHECK(pipe.device().graph_captures() == 1);
  CHECK(pipe.device().graph_replays() == 2);
}

namespace {

// One step with the GPU timeline on, every rank's spans on the clock of `epoch` (a timing event, done).
GpuRunOptions one_timed_step(const Event& epoch) {
  GpuRunOptions o;
  o.steps = 1;
  o.device.gpu_timeline = true;
  o.epoch = &epoch;
  return o;
}

Event done_timing_event() {
  Event e(Event::timing);
  e.record(StreamRef());
  e.synchronize();
  return e;
}

}  // namespace

TEST_CASE("Gpu.Pipeline.GpuTimeline" * doctest::timeout(300)) {
  const Event epoch = done_timing_event();
  const GpuRunOptions o = one_timed_step(epoch);
  const int P = 4, C = 8;
  const RunResult r = run_gpu<DualPipe, false>(P, C, 1 << 16, o);
  for (int rank = 0; rank < P; ++rank) {
    CAPTURE(rank);
    const StepResult& s = r.last[static_cast<std::size_t>(rank)];
    const RankPlan plan = make_rank_plan<DualPipe>(P, C, rank, Mode::train);
    CHECK(s.spans.size() == plan.compute_ops);
    double prev_end = 0;
    for (const Span& sp : s.spans) {
      CHECK(sp.start >= 0);
      CHECK(sp.end >= sp.start);
      CHECK(sp.start >= prev_end - 1e-9);  // one main stream: compute spans do not overlap
      prev_end = sp.end;
      CHECK(is_compute(sp.op.kind));
    }
    CHECK(s.clock_start >= 0);
  }
  const Timeline t = merge_timelines("dualpipe", C, Mode::train, r.last);
  CHECK(t.makespan() > 0);
  CHECK(t.bubble_ratio() >= 0);
  CHECK(t.bubble_ratio() < 1);
}

// A GPU span starts when the op's data is there: the time the main stream waits for a transfer is bubble.
// With one module per rank (1F1B), rank r's F of chunk c needs rank r-1's F of c, and its B needs rank
// r+1's B of c, so on the shared clock no consumer may start before its producer ended.
TEST_CASE("Gpu.Pipeline.GpuTimelineSpansStartWhenTheirDataArrives" * doctest::timeout(300)) {
  const Event epoch = done_timing_event();
  GpuRunOptions o = one_timed_step(epoch);
  o.spin_ns = 50'000;  // every kernel takes a while, so that a waiting consumer would start visibly early
  const int P = 4, C = 6;
  const RunResult r = run_gpu<OneFOneB, false>(P, C, 1 << 12, o);
  // end[rank][kind][chunk] and start[...], on the shared clock (seconds since the epoch).
  std::map<std::tuple<int, OpKind, int>, std::pair<double, double>> span;
  for (int rank = 0; rank < P; ++rank) {
    const StepResult& s = r.last[static_cast<std::size_t>(rank)];
    for (const Span& sp : s.spans)
      span[{rank, sp.op.kind, sp.op.chunk}] = {s.clock_start + sp.start, s.clock_start + sp.end};
  }
  int checked = 0;
  for (int rank = 0; rank < P; ++rank)
    for (int c = 0; c < C; ++c)
      for (const auto& [kind, producer] :
           {std::pair{OpKind::forward, rank - 1}, std::pair{OpKind::backward, rank + 1}}) {
        if (producer < 0 || producer >= P) continue;
        CAPTURE(rank);
        CAPTURE(c);
        CAPTURE(to_token(kind == OpKind::forward ? Op::F(0, c) : Op::B(0, c)));
        REQUIRE(span.count({rank, kind, c}) == 1);
        REQUIRE(span.count({producer, kind, c}) == 1);
        CHECK(span[{rank, kind, c}].first >= span[{producer, kind, c}].second - 1e-6);
        ++checked;
      }
  CHECK(checked == 2 * (P - 1) * C);
}

// The same for an FB, which waits for two transfers: the activation on the main stream and the gradient on
// the second. DualPipe with 2 ranks and 4 chunks: rank 0 runs F1.0 F0.1 B1.0 and then FB1.1/0.0, whose
// activation (rank 1's F1.1) is there early and whose gradient (rank 1's B0.0) comes late, as rank 1's
// backward kernels are made slow: the FB's span must not start before that gradient was made.
TEST_CASE("Gpu.Pipeline.GpuTimelineFbSpansStartWhenBothHalvesHaveTheirData" * doctest::timeout(300)) {
  const Event epoch = done_timing_event();
  GpuRunOptions o = one_timed_step(epoch);
  o.spin_ns = 10'000;
  o.backward_spin_ns = 400'000;
  o.slow_backward_rank = 1;
  const int P = 2, C = 4;
  const RunResult r = run_gpu<DualPipe, false>(P, C, 1 << 12, o);
  auto span = [&](int rank, const std::string& token) {
    const StepResult& s = r.last[static_cast<std::size_t>(rank)];
    for (const Span& sp : s.spans)
      if (to_token(sp.op) == token) return std::pair{s.clock_start + sp.start, s.clock_start + sp.end};
    FAIL("no span " << token << " on rank " << rank);
    return std::pair{0.0, 0.0};
  };
  const auto fb = span(0, "FB1.1/0.0");
  const auto activation = span(1, "F1.1");
  const auto gradient = span(1, "B0.0");
  CHECK(activation.second < gradient.first);  // the set-up: the activation is made first
  CHECK(fb.first >= activation.second - 1e-6);
  CHECK(fb.first >= gradient.second - 1e-6);  // the second stream's wait counts, not the op's time
  CHECK(fb.second > fb.first);
}

#ifdef DUALPIPE_TEST_NCCL
// NCCL with several ranks needs a GPU per rank: on a one-GPU machine these cases skip their configurations
// (the CUDA emulator has 8 devices and runs them all).
TEST_CASE_TEMPLATE("Gpu.Pipeline.NcclEqualsInProcess" * doctest::timeout(600), Schedule, DualPipe, DualPipeV, ZB1P) {
  const std::size_t n = 2048;
  for (auto [P, C] : configs<Schedule>()) {
    CAPTURE(P);
    CAPTURE(C);
    if (cuda_device_count() < P) {
      MESSAGE("skipped: " << P << " NCCL ranks need " << P << " GPUs, this machine has " << cuda_device_count());
      continue;
    }
    const RunResult cpu = run_cpu<Schedule>(P, C, n, 2);
    check_same(run_gpu<Schedule, false, NcclRanks>(P, C, n), cpu);
    if constexpr (Schedule::modules_per_rank == 2) check_same(run_gpu<Schedule, true, NcclRanks>(P, C, n), cpu);
  }
}

TEST_CASE("Gpu.Pipeline.NcclFailureEndsEveryRanksStep" * doctest::timeout(120)) {
  // Rank 1 fails in its forward: it aborts its communicator; the others' transfers with it never end,
  // until their watchdogs abort theirs. Every rank's step ends with a StepError, none hangs.
  const int P = 4;
  if (cuda_device_count() < P) {
    MESSAGE("skipped: needs " << P << " GPUs");
    return;
  }
  GpuRunOptions o;
  o.steps = 1;
  o.fail_rank = 1;
  const RunResult r = run_gpu<DualPipe, false, NcclRanks>(P, 8, 1024, o);
  for (int rank = 0; rank < P; ++rank) {
    CAPTURE(rank);
    const std::string& e = r.errors[static_cast<std::size_t>(rank)];
    MESSAGE("rank " << rank << ": " << e);
    CHECK(!e.empty());
  }
  CHECK(r.errors[1].find("injected failure in forward") != std::string::npos);
  // The others' watchdogs name the transfer each was stuck in.
  for (int rank : {0, 2, 3}) CHECK(r.errors[static_cast<std::size_t>(rank)].find("op watchdog") != std::string::npos);
}
#endif

#ifdef DUALPIPE_TEST_NCCL
TEST_CASE("Gpu.Pipeline.NcclGraphCaptureAndReplay" * doctest::timeout(300)) {
  // Two NCCL ranks capture their steps (the transfers too) and replay them; a batch that moves afterwards
  // is a ConfigError on every rank (they cannot recapture at once), not a hang.
  const int P = 2, C = 4;
  const std::size_t n = 1024;
  if (cuda_device_count() < P) {
    MESSAGE("skipped: needs " << P << " GPUs");
    return;
  }
  GpuRunOptions eager;
  eager.steps = 1;
  const RunResult ref = run_gpu<DualPipe, false, NcclRanks>(P, C, n, eager);
  NcclRanks ranks(P);
  std::mutex mu;
  std::vector<long> replays(P, 0), captures(P, 0);
  std::map<int, std::vector<double>> grads;
  run_ranks(P, [&](int r) {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(r));
    const Batch b = make_batch(C, n, 0);
    std::vector<DeviceBuffer<SyncAllocator>> din, dlab;  // [0]: the batch of every step; [1]: the same, moved
    for (int k = 0; k < 2; ++k) {
      din.emplace_back(b.inputs.size() * sizeof(double), StreamRef());
      dlab.emplace_back(b.labels.size() * sizeof(double), StreamRef());
      DUALPIPE_CUDA_CHECK(cudaMemcpy(din.back().data(), b.inputs.data(), din.back().size(), cudaMemcpyHostToDevice));
      DUALPIPE_CUDA_CHECK(cudaMemcpy(dlab.back().data(), b.labels.data(), dlab.back().size(), cudaMemcpyHostToDevice));
    }
    std::vector<std::unique_ptr<GpuAffineStage<false>>> stages;
    std::array<GpuAffineStage<false>*, 2> ptrs{};
    for (int m = 0; m < 2; ++m) {
      const ModulePlacement pl = DualPipe::placement(P, C, r, m);
      stages.push_back(std::make_unique<GpuAffineStage<false>>(pl.stage, pl.num_chunks, n));
      ptrs[static_cast<std::size_t>(m)] = stages.back().get();
    }
    PipelineOptions po;
    po.timeout = std::chrono::milliseconds(10'000);
    po.scale_loss_by_chunks = true;
    CudaDeviceOptions dopt;
    dopt.device = r;
    dopt.graph = GraphMode::capture;
    ranks.run(r, [&](NcclCommunicator& comm) {
      Pipeline<DualPipe, NcclCommunicator, GpuAffineStage<false>, CudaDevice> pipe(comm, ptrs, po, CudaDevice(dopt));
      auto bytes_of = [&](const DeviceBuffer<SyncAllocator>& d) {
        return ConstBytes(static_cast<const std::byte*>(d.data()), d.size());
      };
      for (int s = 0; s < 4; ++s) {
        CAPTURE(s);
        for (auto& st : stages) st->zero_grad();
        const StepResult sr = pipe.step(C, bytes_of(din[0]), bytes_of(dlab[0]));
        for (int c = 0; c < C; ++c)
          if (!std::isnan(sr.losses[static_cast<std::size_t>(c)]))
            CHECK(sr.losses[static_cast<std::size_t>(c)] == ref.losses[0][static_cast<std::size_t>(c)]);
      }
      {
        std::lock_guard lk(mu);
        for (auto& st : stages) {  // the last step's, summed over each stage's copies as in `ref`
          auto& g = grads[st->stage()];
          const std::vector<double> mine = st->grads();
          if (g.empty()) g = mine;
          else
            for (std::size_t i = 0; i < 2; ++i) g[i] += mine[i];
        }
        replays[static_cast<std::size_t>(r)] = pipe.device().graph_replays();
        captures[static_cast<std::size_t>(r)] = pipe.device().graph_captures();
      }
      CHECK_THROWS_WITH_AS(pipe.step(C, bytes_of(din[1]), bytes_of(dlab[1])),
                           doctest::Contains("graph capture with 2 ranks"), StepError);
    });
  });
  for (int r = 0; r < P; ++r) {
    CHECK(captures[static_cast<std::size_t>(r)] == 1);
    CHECK(replays[static_cast<std::size_t>(r)] == 2);
  }
  for (const auto& [stage, g] : ref.grads) {
    CAPTURE(stage);
    CHECK(rel_err(grads[stage], g) == 0.0);  // the same kernels in the same order: the same bits
  }
}
#endif
