// dualpipe-bench-gpu: the GPU figures (Google Benchmark, manual time from CUDA events or GPU timelines).
// Without a CUDA device it prints "no CUDA device" and exits 77.
//
//   FB/<stage>/<mode>            one FB op of a synthetic stage: mode two_stream is the device's default
//                                (forward on the main stream, backward on the second, fork/join with events),
//                                f_then_b runs both halves on the main stream. stage comm_heavy: each half
//                                is a short narrow kernel plus a large device copy (memory bound, like an MoE
//                                layer's all-to-all); compute_heavy: each half a kernel filling the whole GPU.
//                                Time: CUDA events around the op.
//   Step/dualpipe/<transfers>    a DualPipe step, 4 ranks on one GPU (CudaLocalCommunicator), chunk messages
//                                of 8 MiB, with the copies (transfers) or without (copy = false: the same
//                                events, no bytes moved). Time: the slowest rank's step. Target: within 5%.
//   HostOverhead/<mode>          ZB1P on one rank with tiny ops: eager (op by op) or graph (a captured step
//                                replayed). Counters ns_per_op = step wall time / ops, issue_ns_per_op
//                                (eager: the host's issue time alone, from its own spans).
//   HostAhead/op_us:50           the same with 50 us ops: issue_fraction = the host's issue time / step time
//                                (below 1: the host ran ahead of the GPU and waited only at the end).
//   Bubble/<schedule>            measured bubble ratio of a step (GPU timeline, 4 ranks on one GPU) against
//                                the simulator's (async model) for the F, B, W and FB times measured on the
//                                same stage alone and the transfer latency measured on two ranks (hop_us);
//                                counters measured, simulated, rel_diff (|m - s| / s), pp_diff (|m - s| in
//                                percentage points), makespan_ratio (measured / simulated step), and the same
//                                with the step's own op times (*_in_step). Target: rel_diff within 10%.
//                                (DUALPIPE_BENCH_BUBBLE_OP_US sets the ops' busy time, default 120.)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench_kernels.hpp"
#include "bench_stage.hpp"
#include "dualpipe/cuda.hpp"
#include "dualpipe/dualpipe.hpp"

namespace {

using namespace dualpipe;
using gpubench::BenchStage;
using gpubench::StageCost;

int sm_count() {
  int n = 0;
  DUALPIPE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0));
  return n;
}

StageCost comm_heavy() {
  StageCost c;
  c.forward_ns = c.backward_input_ns = c.weight_ns = 60'000;
  c.blocks = 4;               // a few SMs: most of the GPU is free for the other half's copy
  c.copy_bytes = 256u << 20;  // 128 MiB copied per half: ~100 us of HBM traffic on an H100
  return c;
}
StageCost compute_heavy() {
  StageCost c;
  c.forward_ns = c.backward_input_ns = c.weight_ns = 200'000;
  // Every block slot of every SM: the other half cannot run beside it.
  c.blocks = gpubench::busy_blocks_per_sm() * static_cast<unsigned>(sm_count());
  c.copy_bytes = 0;
  return c;
}

// One rank (CudaLocalWorld of one) with its device, for single-op measurements.
struct Solo {
  CudaLocalWorld world{1};
  CudaDevice device{CudaDeviceOptions{}};
  Solo() { device.attach(world.communicator(0)); }
  StageContext ctx(ComputeLane lane, bool last = false) {
    StageContext c;
    c.stream = device.stream(lane);
    c.is_last_stage = last;
    c.num_batch_chunks = 1;
    return c;
  }
};

