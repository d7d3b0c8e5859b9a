// Schedule generation: every rank's op list of one step, the way a runtime or a tool asks for it.
// Target (issue 2): all ranks of DualPipe P=64 C=1024 in under 2 ms on the 2-core CI machine.
#include <benchmark/benchmark.h>

#include <cstddef>

#include "dualpipe/dualpipe.hpp"

namespace {

template <class Schedule>
void generate_all_ranks(benchmark::State& state) {
  const int ranks = static_cast<int>(state.range(0));
  const int chunks = static_cast<int>(state.range(1));
  std::size_t ops = 0;
  for (auto _ : state) {
    ops = 0;
    for (int r = 0; r < ranks; ++r) {
      auto list = Schedule::ops(ranks, chunks, r, dualpipe::Mode::train);
      ops += list.size();
      benchmark::DoNotOptimize(list.data());
    }
  }
  state.counters["ops"] = static_cast<double>(ops);
  state.counters["ops_per_second"] =
      benchmark::Counter(static_cast<double>(ops), benchmark::Counter::kIsIterationInvariantRate);
  // Seconds per op (Google Benchmark prints it with an SI prefix: "2.8n" is 2.8 ns).
  state.counters["time_per_op"] = benchmark::Counter(
      static_cast<double>(ops), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

}  // namespace

BENCHMARK(generate_all_ranks<dualpipe::DualPipe>)
    ->Name("Generate/dualpipe")
    ->ArgNames({"ranks", "chunks"})
    ->Args({8, 20})
    ->Args({64, 1024})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(generate_all_ranks<dualpipe::DualPipeV>)
    ->Name("Generate/dualpipev")
    ->ArgNames({"ranks", "chunks"})
    ->Args({4, 10})
    ->Args({32, 1024})
    ->Unit(benchmark::kMicrosecond);
