// Runtime overheads, per op issued (compute, post and commit tokens of the trace grammar, all ranks):
//   Executor/<schedule>/ranks:8/chunks:20         the executor alone: no-op stages, the null communicator
//                                                 (every post done at once), each rank's step in turn on
//                                                 one thread; timeline recording off (":timeline" on)
//   Pipeline/inproc/dualpipe/ranks:8/chunks:20    real threads and the in-process communicator (64-byte
//                                                 messages), timeline recording on
//   .../sizes:<kind>                              the cost of chunk sizes (docs/activations.md), same batch of
//                                                 chunks of 1 to 4 rows of 2 tensors (64 + 8 bytes a row):
//                                                   spans     a plain stage, every chunk padded to 4 rows
//                                                   maxima    a StageWithTensors without a table: 4 rows
//                                                             (the size exchange, fixed sizes)
//                                                   variable  a StageWithTensors with the table: each chunk
//                                                             its own rows (the exchange and per-op sizes)
// Counter ns_per_op = step time (all ranks) / ops issued by all ranks.
#include <benchmark/benchmark.h>

#include <array>
#include <chrono>
#include <memory>
#include <span>
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

// The sizes benchmarks' stages: 2 tensors (64 and 8 bytes a row), at most 4 rows.
constexpr std::size_t max_rows = 4;
constexpr std::array<TensorSpec, 2> noop_specs{{{64, max_rows, true}, {8, max_rows, false}}};

struct PaddedStage : NoopStage {  // spans at the maxima
  [[nodiscard]] std::size_t input_bytes() const noexcept { return max_rows * 72; }
  [[nodiscard]] std::size_t output_bytes() const noexcept { return max_rows * 72; }
};

struct TensorNoopStage {
  void forward(const StageContext&, const ConstBytesList&, const MutableBytesList&) noexcept {}
  double loss(const StageContext&, const ConstBytesList&, ConstBytes) noexcept { return 0; }
  void backward_input(const StageContext&, const ConstBytesList&, const MutableBytesList&) noexcept {}
  void backward_weight(const StageContext&) noexcept {}
  [[nodiscard]] std::span<const TensorSpec> input_tensors() const noexcept { return noop_specs; }
  [[nodiscard]] std::span<const TensorSpec> output_tensors() const noexcept { return noop_specs; }
};

enum class SizeKind { spans, maxima, variable };

// The batch of the sizes benchmarks: chunk b has 1 + (b * 7) % 4 rows of both tensors.
struct SizedBatch {
  std::vector<std::size_t> table;
  std::vector<std::byte> inputs, labels;
  explicit SizedBatch(SizeKind kind) {
    for (int b = 0; b < chunks; ++b) {
      const std::size_t rows = kind == SizeKind::variable ? 1 + static_cast<std::size_t>(b * 7) % max_rows : max_rows;
      table.insert(table.end(), {rows, rows});
      inputs.resize(inputs.size() + rows * 72);
      labels.resize(labels.size() + rows * 8);
    }
  }
  [[nodiscard]] StepOptions options(SizeKind kind) const {
    StepOptions o;
    if (kind == SizeKind::variable) o.sizes = ChunkSizes{table, 2};
    return o;
  }
};

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

template <class StageT>
void sizes_executor_bench(benchmark::State& state, SizeKind kind) {
  std::vector<NullCommunicator> comms;
  for (int r = 0; r < ranks; ++r) comms.emplace_back(r, ranks);
  std::vector<StageT> stages(2 * ranks);
  PipelineOptions options;
  options.record_timeline = false;
  using Pipe = Pipeline<DualPipe, NullCommunicator, StageT>;
  std::vector<std::unique_ptr<Pipe>> pipes;
  for (int r = 0; r < ranks; ++r)
    pipes.push_back(std::make_unique<Pipe>(
        comms[static_cast<std::size_t>(r)],
        std::array{&stages[static_cast<std::size_t>(2 * r)], &stages[static_cast<std::size_t>(2 * r + 1)]}, options));
  const SizedBatch batch(kind);
  const StepOptions o = batch.options(kind);
  std::vector<StepResult> results(ranks);
  auto step = [&] {
    for (int r = 0; r < ranks; ++r)
      pipes[static_cast<std::size_t>(r)]->step_into(results[static_cast<std::size_t>(r)], chunks, batch.inputs,
                                                    batch.labels, o);
  };
  step();
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) step();
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  const auto ops = total_ops<DualPipe>();
  state.counters["ns_per_op"] = ns / (static_cast<double>(state.iterations()) * static_cast<double>(ops));
  state.counters["us_per_step"] = ns / static_cast<double>(state.iterations()) / 1e3;
}

