// dualpipe-bench-torch: what the library costs around libtorch, on the example's model (examples/torch_mlp)
// with a small hidden size, so that the library's part is not drowned in matrix products.
//
//   Pipeline/torch/<schedule>/ranks:P/chunks:C   one training step on P rank threads (InProcessWorld).
//       Every Stage call is timed (wall and thread CPU time) by a wrapper; the rest of the step is the
//       library's share: its executor, buffers, in-process communication, and the waits for peers.
//       lib_us_per_op        (step wall time - wall time inside stage calls) / ops, mean over ranks. Includes
//                            waiting: pipeline bubbles, and with more rank threads than cores, the scheduler.
//       lib_cpu_us_per_op    the same with each rank thread's CPU time: what the library itself executes.
//       lib_share            (step wall time - wall time inside stage calls) / step wall time, all ranks.
//       torch_ms             wall time inside stage calls per rank (mean); step_ms the step's wall time.
//   Sequential/torch/stages:S/chunks:C           the same model and batch, one thread, plain libtorch.
//   TorchStage/backward/{split,fused}            one chunk's backward through the adapter: B+W (autograd
//                                                walks the graph twice) against the fused one-pass backward.
//   TorchStage/split_over_fused                  the stage (Linear(256,1024) -> GELU ->
//                                                Linear(1024,256), float32, chunks of 3 x 64 rows), built
//                                                from DeferredLinear: input part + weight part against the
//                                                fused backward, each iteration both on the same input.
//       forward_ms, fused_ms, input_ms, weight_ms   per chunk, thread CPU time (means);
//       split_over_fused = (input + weight) / fused in CPU time; split_over_fused_wall the same in wall time.
//   TorchStage/split_over_fused_two_pass         the same with torch::nn::Linear: autograd's two-pass split.
#include <benchmark/benchmark.h>
#include <torch/nn/modules/linear.h>
#include <torch/utils.h>

#include <chrono>
#include <ctime>
#include <memory>
#include <string_view>
#include <vector>

#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/dualpipe.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/runtime/run_ranks.hpp"
#include "dualpipe/torch.hpp"
#include "torch_mlp.hpp"

using namespace dualpipe;

