// dualpipe-bench-mpi: the runtime's per-op overhead with one rank per MPI process, next to the in-process
// communicator (threads of one process) on the same number of ranks, in one Google Benchmark program.
//
//   mpirun -np 4 <build>/bin/dualpipe-bench-mpi          (only rank 0 reports)
//
//   Pipeline/mpi/<schedule>/ranks:P/chunks:16      P processes, MpiCommunicator, no-op stages, 64-byte
//                                                  messages over the MPI transport (shared memory on one
//                                                  host, TCP or a fabric across hosts)
//   Pipeline/inproc/<schedule>/ranks:P/chunks:16   P threads of rank 0's process, InProcessCommunicator, the
//                                                  same stages and messages (the other processes sleep)
// Counter ns_per_op = step time / ops issued by all ranks in a step (compute, post and commit tokens), the
// step time being the slowest rank's. Every rank runs the same fixed number of steps (Google Benchmark's
// adaptive iteration count would differ between processes): --steps N (default 500). The MPI wait's polling
// (MpiOptions): --spin-us N (default 200), --sleep-us N (default 50). Google Benchmark's flags after those.
#include <benchmark/benchmark.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/rank_team.hpp"
#include "dualpipe/dualpipe.hpp"
#include "dualpipe/mpi.hpp"

namespace {

using namespace dualpipe;

constexpr int chunks = 16;
constexpr std::size_t message_bytes = 64;

struct NoopStage {
  void forward(const StageContext&, ConstBytes, MutableBytes) noexcept {}
  double loss(const StageContext&, ConstBytes, ConstBytes) noexcept { return 0; }
  void backward_input(const StageContext&, ConstBytes, MutableBytes) noexcept {}
  void backward_weight(const StageContext&) noexcept {}
  [[nodiscard]] std::size_t input_bytes() const noexcept { return message_bytes; }
  [[nodiscard]] std::size_t output_bytes() const noexcept { return message_bytes; }
};

MpiCommunicator* world = nullptr;  // one rank per process; set in main

/// A barrier that sleeps while it waits, so that idle processes leave the cores to the ones measured.
void idle_barrier() {
  MPI_Request request = MPI_REQUEST_NULL;
  dualpipe::detail::mpi_check(MPI_Ibarrier(world->native(), &request), "MPI_Ibarrier");
  for (int done = 0;;) {
    dualpipe::detail::mpi_check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) return;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
}

template <class Schedule>
std::size_t total_ops(int ranks) {
  std::size_t n = 0;
  for (int r = 0; r < ranks; ++r) n += Schedule::ops(ranks, chunks, r, Mode::train).size();
  return n;
}

void set_counters(benchmark::State& state, double ns, std::size_t ops, std::int64_t steps) {
  state.counters["ns_per_op"] = ns / (static_cast<double>(steps) * static_cast<double>(ops));
  state.counters["ops_per_step"] = static_cast<double>(ops);
  state.counters["us_per_step"] = ns / static_cast<double>(steps) / 1e3;
}

template <class Schedule>
void mpi_bench(benchmark::State& state) {
  constexpr std::size_t M = static_cast<std::size_t>(Schedule::modules_per_rank);
  std::array<NoopStage, M> stages{};
  std::array<NoopStage*, M> ptrs{};
  for (std::size_t m = 0; m < M; ++m) ptrs[m] = &stages[m];
  PipelineOptions options;
  options.timeout = std::chrono::milliseconds(60'000);
  Pipeline<Schedule, MpiCommunicator, NoopStage> pipe(*world, ptrs, options);
  const std::vector<std::byte> in(chunks * message_bytes), labels(chunks * 8);
  StepResult result;
  pipe.step_into(result, chunks, in, labels);  // plans and buffers
  idle_barrier();
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) pipe.step_into(result, chunks, in, labels);
  double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  double slowest = 0;
  MPI_Allreduce(&ns, &slowest, 1, MPI_DOUBLE, MPI_MAX, world->native());
  set_counters(state, slowest, total_ops<Schedule>(world->size()), state.iterations());
}

template <class Schedule>
void inproc_bench(benchmark::State& state) {
  const int ranks = world->size();
  idle_barrier();
  if (world->rank() != 0) {
    // Rank 0 measures alone; the others pass through the loop at once and sleep in the barrier below.
    for (auto _ : state) benchmark::DoNotOptimize(ranks);
    idle_barrier();
    return;
  }
  constexpr std::size_t M = static_cast<std::size_t>(Schedule::modules_per_rank);
  InProcessWorld comms(ranks);
  std::vector<NoopStage> stages(M * static_cast<std::size_t>(ranks));
  const std::vector<std::byte> in(chunks * message_bytes), labels(chunks * 8);
  benchutil::RankTeam team(ranks, [&](int r) -> benchutil::RankTeam::StepFn {
    std::array<NoopStage*, M> ptrs{};
    for (std::size_t m = 0; m < M; ++m) ptrs[m] = &stages[M * static_cast<std::size_t>(r) + m];
    auto pipe = std::make_shared<Pipeline<Schedule, InProcessCommunicator, NoopStage>>(comms.communicator(r), ptrs);
    auto result = std::make_shared<StepResult>();
    return [pipe, result, &in, &labels] { pipe->step_into(*result, chunks, in, labels); };
  });
  team.step();  // plans and buffers
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) team.step();
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  if (team.failures() > 0) state.SkipWithError("a step failed");
  set_counters(state, ns, total_ops<Schedule>(ranks), state.iterations());
  idle_barrier();
}