template <class StageT>
void sizes_inproc_bench(benchmark::State& state, SizeKind kind) {
  InProcessWorld world(ranks);
  std::vector<StageT> stages(2 * ranks);
  const SizedBatch batch(kind);
  const StepOptions o = batch.options(kind);
  benchutil::RankTeam team(ranks, [&](int r) -> benchutil::RankTeam::StepFn {
    auto pipe = std::make_shared<Pipeline<DualPipe, InProcessCommunicator, StageT>>(
        world.communicator(r),
        std::array{&stages[static_cast<std::size_t>(2 * r)], &stages[static_cast<std::size_t>(2 * r + 1)]});
    auto result = std::make_shared<StepResult>();
    return [pipe, result, &batch, o] { pipe->step_into(*result, chunks, batch.inputs, batch.labels, o); };
  });
  team.step();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) team.step();
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  if (team.failures() > 0) state.SkipWithError("a step failed");
  const auto ops = total_ops<DualPipe>();
  state.counters["ns_per_op"] = ns / (static_cast<double>(state.iterations()) * static_cast<double>(ops));
  state.counters["us_per_step"] = ns / static_cast<double>(state.iterations()) / 1e3;
}

void sizes_executor_spans(benchmark::State& s) { sizes_executor_bench<PaddedStage>(s, SizeKind::spans); }
void sizes_executor_maxima(benchmark::State& s) { sizes_executor_bench<TensorNoopStage>(s, SizeKind::maxima); }
void sizes_executor_variable(benchmark::State& s) { sizes_executor_bench<TensorNoopStage>(s, SizeKind::variable); }
void sizes_inproc_spans(benchmark::State& s) { sizes_inproc_bench<PaddedStage>(s, SizeKind::spans); }
void sizes_inproc_maxima(benchmark::State& s) { sizes_inproc_bench<TensorNoopStage>(s, SizeKind::maxima); }
void sizes_inproc_variable(benchmark::State& s) { sizes_inproc_bench<TensorNoopStage>(s, SizeKind::variable); }

void executor_dualpipe(benchmark::State& s) { executor_bench<DualPipe>(s, false); }
void executor_dualpipev(benchmark::State& s) { executor_bench<DualPipeV>(s, false); }
void executor_dualpipe_timeline(benchmark::State& s) { executor_bench<DualPipe>(s, true); }

}  // namespace

BENCHMARK(executor_dualpipe)->Name("Executor/dualpipe/ranks:8/chunks:20");
BENCHMARK(executor_dualpipev)->Name("Executor/dualpipev/ranks:8/chunks:20");
BENCHMARK(executor_dualpipe_timeline)->Name("Executor/dualpipe/ranks:8/chunks:20/timeline");
BENCHMARK(inproc_bench)->Name("Pipeline/inproc/dualpipe/ranks:8/chunks:20")->UseRealTime();
BENCHMARK(sizes_executor_spans)->Name("Executor/dualpipe/ranks:8/chunks:20/sizes:spans");
BENCHMARK(sizes_executor_maxima)->Name("Executor/dualpipe/ranks:8/chunks:20/sizes:maxima");
BENCHMARK(sizes_executor_variable)->Name("Executor/dualpipe/ranks:8/chunks:20/sizes:variable");
BENCHMARK(sizes_inproc_spans)->Name("Pipeline/inproc/dualpipe/ranks:8/chunks:20/sizes:spans")->UseRealTime();
BENCHMARK(sizes_inproc_maxima)->Name("Pipeline/inproc/dualpipe/ranks:8/chunks:20/sizes:maxima")->UseRealTime();
BENCHMARK(sizes_inproc_variable)->Name("Pipeline/inproc/dualpipe/ranks:8/chunks:20/sizes:variable")->UseRealTime();