void fb_bench(benchmark::State& state, StageCost cost, bool two_stream) {
  Solo solo;
  BenchStage f(cost), b(cost);
  DeviceBuffer<SyncAllocator> in(cost.message_bytes, StreamRef()), out(cost.message_bytes, StreamRef()),
      grad(cost.message_bytes, StreamRef()), in_grad(cost.message_bytes, StreamRef());
  const ConstBytes cin(static_cast<const std::byte*>(in.data()), in.size());
  const MutableBytes mout(static_cast<std::byte*>(out.data()), out.size());
  const ConstBytes cgrad(static_cast<const std::byte*>(grad.data()), grad.size());
  const MutableBytes mig(static_cast<std::byte*>(in_grad.data()), in_grad.size());
  const StreamRef main = solo.device.main_stream();
  Event t0(Event::timing), t1(Event::timing);
  auto one = [&] {
    t0.record(main);
    if (two_stream) {
      solo.device.fork();
      f.forward(solo.ctx(ComputeLane::main), cin, mout);
      b.backward_input(solo.ctx(ComputeLane::second), cgrad, mig);
      b.backward_weight(solo.ctx(ComputeLane::second));
      solo.device.join();
    } else {
      f.forward(solo.ctx(ComputeLane::main), cin, mout);
      b.backward_input(solo.ctx(ComputeLane::main), cgrad, mig);
      b.backward_weight(solo.ctx(ComputeLane::main));
    }
    t1.record(main);
    t1.synchronize();
  };
  one();  // warm-up
  for (auto _ : state) {
    one();
    state.SetIterationTime(t1.elapsed_ms_since(t0) * 1e-3);
  }
}

// P pipelines on one GPU, built once; step() runs one step on every rank (a thread each) and returns the
// slowest rank's step seconds.
template <class Schedule, class Stage = BenchStage>
struct Team {
  using Pipe = Pipeline<Schedule, CudaLocalCommunicator, Stage, CudaDevice>;
  static constexpr int M = Schedule::modules_per_rank;
  int P, C;
  CudaLocalWorld world;
  std::vector<std::unique_ptr<Stage>> stages;
  std::vector<std::unique_ptr<Pipe>> pipes;
  DeviceBuffer<SyncAllocator> inputs, labels;
  std::vector<StepResult> results;

  Team(int ranks, int chunks, StageCost cost, CudaLocalOptions wo = {}, CudaDeviceOptions dopt = {},
       bool record_host_spans = false)
      : P(ranks), C(chunks), world(ranks, 0, wo),
        inputs(cost.message_bytes * static_cast<std::size_t>(chunks), StreamRef()),
        labels(8 * static_cast<std::size_t>(chunks), StreamRef()), results(static_cast<std::size_t>(ranks)) {
    PipelineOptions po;
    po.record_timeline = record_host_spans;
    for (int r = 0; r < P; ++r) {
      std::array<Stage*, M> ptrs{};
      for (int m = 0; m < M; ++m) {
        stages.push_back(std::make_unique<Stage>(cost));
        ptrs[static_cast<std::size_t>(m)] = stages.back().get();
      }
      pipes.push_back(std::make_unique<Pipe>(world.communicator(r), ptrs, po, CudaDevice(dopt)));
    }
    step();  // plans, buffers, cuBLAS-free warm-up
  }
  double step() {
    run_ranks(P, [&](int r) {
      DUALPIPE_CUDA_CHECK(cudaSetDevice(0));
      pipes[static_cast<std::size_t>(r)]->step_into(
          results[static_cast<std::size_t>(r)], C,
          ConstBytes(static_cast<const std::byte*>(inputs.data()), inputs.size()),
          ConstBytes(static_cast<const std::byte*>(labels.data()), labels.size()));
    });
    double slowest = 0;
    for (const StepResult& r : results) slowest = std::max(slowest, r.step_seconds);
    return slowest;
  }
};

void step_bench(benchmark::State& state, bool transfers) {
  StageCost cost;
  cost.forward_ns = cost.backward_input_ns = cost.weight_ns = 150'000;
  cost.blocks = static_cast<unsigned>(sm_count() / 8);  // four ranks' kernels fit side by side
  cost.message_bytes = 8u << 20;
  Team<DualPipe> team(4, 16, cost, CudaLocalOptions{transfers});
  for (auto _ : state) state.SetIterationTime(team.step());
  state.counters["copies_per_step"] =
      static_cast<double>(team.world.copies()) / static_cast<double>(state.iterations() + 1);
}

std::size_t ops_of(const RankPlan& p) { return p.ops.size(); }

