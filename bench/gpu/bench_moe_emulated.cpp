// dualpipe-bench-moe-gpu-emulated: the GPU path of an MoE stage's FB op on the CUDA emulator. A PP=2 x EP=2
// world of 4 emulated GPUs runs DualPipe with the device MoE-like stage (tests/emulated/device_moe_stage.hpp:
// per layer dense, dispatch, expert, combine, residual), the exchanges on NcclExpertComm under the ordering
// rule (--ordering-rule off: without it, to see its cost), every compute phase given --compute-us on the
// device (one compute kernel at a time per GPU) and every expert all-to-all --a2a-us on its link
// (cuda_emulator::nccl_kernel_time). From CUDA events (the GPU
// timeline: CudaDevice's op spans, the stage's compute phases, NcclExpertComm's exchanges) it reports, for
// the FB ops, overlap on against off:
//   fb_ms            mean FB op time on the GPU
//   compute_ms       mean compute of an FB's phases alone (both chunks; the time each held the GPU)
//   fb/compute       the FB's time against its compute alone (1.0: every all-to-all hidden)
//   a2a_hidden       the fraction of the FB's all-to-all time during which the other chunk computed
//   fb_speedup       fb_ms with overlap off / with overlap on
// and writes one rank's step as a Chrome trace (--trace PATH: chrome://tracing or ui.perfetto.dev), where the
// expert stream's all-to-alls run beside the two compute streams. The emulator sleeps for the costs: the
// figures show the schedule of the work on the streams, not a GPU's speed.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_emulator.hpp"
#include "device_moe_stage.hpp"
#include "dualpipe/nccl.hpp"

using namespace dualpipe;
using namespace moetest;

namespace {

struct Options {
  long compute_us = 2000;
  long a2a_us = 2000;
  int chunks = 8;
  int layers = 2;
  int steps = 3;
  bool rule = true;  // NcclExpertOptions::pipeline (the ordering rule)
  std::string trace;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "%s\nusage: dualpipe-bench-moe-gpu-emulated [--compute-us U] [--a2a-us A] [--chunks C] [--layers L] "
               "[--steps S] [--ordering-rule on|off] [--trace PATH]\n",
               why.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help") usage("the GPU path of an MoE FB op on the CUDA emulator");
    if (i + 1 >= argc) usage("missing value after " + a);
    const std::string v = argv[++i];
    char* end = nullptr;
    const long n = std::strtol(v.c_str(), &end, 10);
    const bool number = end && *end == '\0';
    if (a == "--trace") o.trace = v;
    else if (a == "--ordering-rule" && (v == "on" || v == "off")) o.rule = v == "on";
    else if (!number) usage(a + " needs an integer, got '" + v + "'");
    else if (a == "--compute-us" && n >= 0) o.compute_us = n;
    else if (a == "--a2a-us" && n >= 0) o.a2a_us = n;
    else if (a == "--chunks" && n >= 4 && n % 2 == 0) o.chunks = static_cast<int>(n);
    else if (a == "--layers" && n >= 1) o.layers = static_cast<int>(n);
    else if (a == "--steps" && n >= 1) o.steps = static_cast<int>(n);
    else usage("bad option or value: " + a + " " + v + " (chunks: even, at least 4; steps, layers: at least 1)");
  }
  return o;
}

struct Interval {
  double start, end;  // ms after the rank's epoch
};

// One FB op's GPU picture on one rank.
struct FbPicture {
  double fb = 0;
  double compute = 0;  // both chunks' compute phases
  double a2a = 0;      // its exchanges' total time
  double hidden = 0;   // of which the other chunk computed
};

double overlap(const Interval& a, const std::vector<Interval>& others) {
  double t = 0;
  for (const Interval& b : others) t += std::max(0.0, std::min(a.end, b.end) - std::max(a.start, b.start));
  return t;
}

struct TraceEvent {
  std::string name, lane;
  double start, end;
};

struct RunResult {
  std::vector<FbPicture> fbs;
  std::vector<TraceEvent> trace;  // rank 0's last step
};

