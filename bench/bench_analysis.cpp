// Validator and simulator throughput on large schedules: ops_per_second counts every op of every rank
// (compute, posts and commits) processed per second of wall time.
#include <benchmark/benchmark.h>

#include <cstddef>

#include "dualpipe/analysis/simulator.hpp"
#include "dualpipe/analysis/validator.hpp"
#include "dualpipe/schedule/registry.hpp"

namespace {

using namespace dualpipe;

double total_ops(const Trace& t) {
  std::size_t n = 0;
  for (const auto& ops : t.ops) n += ops.size();
  return static_cast<double>(n);
}

void set_counters(benchmark::State& state, const Trace& t) {
  state.counters["ops"] = total_ops(t);
  state.counters["ops_per_second"] =
      benchmark::Counter(total_ops(t) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_Validate(benchmark::State& state, ScheduleKind kind) {
  const Trace t = make_trace(kind, static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  for (auto _ : state) {
    ValidationResult r = validate(t, kind);
    if (!r.ok) state.SkipWithError(r.message.c_str());
    benchmark::DoNotOptimize(r);
  }
  set_counters(state, t);
}

void BM_Simulate(benchmark::State& state, ScheduleKind kind, CommModel model) {
  const Trace t = make_trace(kind, static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  Costs costs;
  costs.latency = 0.1;
  for (auto _ : state) {
    Timeline tl = simulate(t, kind, costs, model);
    benchmark::DoNotOptimize(tl);
  }
  set_counters(state, t);
}

}  // namespace

BENCHMARK_CAPTURE(BM_Validate, dualpipe, dualpipe::ScheduleKind::dualpipe)
    ->Name("Validate/dualpipe")
    ->Args({64, 1024})
    ->ArgNames({"ranks", "chunks"})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Validate, dualpipev, dualpipe::ScheduleKind::dualpipev)
    ->Name("Validate/dualpipev")
    ->Args({32, 1024})
    ->ArgNames({"ranks", "chunks"})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Simulate, dualpipe_rendezvous, dualpipe::ScheduleKind::dualpipe, dualpipe::CommModel::rendezvous)
    ->Name("Simulate/dualpipe/rendezvous")
    ->Args({64, 1024})
    ->ArgNames({"ranks", "chunks"})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Simulate, dualpipe_async, dualpipe::ScheduleKind::dualpipe, dualpipe::CommModel::async)
    ->Name("Simulate/dualpipe/async")
    ->Args({64, 1024})
    ->ArgNames({"ranks", "chunks"})
    ->Unit(benchmark::kMillisecond);