void host_overhead_bench(benchmark::State& state, bool graph, unsigned op_ns) {
  StageCost cost;
  cost.forward_ns = cost.backward_input_ns = cost.weight_ns = op_ns;
  cost.blocks = 1;
  cost.message_bytes = 4096;
  CudaDeviceOptions dopt;
  if (graph) dopt.graph = GraphMode::capture;
  const int C = 32;
  Team<ZB1P> team(1, C, cost, {}, dopt, /*record_host_spans=*/!graph);
  team.step();  // graph: the capture (warm-up was the constructor's step)
  const double ops = static_cast<double>(ops_of(team.pipes[0]->plan(C)));
  double issue = 0, wall = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    team.step();
    const double w = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(w);
    wall += w;
    double end = 0;
    for (const Span& s : team.results[0].spans) end = std::max(end, s.end);
    issue += end;
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["ops_per_step"] = ops;
  state.counters["ns_per_op"] = 1e9 * wall / (n * ops);
  if (!graph) {
    state.counters["issue_ns_per_op"] = 1e9 * issue / (n * ops);
    state.counters["issue_fraction"] = issue / wall;
  } else {
    state.counters["replays"] = static_cast<double>(team.pipes[0]->device().graph_replays());
  }
}

// GPU time of `fn` issued on the main stream of `solo` (mean of a few runs).
template <class F>
double gpu_seconds(Solo& solo, F&& fn) {
  Event t0(Event::timing), t1(Event::timing);
  double total = 0;
  for (int i = 0; i < 6; ++i) {
    t0.record(solo.device.main_stream());
    fn();
    t1.record(solo.device.main_stream());
    t1.synchronize();
    if (i > 0) total += t1.elapsed_ms_since(t0) * 1e-3;  // the first is a warm-up
  }
  return total / 5;
}

// With DUALPIPE_BENCH_TIMELINE_DIR set: the last measured step as bubble-<schedule>.svg and a Chrome trace
// (.json), next to the simulated one (bubble-<schedule>-simulated.svg), so that a bubble figure far from
// the simulator's can be looked at without running again.
void write_timelines(const std::string& schedule, const Timeline& measured, const Timeline& simulated) {
  const char* dir = std::getenv("DUALPIPE_BENCH_TIMELINE_DIR");
  if (!dir || !*dir) return;
  auto write = [&](const std::string& name, const std::string& text) {
    const std::string path = std::string(dir) + "/" + name;
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (!f || std::fwrite(text.data(), 1, text.size(), f) != text.size())
      std::fprintf(stderr, "dualpipe-bench-gpu: cannot write %s\n", path.c_str());
    if (f) std::fclose(f);
  };
  write("bubble-" + schedule + ".svg", render_svg(measured));
  write("bubble-" + schedule + ".json", render_chrome_trace(measured));
  write("bubble-" + schedule + "-simulated.svg", render_svg(simulated));
}

// Seconds from the end of an op on one rank to the start of the op on the next rank that needs its output:
// the transfer as the pipeline sees it (event, copy, event, wait), measured with the same communicator and
// device policy on two ranks that only wait for each other (1F1B, one chunk: F, F, B, B in a chain). The
// median of the hops of a few steps.
double hop_seconds(const StageCost& cost, const Event& epoch) {
  CudaDeviceOptions dopt;
  dopt.gpu_timeline = true;
  dopt.timeline_epoch = &epoch;
  Team<OneFOneB> team(2, 1, cost, {}, dopt);
  std::vector<double> hops;
  for (int s = 0; s < 7; ++s) {
    team.step();
    auto at = [&](int rank, OpKind kind) {
      const StepResult& r = team.results[static_cast<std::size_t>(rank)];
      for (const Span& sp : r.spans)
        if (sp.op.kind == kind) return std::pair{r.clock_start + sp.start, r.clock_start + sp.end};
      throw Error("hop_seconds: no span of the op on rank " + std::to_string(rank));
    };
    hops.push_back(at(1, OpKind::forward).first - at(0, OpKind::forward).second);
    hops.push_back(at(0, OpKind::backward).first - at(1, OpKind::backward).second);
  }
  std::sort(hops.begin(), hops.end());
  return std::max(0.0, hops[hops.size() / 2]);
}