RunResult run(const Options& o, bool overlap_phases) {
  constexpr int P = 2, E = 2, W = P * E;
  const ProcessGrid pgrid(W, {.pp = P, .ep = E}, "ep,pp");
  const ncclUniqueId world_id = make_unique_id();
  std::vector<RunResult> per(W);
  std::vector<std::string> errors(W);
  run_ranks(W, [&](int g) {
    try {
      DUALPIPE_CUDA_CHECK(cudaSetDevice(g));
      ncclComm_t raw = nullptr;
      DUALPIPE_NCCL_CHECK(ncclCommInitRank(&raw, W, world_id, g));
      NcclComm world(raw);
      NcclGrid grid(pgrid, world.get());
      const int p = pgrid.coord(g, GridDim::pp), e = pgrid.coord(g, GridDim::ep);
      cuda_emulator::nccl_kernel_time(grid.communicator(GridDim::ep), o.a2a_us);
      NcclCommunicator pipe_comm(NcclBorrow{grid.communicator(GridDim::pp), nullptr});
      NcclExpertOptions eo;
      if (o.rule) eo.pipeline = &pipe_comm;
      eo.timing = true;
      NcclExpertComm ep(NcclBorrow{grid.communicator(GridDim::ep)}, eo);
      DeviceMoeOptions so;
      so.compute_us = o.compute_us;
      so.timing = true;
      std::array<std::unique_ptr<DeviceMoeStage>, 2> stages;
      for (int m = 0; m < 2; ++m) {
        const ModulePlacement pl = DualPipe::placement(P, o.chunks, p, m);
        stages[static_cast<std::size_t>(m)] =
            std::make_unique<DeviceMoeStage>(pl.stage, e, E, o.layers, pl.num_chunks, ep, so);
      }
      std::vector<double> in, lab;
      for (int c = 0; c < o.chunks; ++c)
        for (int k = 0; k < kTokens; ++k) {
          in.push_back(input_value(e, c, k));
          lab.push_back(label_value(e, c, k));
        }
      DeviceBuffer<SyncAllocator> d_in(in.size() * sizeof(double), StreamRef()),
          d_lab(lab.size() * sizeof(double), StreamRef());
      DUALPIPE_CUDA_CHECK(cudaMemcpy(d_in.data(), in.data(), d_in.size(), cudaMemcpyHostToDevice));
      DUALPIPE_CUDA_CHECK(cudaMemcpy(d_lab.data(), lab.data(), d_lab.size(), cudaMemcpyHostToDevice));
      Event epoch(Event::timing);
      Stream s0;
      epoch.record(s0);
      s0.synchronize();
      PipelineOptions po;
      po.overlap_phases = overlap_phases;
      po.record_timeline = true;
      CudaDeviceOptions dopt;
      dopt.device = g;
      dopt.gpu_timeline = true;
      dopt.timeline_epoch = &epoch;
      Pipeline<DualPipe, NcclCommunicator, DeviceMoeStage, CudaDevice> pipe(
          pipe_comm, {stages[0].get(), stages[1].get()}, po, CudaDevice(dopt));
      RunResult& me = per[static_cast<std::size_t>(g)];
      for (int step = 0; step < o.steps; ++step) {
        const StepResult r = pipe.step(o.chunks, ConstBytes(static_cast<const std::byte*>(d_in.data()), d_in.size()),
                                       ConstBytes(static_cast<const std::byte*>(d_lab.data()), d_lab.size()));
        DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
        const auto a2a = ep.take_times(epoch);
        std::array<std::vector<DeviceMoeStage::PhaseTime>, 2> phases{stages[0]->take_times(epoch),
                                                                     stages[1]->take_times(epoch)};
        if (step == 0) continue;  // warm-up
        const double base = r.clock_start * 1e3;
        const bool traced = g == 0 && step == o.steps - 1;
        if (traced) me.trace.clear();
        for (const Span& s : r.spans) {
          const double start = base + s.start * 1e3, end = base + s.end * 1e3;
          if (traced) me.trace.push_back({to_token(s.op), "ops (CudaDevice timeline)", start, end});
          if (s.op.kind != OpKind::forward_backward) continue;
          FbPicture fb;
          fb.fb = end - start;
          // Which phases are this FB's: its forward chunk's (module, chunk, forward) and backward chunk's.
          const std::array<std::tuple<int, int, bool>, 2> halves{std::tuple{int(s.op.module), int(s.op.chunk), false},
                                                                 std::tuple{int(s.op.module1), int(s.op.chunk1), true}};
          std::array<std::vector<Interval>, 2> compute;
          for (std::size_t h = 0; h < 2; ++h) {
            const auto [m, c, back] = halves[h];
            for (const auto& t : phases[static_cast<std::size_t>(m)])
              if (t.chunk == c && t.backward == back) {
                compute[h].push_back({t.start, t.end});
                fb.compute += t.busy;
              }
          }
          for (const NcclExchangeTime& x : a2a)
            for (std::size_t h = 0; h < 2; ++h) {
              const auto [m, c, back] = halves[h];
              if (x.tag.module != m || x.tag.chunk != c || x.tag.backward != back) continue;
              fb.a2a += x.end - x.start;
              fb.hidden += overlap({x.start, x.end}, compute[1 - h]);
            }
          me.fbs.push_back(fb);
        }
        if (traced) {
          for (std::size_t m = 0; m < 2; ++m)
            for (const auto& t : phases[m])
              me.trace.push_back({std::string(t.name) + " " + std::to_string(m) + "." + std::to_string(t.chunk) +
                                      (t.backward ? " B" : " F"),
                                  t.stream == pipe.device().main_stream().get() ? "main stream" : "second stream",
                                  t.start, t.end});
          for (const NcclExchangeTime& x : a2a)
            me.trace.push_back({"all-to-all " + describe(x.tag), "expert stream (NcclExpertComm)", x.start, x.end});
        }
      }
    } catch (const std::exception& ex) {
      errors[static_cast<std::size_t>(g)] = ex.what();
    }
  });
  RunResult all;
  for (int g = 0; g < W; ++g) {
    if (!errors[static_cast<std::size_t>(g)].empty()) {
      std::fprintf(stderr, "rank %d: error: %s\n", g, errors[static_cast<std::size_t>(g)].c_str());
      std::exit(1);
    }
    auto& f = per[static_cast<std::size_t>(g)].fbs;
    all.fbs.insert(all.fbs.end(), f.begin(), f.end());
  }
  all.trace = per[0].trace;
  return all;
}