/// Reports nothing: ranks other than 0 run every benchmark but only rank 0 prints.
class SilentReporter : public benchmark::BenchmarkReporter {
public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

template <class Schedule>
void register_schedule(int ranks, std::int64_t steps) {
  try {
    Schedule::check(ranks, chunks);
  } catch (const ConfigError& e) {
    if (world->rank() == 0)
      std::fprintf(stderr, "dualpipe-bench-mpi: skipping %s: %s\n", Schedule::name.data(), e.what());
    return;
  }
  const std::string suffix =
      std::string(Schedule::name) + "/ranks:" + std::to_string(ranks) + "/chunks:" + std::to_string(chunks);
  benchmark::RegisterBenchmark(("Pipeline/mpi/" + suffix).c_str(), mpi_bench<Schedule>)
      ->Iterations(steps)
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark(("Pipeline/inproc/" + suffix).c_str(), inproc_bench<Schedule>)
      ->Iterations(steps)
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession session(argc, argv);
  std::int64_t steps = 500;
  MpiOptions mpi_options;
  // Our own flags first (taken out of argv), then Google Benchmark's.
  std::vector<char*> args{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--steps" && has_value) {
      steps = std::atoll(argv[++i]);
    } else if (a == "--spin-us" && has_value) {
      mpi_options.spin = std::chrono::microseconds(std::atoll(argv[++i]));
    } else if (a == "--sleep-us" && has_value) {
      mpi_options.sleep = std::chrono::microseconds(std::atoll(argv[++i]));
    } else {
      args.push_back(argv[i]);
    }
  }
  if (steps < 1 || mpi_options.spin.count() < 0 || mpi_options.sleep.count() < 0) {
    std::fprintf(stderr, "dualpipe-bench-mpi: --steps must be at least 1, --spin-us and --sleep-us at least 0\n");
    return 2;
  }
  if (session.world_rank() != 0) {
    // Only rank 0 writes --benchmark_out; the others would write the same file at the same time.
    std::erase_if(args, [](const char* a) { return std::strncmp(a, "--benchmark_out", 15) == 0; });
  }
  int count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&count, args.data());
  MpiCommunicator comm(MPI_COMM_WORLD, mpi_options);
  world = &comm;
  register_schedule<DualPipe>(comm.size(), steps);
  register_schedule<DualPipeV>(comm.size(), steps);
  if (comm.rank() == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    SilentReporter silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  world = nullptr;
  return 0;
}