template <class Schedule>
void bubble_bench(benchmark::State& state) {
  StageCost cost;
  // DUALPIPE_BENCH_BUBBLE_OP_US: each busy part's time (default 120 us). Longer ops make the hand-over
  // between streams negligible, which is how the comparison is checked on the CUDA emulator.
  const char* op_us = std::getenv("DUALPIPE_BENCH_BUBBLE_OP_US");
  const unsigned op_ns = op_us && std::atoi(op_us) > 0 ? 1000u * static_cast<unsigned>(std::atoi(op_us)) : 120'000u;
  cost.forward_ns = op_ns;
  cost.backward_input_ns = op_ns;
  cost.weight_ns = op_ns;
  cost.blocks = static_cast<unsigned>(sm_count() / 8);
  cost.message_bytes = 1u << 20;
  const int P = 4, C = 16;
  // The op times, measured on the same stage alone; the transfer latency, measured on two ranks.
  Costs costs;
  double copy_seconds = 0;
  {
    Solo solo;
    BenchStage a(cost), b(cost);
    DeviceBuffer<SyncAllocator> x(cost.message_bytes, StreamRef()), y(cost.message_bytes, StreamRef()),
        z(cost.message_bytes, StreamRef());
    const ConstBytes cx(static_cast<const std::byte*>(x.data()), x.size());
    const MutableBytes my(static_cast<std::byte*>(y.data()), y.size());
    const MutableBytes mz(static_cast<std::byte*>(z.data()), z.size());  // the backward half's output in an FB
    costs.forward = gpu_seconds(solo, [&] { a.forward(solo.ctx(ComputeLane::main), cx, my); });
    costs.weight = gpu_seconds(solo, [&] { a.backward_weight(solo.ctx(ComputeLane::main)); });
    costs.backward = gpu_seconds(solo, [&] {
      a.backward_input(solo.ctx(ComputeLane::main), cx, my);
      a.backward_weight(solo.ctx(ComputeLane::main));
    });
    costs.forward_backward = gpu_seconds(solo, [&] {
      solo.device.fork();
      a.forward(solo.ctx(ComputeLane::main), cx, my);
      b.backward_input(solo.ctx(ComputeLane::second), cx, mz);
      b.backward_weight(solo.ctx(ComputeLane::second));
      solo.device.join();
    });
    copy_seconds = gpu_seconds(solo, [&] {
      DUALPIPE_CUDA_CHECK(
          cudaMemcpyAsync(y.data(), x.data(), x.size(), cudaMemcpyDeviceToDevice, solo.device.main_stream()));
    });
  }
  Event epoch(Event::timing);
  epoch.record(StreamRef());
  epoch.synchronize();
  costs.latency = hop_seconds(cost, epoch);
  // Timed apart, W can come out above the B it is part of: fit the costs rather than fail the simulation.
  const FittedCosts fitted = fit_measured_costs(costs);
  costs = fitted.costs;
  const Trace trace = make_trace<Schedule>(P, C);
  const Timeline sim = simulate(trace, costs, CommModel::async);
  const double simulated = sim.bubble_ratio();
  CudaDeviceOptions dopt;
  dopt.gpu_timeline = true;
  dopt.timeline_epoch = &epoch;
  Team<Schedule> team(P, C, cost, {}, dopt);
  double measured = 0, in_step = 0, makespan = 0;
  Costs step_costs;
  Timeline last;
  ProfileReport p;
  for (auto _ : state) {
    state.SetIterationTime(team.step());
    last = merge_timelines(std::string(Schedule::name), C, Mode::train, team.results);
    measured = last.bubble_ratio();
    makespan = last.makespan();
    // The same comparison with the op times of this very step (ranks sharing the GPU slow each other a
    // little; a span no longer counts the wait for its data, see CudaDeviceOptions::gpu_timeline).
    p = profile_step(last, trace, CommModel::async, costs.latency);
    in_step = p.simulated_bubble;
    step_costs = p.costs;
  }
  write_timelines(std::string(Schedule::name), last, p.simulated);
  auto rel = [](double m, double s) { return s > 0 ? std::abs(m - s) / s : 0.0; };
  state.counters["measured"] = measured;
  state.counters["simulated"] = simulated;
  state.counters["rel_diff"] = rel(measured, simulated);
  state.counters["pp_diff"] = 100 * std::abs(measured - simulated);  // percentage points
  state.counters["makespan_ratio"] = sim.makespan() > 0 ? makespan / sim.makespan() : 0.0;
  state.counters["simulated_in_step"] = in_step;
  state.counters["rel_diff_in_step"] = rel(measured, in_step);
  state.counters["step_F_us"] = step_costs.forward * 1e6;
  state.counters["step_B_us"] = step_costs.backward * 1e6;
  state.counters["step_W_us"] = step_costs.weight * 1e6;
  state.counters["step_FB_us"] = step_costs.forward_backward * 1e6;
  state.counters["F_us"] = costs.forward * 1e6;
  state.counters["B_us"] = costs.backward * 1e6;
  state.counters["W_us"] = costs.weight * 1e6;
  state.counters["FB_us"] = costs.forward_backward * 1e6;
  state.counters["hop_us"] = costs.latency * 1e6;  // the simulator's transfer latency
  state.counters["copy_us"] = copy_seconds * 1e6;  // the message's copy alone, for comparison
  // Measured costs the simulator could not take as they were (fit_measured_costs), named in the label.
  std::vector<CostAdjustment> fits = fitted.adjustments;
  fits.insert(fits.end(), p.adjustments.begin(), p.adjustments.end());
  state.counters["costs_fitted"] = static_cast<double>(fits.size());
  std::string label;
  for (const CostAdjustment& a : fits) label += (label.empty() ? "fitted " : "; ") + to_string(a);
  if (!label.empty()) state.SetLabel(label);
}