struct FbSummary {
  double fb = 0, compute = 0, hidden = 0;
  std::size_t n = 0;
};

FbSummary summarize(const RunResult& r) {
  FbSummary s;
  double a2a = 0, hidden = 0;
  for (const FbPicture& f : r.fbs) {
    s.fb += f.fb;
    s.compute += f.compute;
    a2a += f.a2a;
    hidden += f.hidden;
  }
  s.n = r.fbs.size();
  if (s.n > 0) {
    s.fb /= static_cast<double>(s.n);
    s.compute /= static_cast<double>(s.n);
  }
  s.hidden = a2a > 0 ? hidden / a2a : 0;
  return s;
}

void write_trace(const std::string& path, const std::vector<TraceEvent>& events) {
  std::ofstream f(path);
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
  const std::map<std::string, int> tid{{"ops (CudaDevice timeline)", 0},
                                       {"main stream", 1},
                                       {"second stream", 2},
                                       {"expert stream (NcclExpertComm)", 3}};
  f << "{\"traceEvents\":[\n";
  bool first = true;
  for (const auto& [lane, id] : tid) {
    f << (first ? "" : ",\n") << R"({"ph":"M","name":"thread_name","pid":0,"tid":)" << id << R"(,"args":{"name":")"
      << lane << "\"}}";
    first = false;
  }
  for (const TraceEvent& e : events)
    f << ",\n"
      << R"({"ph":"X","pid":0,"tid":)" << tid.at(e.lane) << R"(,"name":")" << e.name << R"(","ts":)" << e.start * 1e3
      << R"(,"dur":)" << (e.end - e.start) * 1e3 << "}";
  f << "\n]}\n";
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const RunResult on = run(o, true);
  const RunResult off = run(o, false);
  const FbSummary a = summarize(on), b = summarize(off);
  std::printf(
      "PP=2 x EP=2 DualPipe, %d chunks, %d layers, compute phase %ld us, all-to-all %ld us, %d steps "
      "(first one not counted), ordering rule %s, emulated GPUs\n",
      o.chunks, o.layers, o.compute_us, o.a2a_us, o.steps, o.rule ? "on" : "off");
  std::printf("| overlap | FB ops | fb_ms | compute_ms | fb/compute | a2a_hidden |\n|---|---|---|---|---|---|\n");
  for (const auto& [name, s] : {std::pair{"on", a}, std::pair{"off", b}})
    std::printf("| %s | %zu | %.3f | %.3f | %.3f | %.3f |\n", name, s.n, s.fb, s.compute,
                s.compute > 0 ? s.fb / s.compute : 0.0, s.hidden);
  std::printf("fb_speedup=%.3f (fb_ms off / on)\n", a.fb > 0 ? b.fb / a.fb : 0.0);
  if (!o.trace.empty()) {
    write_trace(o.trace, on.trace);
    std::printf("trace: %s (rank 0, the last step, overlap on)\n", o.trace.c_str());
  }
  return 0;
}