namespace {

constexpr int hidden = 16;

// The BLAS that libtorch calls, in the run's context (console header, JSON): figures taken on the netlib
// reference BLAS are about 30x off. Its own threads set to one: the rank threads are the parallelism.
const bool blas_in_context = [] {
  set_blas_threads(1);
  benchmark::AddCustomContext("blas", describe_blas(loaded_blas()).substr(std::string_view("blas: ").size()));
  return true;
}();

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Time spent inside calls, on the calling thread.
struct CallClock {
  double wall = 0, cpu = 0;
  template <class F>
  decltype(auto) time(F&& f) {
    struct Scope {
      CallClock& c;
      double w0 = wall_seconds(), c0 = thread_cpu_seconds();
      ~Scope() {
        c.wall += wall_seconds() - w0;
        c.cpu += thread_cpu_seconds() - c0;
      }
    } scope{*this};
    return std::forward<F>(f)();
  }
};

/// A TorchStage whose every call is timed; a Stage with the fused backward, as TorchStage is.
class TimedStage {
public:
  TimedStage(TorchStage& s, CallClock& clock) : _s(&s), _clock(&clock) {}
  void forward(const StageContext& c, ConstBytes in, MutableBytes out) {
    _clock->time([&] { _s->forward(c, in, out); });
  }
  double loss(const StageContext& c, ConstBytes out, ConstBytes labels) {
    return _clock->time([&] { return _s->loss(c, out, labels); });
  }
  void backward_input(const StageContext& c, ConstBytes g, MutableBytes ig) {
    _clock->time([&] { _s->backward_input(c, g, ig); });
  }
  void backward_weight(const StageContext& c) {
    _clock->time([&] { _s->backward_weight(c); });
  }
  void backward(const StageContext& c, ConstBytes g, MutableBytes ig) {
    _clock->time([&] { _s->backward(c, g, ig); });
  }
  [[nodiscard]] std::size_t input_bytes() const { return _s->input_bytes(); }
  [[nodiscard]] std::size_t output_bytes() const { return _s->output_bytes(); }

private:
  TorchStage* _s;
  CallClock* _clock;
};
static_assert(StageWithFusedBackward<TimedStage>);

template <class Schedule>
void pipeline_step(benchmark::State& state) {
  torch::set_num_threads(1);
  const int P = static_cast<int>(state.range(0)), C = static_cast<int>(state.range(1));
  const int stages = Schedule::placement(P, C, 0, 0).num_stages;
  torch_mlp::Shape shape;
  shape.hidden = hidden;
  std::vector<torch_mlp::MlpStage> model = torch_mlp::make_model(stages, hidden, 233);
  torch::Tensor x = torch::randn(shape.batch(C), torch::kFloat64), l = torch::randn(shape.batch(C), torch::kFloat64);

  InProcessWorld world(P);
  std::vector<std::unique_ptr<torch_mlp::RankStages<Schedule>>> ranks;
  std::vector<CallClock> clocks(P);
  std::vector<std::vector<TimedStage>> timed(P);
  using Pipe = Pipeline<Schedule, InProcessCommunicator, TimedStage>;
  std::vector<std::unique_ptr<Pipe>> pipes;
  std::vector<double> ops(P);
  for (int r = 0; r < P; ++r) {
    ranks.push_back(std::make_unique<torch_mlp::RankStages<Schedule>>(model, shape, P, C, r));
    std::array<TimedStage*, Schedule::modules_per_rank> ptrs{};
    timed[r].reserve(Schedule::modules_per_rank);
    for (int m = 0; m < Schedule::modules_per_rank; ++m) {
      timed[r].emplace_back(*ranks[r]->stages[m], clocks[r]);
      ptrs[m] = &timed[r][m];
    }
    PipelineOptions options;
    options.record_timeline = false;
    pipes.push_back(std::make_unique<Pipe>(world.communicator(r), ptrs, options));
    ops[r] = static_cast<double>(Schedule::ops(P, C, r, Mode::train).size());
  }

  std::vector<double> step_wall(P), step_cpu(P);
  double sum_step_wall = 0, sum_torch_wall = 0, lib_wall_per_op = 0, lib_cpu = 0, total_ops = 0;
  for (auto _ : state) {
    run_ranks(P, [&](int r) {
      const double w0 = wall_seconds(), c0 = thread_cpu_seconds();
      StepResult res = pipes[r]->step(C, torch_mlp::bytes_of(x), torch_mlp::bytes_of(l));
      step_cpu[r] = thread_cpu_seconds() - c0;
      step_wall[r] = wall_seconds() - w0;
      benchmark::DoNotOptimize(res.losses.data());
    });
    for (int r = 0; r < P; ++r) {
      sum_step_wall += step_wall[r];
      sum_torch_wall += clocks[r].wall;
      lib_wall_per_op += (step_wall[r] - clocks[r].wall) / ops[r];
      lib_cpu += step_cpu[r] - clocks[r].cpu;
      total_ops += ops[r];
      clocks[r] = {};
    }
    for (const auto& rank : ranks)  // gradients grow step after step; keep the numbers tame
      for (auto& m : rank->module_copies) m->zero_grad();
  }
  const double n = static_cast<double>(state.iterations()) * P;
  state.counters["step_ms"] = 1e3 * sum_step_wall / n;
  state.counters["torch_ms"] = 1e3 * sum_torch_wall / n;
  state.counters["lib_us_per_op"] = 1e6 * lib_wall_per_op / n;
  state.counters["lib_share"] = (sum_step_wall - sum_torch_wall) / sum_step_wall;
  state.counters["lib_cpu_us_per_op"] = 1e6 * lib_cpu / total_ops;
  state.counters["ops_per_rank"] = total_ops / n;
}

void sequential_step(benchmark::State& state) {
  torch::set_num_threads(1);
  const int stages = static_cast<int>(state.range(0)), C = static_cast<int>(state.range(1));
  torch_mlp::Shape shape;
  shape.hidden = hidden;
  std::vector<torch_mlp::MlpStage> model = torch_mlp::make_model(stages, hidden, 233);
  torch::Tensor x = torch::randn(shape.batch(C), torch::kFloat64), l = torch::randn(shape.batch(C), torch::kFloat64);
  for (auto _ : state) {
    auto res = torch_mlp::sequential_step(model, x, l, C, true);
    benchmark::DoNotOptimize(res.losses.data());
    for (auto& m : model) m->zero_grad();
  }
}

void stage_backward(benchmark::State& state) {
  torch::set_num_threads(1);
  const bool fused = state.range(0) != 0;
  torch_mlp::Shape shape;
  shape.hidden = hidden;
  std::vector<torch_mlp::MlpStage> model = torch_mlp::make_model(1, hidden, 233);
  TorchStageOptions options;
  options.activation_shape = shape.chunk();
  options.dtype = torch::kFloat64;
  TorchStage stage(model[0], options);
  torch::Tensor x = torch::randn(shape.chunk(), torch::kFloat64), g = torch::randn(shape.chunk(), torch::kFloat64);
  std::vector<std::byte> out(stage.output_bytes()), in_grad(stage.input_bytes());
  StageContext ctx;
  ctx.stage = 1;
  ctx.num_stages = 3;
  CallClock backward_clock;
  for (auto _ : state) {
    stage.forward(ctx, torch_mlp::bytes_of(x), {out.data(), out.size()});
    backward_clock.time([&] {
      if (fused) {
        stage.backward(ctx, torch_mlp::bytes_of(g), {in_grad.data(), in_grad.size()});
      } else {
        stage.backward_input(ctx, torch_mlp::bytes_of(g), {in_grad.data(), in_grad.size()});
        stage.backward_weight(ctx);
      }
    });
    model[0]->zero_grad();
  }
  state.counters["backward_us"] = 1e6 * backward_clock.wall / static_cast<double>(state.iterations());
}

/// The stage, Linear(h, 4h) -> GELU -> Linear(4h, h) without bias, with either linear layer.
template <class Linear>
struct SplitStageImpl : torch::nn::Module {
  explicit SplitStageImpl(std::int64_t h)
      : l1(register_module("l1", Linear(torch::nn::LinearOptions(h, 4 * h).bias(false)))),
        l2(register_module("l2", Linear(torch::nn::LinearOptions(4 * h, h).bias(false)))) {}
  torch::Tensor forward(torch::Tensor x) { return l2(torch::gelu(l1(x))); }
  Linear l1, l2;
};

template <class Linear>
void split_over_fused(benchmark::State& state) {
  torch::set_num_threads(1);
  const std::vector<std::int64_t> chunk{3, 64, 256};
  torch::manual_seed(233);
  auto module = std::make_shared<SplitStageImpl<Linear>>(chunk.back());
  TorchStageOptions options;
  options.activation_shape = chunk;
  options.dtype = torch::kFloat32;
  TorchStage stage(module, options);
  torch::Tensor x = torch::randn(chunk), g = torch::randn(chunk);
  std::vector<std::byte> out(stage.output_bytes()), in_grad(stage.input_bytes());
  StageContext ctx;
  ctx.stage = 1;
  ctx.num_stages = 3;
  CallClock forward_clock, fused_clock, input_clock, weight_clock;
  for (auto _ : state) {
    forward_clock.time([&] { stage.forward(ctx, torch_mlp::bytes_of(x), {out.data(), out.size()}); });
    fused_clock.time([&] { stage.backward(ctx, torch_mlp::bytes_of(g), {in_grad.data(), in_grad.size()}); });
    stage.forward(ctx, torch_mlp::bytes_of(x), {out.data(), out.size()});
    input_clock.time([&] { stage.backward_input(ctx, torch_mlp::bytes_of(g), {in_grad.data(), in_grad.size()}); });
    weight_clock.time([&] { stage.backward_weight(ctx); });
    module->zero_grad();
  }
  // Thread CPU time: one thread computes, so it is the work done, and time slices lost to other processes on a
  // busy machine do not count. The wall-clock ratio is given too (equal on an idle machine).
  const double n = static_cast<double>(state.iterations());
  state.counters["forward_ms"] = 1e3 * forward_clock.cpu / n;
  state.counters["fused_ms"] = 1e3 * fused_clock.cpu / n;
  state.counters["input_ms"] = 1e3 * input_clock.cpu / n;
  state.counters["weight_ms"] = 1e3 * weight_clock.cpu / n;
  state.counters["split_over_fused"] = (input_clock.cpu + weight_clock.cpu) / fused_clock.cpu;
  state.counters["split_over_fused_wall"] = (input_clock.wall + weight_clock.wall) / fused_clock.wall;
  state.counters["defers"] = stage.defers_weight_grads() ? 1 : 0;
}

/// The fused backward (B and F&B ops) of the stage as a training step runs it: into gradients that
/// already hold earlier chunks'. DeferredLinear adds its weight products into .grad with one GEMM each;
/// torch::nn::Linear's come back from autograd as new tensors that TorchStage then adds. The two stages run
/// turn about, chunk by chunk, so that a machine whose speed drifts slows both alike.
void fused_backward_accumulating(benchmark::State& state) {
  torch::set_num_threads(1);
  const std::vector<std::int64_t> chunk{3, 64, 256};
  torch::manual_seed(233);
  auto deferring = std::make_shared<SplitStageImpl<DeferredLinear>>(chunk.back());
  torch::manual_seed(233);
  auto plain = std::make_shared<SplitStageImpl<torch::nn::Linear>>(chunk.back());
  TorchStageOptions options;
  options.activation_shape = chunk;
  options.dtype = torch::kFloat32;
  TorchStage deferring_stage(deferring, options), plain_stage(plain, options);
  torch::Tensor x = torch::randn(chunk), g = torch::randn(chunk) * 1e-3;
  std::vector<std::byte> out(deferring_stage.output_bytes()), in_grad(deferring_stage.input_bytes());
  StageContext ctx;
  ctx.stage = 1;
  ctx.num_stages = 3;
  CallClock deferring_clock, plain_clock;
  for (auto _ : state) {
    for (auto [stage, clock] : {std::pair{&deferring_stage, &deferring_clock}, std::pair{&plain_stage, &plain_clock}}) {
      stage->forward(ctx, torch_mlp::bytes_of(x), {out.data(), out.size()});
      clock->time([&] { stage->backward(ctx, torch_mlp::bytes_of(g), {in_grad.data(), in_grad.size()}); });
    }
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["deferring_ms"] = 1e3 * deferring_clock.cpu / n;
  state.counters["plain_ms"] = 1e3 * plain_clock.cpu / n;
  state.counters["deferring_over_plain"] = deferring_clock.cpu / plain_clock.cpu;
}

}  // namespace

BENCHMARK(fused_backward_accumulating)->Name("TorchStage/fused_backward_accumulating")->Unit(benchmark::kMillisecond);
BENCHMARK(split_over_fused<DeferredLinear>)->Name("TorchStage/split_over_fused")->Unit(benchmark::kMillisecond);
BENCHMARK(split_over_fused<torch::nn::Linear>)
    ->Name("TorchStage/split_over_fused_two_pass")
    ->Unit(benchmark::kMillisecond);
BENCHMARK(pipeline_step<DualPipe>)
    ->Name("Pipeline/torch/dualpipe")
    ->ArgNames({"ranks", "chunks"})
    ->Args({4, 8})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(pipeline_step<DualPipeV>)
    ->Name("Pipeline/torch/dualpipev")
    ->ArgNames({"ranks", "chunks"})
    ->Args({2, 8})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(sequential_step)
    ->Name("Sequential/torch")
    ->ArgNames({"stages", "chunks"})
    ->Args({4, 8})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(stage_backward)->Name("TorchStage/backward")->ArgName("fused")->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);