void register_all() {
  using benchmark::RegisterBenchmark;
  RegisterBenchmark("FB/comm_heavy/two_stream", [](benchmark::State& s) {
    fb_bench(s, comm_heavy(), true);
  })->UseManualTime();
  RegisterBenchmark("FB/comm_heavy/f_then_b", [](benchmark::State& s) {
    fb_bench(s, comm_heavy(), false);
  })->UseManualTime();
  RegisterBenchmark("FB/compute_heavy/two_stream", [](benchmark::State& s) {
    fb_bench(s, compute_heavy(), true);
  })->UseManualTime();
  RegisterBenchmark("FB/compute_heavy/f_then_b", [](benchmark::State& s) {
    fb_bench(s, compute_heavy(), false);
  })->UseManualTime();
  RegisterBenchmark("Step/dualpipe/with_transfers", [](benchmark::State& s) { step_bench(s, true); })->UseManualTime();
  RegisterBenchmark("Step/dualpipe/without_transfers", [](benchmark::State& s) {
    step_bench(s, false);
  })->UseManualTime();
  RegisterBenchmark("HostOverhead/eager", [](benchmark::State& s) {
    host_overhead_bench(s, false, 0);
  })->UseManualTime();
  RegisterBenchmark("HostOverhead/graph", [](benchmark::State& s) {
    host_overhead_bench(s, true, 0);
  })->UseManualTime();
  RegisterBenchmark("HostAhead/op_us:50", [](benchmark::State& s) {
    host_overhead_bench(s, false, 50'000);
  })->UseManualTime();
  RegisterBenchmark("Bubble/dualpipe", [](benchmark::State& s) { bubble_bench<DualPipe>(s); })->UseManualTime();
  RegisterBenchmark("Bubble/dualpipev", [](benchmark::State& s) { bubble_bench<DualPipeV>(s); })->UseManualTime();
}

}  // namespace

int main(int argc, char** argv) {
  // Four ranks of three streams each share the GPU here: with CUDA's default of 8 hardware queues, streams
  // that share a queue would wait for each other's work. Before the first CUDA call; a value set by the user
  // wins.
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
  if (!cuda_device_available()) {
    std::fprintf(stderr, "no CUDA device (%s)\n", cuda_unavailable_reason().c_str());
    return 77;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
