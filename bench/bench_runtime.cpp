// Runtime overheads, per op issued (compute, post and commit tokens of the trace grammar, all ranks):
//   Executor/<schedule>/ranks:8/chunks:20         the executor alone: no-op stages, the null communicator
//                                                 (every post done at once), each rank's step in turn on
//                                                 one thread; timeline recording off (":timeline" on)
//   Pipeline/inproc/dualpipe/ranks:8/chunks:20    real threads and the in-process communicator (64-byte
//                                                 messages), timeline recording on
// Counter ns_per_op = step time (all ranks) / ops issued by all ranks.
#include <benchmark/benchmark.h>

#include <array>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/rank_team.hpp"
#include "dualpipe/dualpipe.hpp"

namespace {

using namespace dualpipe;

struct NoopStage {
  void forward(const StageContext&, ConstBytes, MutableBytes) noexcept {}
  double loss(const StageContext&, ConstBytes, ConstBytes) noexcept { return 0; }
  void backward_input(const StageContext&, ConstBytes, MutableBytes) noexcept {}
  void backward_weight(const StageContext&) noexcept {}
  [[nodiscard]] std::size_t input_bytes() const noexcept { return 64; }
  [[nodiscard]] std::size_t output_bytes() const noexcept { return 64; }
};

constexpr int ranks = 8;
constexpr int chunks = 20;

template <class Schedule>
std::size_t total_ops() {
  std::size_t n = 0;
  for (int r = 0; r < ranks; ++r) n += Schedule::ops(ranks, chunks, r, Mode::train).size();
  return n;
}

template <class Schedule>
void executor_bench(benchmark::State& state, bool record) {
  std::vector<NullCommunicator> comms;
  for (int r = 0; r < ranks; ++r) comms.emplace_back(r, ranks);
  std::vector<NoopStage> stages(2 * ranks);
  PipelineOptions options;
  options.record_timeline = record;
  using Pipe = Pipeline<Schedule, NullCommunicator, NoopStage>;
  std::vector<std::unique_ptr<Pipe>> pipes;
  for (int r = 0; r < ranks; ++r)
    pipes.push_back(std::make_unique<Pipe>(
        comms[static_cast<std::size_t>(r)],
        std::array{&stages[static_cast<std::size_t>(2 * r)], &stages[static_cast<std::size_t>(2 * r + 1)]}, options));
  std::vector<std::byte> in(chunks * 64), labels(chunks * 8);
  std::vector<StepResult> results(ranks);
  for (int r = 0; r < ranks; ++r)  // the first step builds plans and buffers
    pipes[static_cast<std::size_t>(r)]->step_into(results[static_cast<std::size_t>(r)], chunks, in, labels);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state)
    for (int r = 0; r < ranks; ++r)
      pipes[static_cast<std::size_t>(r)]->step_into(results[static_cast<std::size_t>(r)], chunks, in, labels);
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  const auto ops = total_ops<Schedule>();
  state.counters["ns_per_op"] = ns / (static_cast<double>(state.iterations()) * static_cast<double>(ops));
  state.counters["ops_per_step"] = static_cast<double>(ops);
}

void inproc_bench(benchmark::State& state) {
  InProcessWorld world(ranks);
  std::vector<NoopStage> stages(2 * ranks);
  std::vector<std::byte> in(chunks * 64), labels(chunks * 8);
  benchutil::RankTeam team(ranks, [&](int r) -> benchutil::RankTeam::StepFn {
    auto pipe = std::make_shared<Pipeline<DualPipe, InProcessCommunicator, NoopStage>>(
        world.communicator(r),
        std::array{&stages[static_cast<std::size_t>(2 * r)], &stages[static_cast<std::size_t>(2 * r + 1)]});
    auto result = std::make_shared<StepResult>();
    return [pipe, result, &in, &labels] { pipe->step_into(*result, chunks, in, labels); };
  });
  team.step();  // plans and buffers
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) team.step();
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  if (team.failures() > 0) state.SkipWithError("a step failed");
  const auto ops = total_ops<DualPipe>();
  state.counters["ns_per_op"] = ns / (static_cast<double>(state.iterations()) * static_cast<double>(ops));
  state.counters["ops_per_step"] = static_cast<double>(ops);
}

void executor_dualpipe(benchmark::State& s) { executor_bench<DualPipe>(s, false); }
void executor_dualpipev(benchmark::State& s) { executor_bench<DualPipeV>(s, false); }
void executor_dualpipe_timeline(benchmark::State& s) { executor_bench<DualPipe>(s, true); }

}  // namespace

BENCHMARK(executor_dualpipe)->Name("Executor/dualpipe/ranks:8/chunks:20");
BENCHMARK(executor_dualpipev)->Name("Executor/dualpipev/ranks:8/chunks:20");
BENCHMARK(executor_dualpipe_timeline)->Name("Executor/dualpipe/ranks:8/chunks:20/timeline");
BENCHMARK(inproc_bench)->Name("Pipeline/inproc/dualpipe/ranks:8/chunks:20")->UseRealTime();
