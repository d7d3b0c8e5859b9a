// dualpipe-peers: our side of the peer benchmark (bench/peers/run.sh, docs/benchmarks-peers.md).
//
// The model is the reference example's: S stages of Linear(h, 4h) -> GELU -> Linear(4h, h) without bias,
// float32, mean squared error loss, C chunks of micro_batch x seq_len rows. The weights and the data are
// written once by `data` as raw little-endian float32 files, and read by both systems (this program and
// PyTorch's, bench/peers/peers.py), so that both compute exactly the same model on the same numbers.
//
//   dualpipe-peers data --dir D [--hidden 256] [--stages 8] [--chunks 20] [--micro-batch 3] [--seq-len 64]
//                               [--seed 1]
//   dualpipe-peers sequential --dir D --stages S [--steps 10] [--warmup 3]
//       plain libtorch (torch::nn::Linear), chunk after chunk through S stages, loss.backward(): the time a
//       user pays without a pipeline.
//   dualpipe-peers costs --dir D --ranks P [--reps 20]
//       one stage's F, fused backward, input part (B) and weight part (W) through TorchStage, and our
//       simulator's bound (1 - bubble ratio) for each schedule at P ranks with those costs.
//   dualpipe-peers pipeline --dir D --schedule dualpipe|dualpipev|1f1b|zb1p --ranks P [--mpi]
//                           [--steps 10] [--warmup 3] [--linear deferred|plain] [--progress auto|wait|thread]
//                           [--progress-interval-us 100] [--spin-us 1000] [--sleep-us 50]
//       the pipeline: P rank threads (InProcessWorld), or with --mpi one rank per process under mpirun -np P
//       (--progress, --progress-interval-us, --spin-us, --sleep-us: those MpiOptions). Each step starts
//       together on every rank; its time is the slowest rank's; the median of the timed steps is reported,
//       with the first step's losses, the time the ranks spent waiting for data (from the measured timeline's
//       wait spans: the median over the timed steps of the ranks' mean) and, under MPI, the CPU time of the
//       progress thread per step.
//
// Every subcommand prints its result as one line `result: {json}` (rank 0 only under MPI). One intra-op
// thread per rank for libtorch and for the BLAS.
#include <sys/resource.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/utils.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/dualpipe.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/runtime/run_ranks.hpp"
#include "dualpipe/torch.hpp"
#if DUALPIPE_PEERS_MPI
#include <mpi.h>

#include "dualpipe/mpi.hpp"
#endif

using namespace dualpipe;

namespace {

constexpr const char* program = "dualpipe-peers";

// ---- Command line ----

struct Args {
  std::string command;
  std::map<std::string, std::string> values;
  bool mpi = false;

  [[nodiscard]] std::string text(const std::string& key, const std::string& fallback = {}) const {
    auto it = values.find(key);
    if (it != values.end()) return it->second;
    if (fallback.empty()) throw ConfigError("--" + key + " is required for '" + command + "'");
    return fallback;
  }
  [[nodiscard]] int number(const std::string& key, int fallback) const {
    const std::string v = text(key, std::to_string(fallback));
    char* end = nullptr;
    const long n = std::strtol(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0' || n < 1 || n > 1'000'000)
      throw ConfigError("--" + key + " must be a whole number from 1 to 1000000 (got '" + v + "')");
    return static_cast<int>(n);
  }
};

Args parse_args(int argc, char** argv) {
  if (argc < 2) throw ConfigError("usage: dualpipe-peers data|sequential|costs|pipeline --dir D [options]");
  Args a;
  a.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string key = argv[i];
    if (key == "--mpi") {
      a.mpi = true;
      continue;
    }
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) throw ConfigError("expected --option value, got '" + key + "'");
    a.values[key.substr(2)] = argv[++i];
  }
  return a;
}

// ---- The model, its weights and data ----

/// What `data` wrote: meta.txt in the data folder.
struct Meta {
  int hidden = 256, stages = 8, chunks = 20, micro_batch = 3, seq_len = 64, seed = 1;
  [[nodiscard]] std::vector<std::int64_t> chunk_shape() const { return {micro_batch, seq_len, hidden}; }
  [[nodiscard]] std::vector<std::int64_t> batch_shape() const {
    return {static_cast<std::int64_t>(chunks) * micro_batch, seq_len, hidden};
  }
};

Meta read_meta(const std::string& dir) {
  std::ifstream in(dir + "/meta.txt");
  if (!in) throw ConfigError("no " + dir + "/meta.txt: run `dualpipe-peers data --dir " + dir + "` first");
  Meta m;
  std::map<std::string, int*> fields{{"hidden", &m.hidden},           {"stages", &m.stages},   {"chunks", &m.chunks},
                                     {"micro_batch", &m.micro_batch}, {"seq_len", &m.seq_len}, {"seed", &m.seed}};
  std::string item;
  while (in >> item) {
    const auto eq = item.find('=');
    if (eq == std::string::npos) continue;
    auto it = fields.find(item.substr(0, eq));
    if (it != fields.end()) *it->second = std::stoi(item.substr(eq + 1));
  }
  return m;
}

void write_tensor(const std::string& path, const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kFloat32).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
  if (!out) throw Error("cannot write " + path);
}

torch::Tensor read_tensor(const std::string& path, const std::vector<std::int64_t>& shape) {
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  std::ifstream in(path, std::ios::binary);
  in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  if (!in || in.peek() != std::char_traits<char>::eof())
    throw Error(path + " does not hold exactly " + std::to_string(t.nbytes()) + " bytes of float32");
  return t;
}

std::string weight_file(const std::string& dir, int stage, int layer) {
  return dir + "/stage" + std::to_string(stage) + "_l" + std::to_string(layer) + ".bin";
}

/// One stage, with either linear layer (DeferredLinear: the one-pass zero-bubble split).
template <class Linear>
struct StageImpl : torch::nn::Module {
  explicit StageImpl(std::int64_t h)
      : l1(register_module("l1", Linear(torch::nn::LinearOptions(h, 4 * h).bias(false)))),
        l2(register_module("l2", Linear(torch::nn::LinearOptions(4 * h, h).bias(false)))) {}
  torch::Tensor forward(torch::Tensor x) { return l2->forward(torch::gelu(l1->forward(x))); }
  Linear l1, l2;
};

template <class Linear>
std::shared_ptr<StageImpl<Linear>> load_stage(const std::string& dir, const Meta& m, int stage) {
  auto s = std::make_shared<StageImpl<Linear>>(m.hidden);
  torch::NoGradGuard no_grad;
  s->l1->weight.copy_(read_tensor(weight_file(dir, stage, 1), {4 * m.hidden, m.hidden}));
  s->l2->weight.copy_(read_tensor(weight_file(dir, stage, 2), {m.hidden, 4 * m.hidden}));
  return s;
}

torch::Tensor criterion(const torch::Tensor& y, const torch::Tensor& l) { return torch::mse_loss(y, l); }

ConstBytes bytes_of(const torch::Tensor& t) { return {static_cast<const std::byte*>(t.data_ptr()), t.nbytes()}; }

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// CPU seconds (user + system) this process has used so far, all its threads together.
double process_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec);
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<double> milliseconds(std::vector<double> seconds) {
  for (double& t : seconds) t *= 1e3;
  return seconds;
}

std::string json_numbers(const std::vector<double>& v) {
  std::ostringstream os;
  os.precision(9);
  os << "[";
  for (std::size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}

std::string context_json() {
  std::ostringstream os;
  os << "\"blas\": \"" << describe_blas(loaded_blas()).substr(6) << "\", \"torch\": \"libtorch " << TORCH_VERSION_MAJOR
     << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH << "\"";
  return os.str();
}

// ---- Subcommands ----

int write_data(const Args& a) {
  const std::string dir = a.text("dir");
  Meta m;
  m.hidden = a.number("hidden", m.hidden);
  m.stages = a.number("stages", m.stages);
  m.chunks = a.number("chunks", m.chunks);
  m.micro_batch = a.number("micro-batch", m.micro_batch);
  m.seq_len = a.number("seq-len", m.seq_len);
  m.seed = a.number("seed", m.seed);
  // libtorch's default Linear initialisation from the seed, then the batch and its labels.
  torch::manual_seed(static_cast<std::uint64_t>(m.seed));
  for (int s = 0; s < m.stages; ++s) {
    StageImpl<torch::nn::Linear> stage(m.hidden);
    write_tensor(weight_file(dir, s, 1), stage.l1->weight);
    write_tensor(weight_file(dir, s, 2), stage.l2->weight);
  }
  write_tensor(dir + "/x.bin", torch::randn(m.batch_shape()));
  write_tensor(dir + "/labels.bin", torch::randn(m.batch_shape()));
  std::ofstream meta(dir + "/meta.txt");
  meta << "hidden=" << m.hidden << " stages=" << m.stages << " chunks=" << m.chunks << " micro_batch=" << m.micro_batch
       << " seq_len=" << m.seq_len << " seed=" << m.seed << "\n";
  if (!meta) throw Error("cannot write " + dir + "/meta.txt");
  std::printf("result: {\"command\": \"data\", \"dir\": \"%s\"}\n", dir.c_str());
  return 0;
}

int sequential(const Args& a) {
  const std::string dir = a.text("dir");
  const Meta m = read_meta(dir);
  const int stages = a.number("stages", m.stages), steps = a.number("steps", 10), warmup = a.number("warmup", 3);
  if (stages > m.stages)
    throw ConfigError("--stages " + std::to_string(stages) + " exceeds the data's " + std::to_string(m.stages));
  std::vector<std::shared_ptr<StageImpl<torch::nn::Linear>>> model;
  for (int s = 0; s < stages; ++s) model.push_back(load_stage<torch::nn::Linear>(dir, m, s));
  const torch::Tensor x = read_tensor(dir + "/x.bin", m.batch_shape());
  const torch::Tensor l = read_tensor(dir + "/labels.bin", m.batch_shape());
  const auto xs = x.chunk(m.chunks), ls = l.chunk(m.chunks);
  std::vector<double> times, first_losses;
  for (int step = 0; step < warmup + steps; ++step) {
    for (auto& s : model) s->zero_grad();
    const double t0 = seconds_now();
    for (int c = 0; c < m.chunks; ++c) {
      torch::Tensor y = xs[c];
      for (auto& s : model) y = s->forward(y);
      torch::Tensor loss = criterion(y, ls[c]);
      loss.backward();
      if (step == 0) first_losses.push_back(loss.item<double>());
    }
    if (step >= warmup) times.push_back(seconds_now() - t0);
  }
  std::printf(
      "result: {\"command\": \"sequential\", \"stages\": %d, \"chunks\": %d, \"step_ms\": %.4f, "
      "\"step_ms_all\": %s, \"losses\": %s, %s}\n",
      stages, m.chunks, 1e3 * median(times), json_numbers(milliseconds(times)).c_str(),
      json_numbers(first_losses).c_str(), context_json().c_str());
  return 0;
}

int costs(const Args& a) {
  const std::string dir = a.text("dir");
  const Meta m = read_meta(dir);
  const int ranks = a.number("ranks", 2), reps = a.number("reps", 20);
  auto module = load_stage<DeferredLinear>(dir, m, 0);
  TorchStageOptions options;
  options.activation_shape = m.chunk_shape();
  options.dtype = torch::kFloat32;
  TorchStage stage(module, options);
  const torch::Tensor x = read_tensor(dir + "/x.bin", m.batch_shape()).chunk(m.chunks)[0].contiguous();
  const torch::Tensor g = torch::randn(m.chunk_shape()) * 1e-3;
  std::vector<std::byte> out(stage.output_bytes()), in_grad(stage.input_bytes());
  StageContext ctx;
  ctx.stage = 1;
  ctx.num_stages = 3;
  std::vector<double> f, fused, input, weight;
  auto timed = [](std::vector<double>& into, auto&& fn) {
    const double t0 = seconds_now();
    fn();
    into.push_back(seconds_now() - t0);
  };
  for (int i = 0; i < reps + 2; ++i) {
    timed(f, [&] { stage.forward(ctx, bytes_of(x), {out.data(), out.size()}); });
    timed(fused, [&] { stage.backward(ctx, bytes_of(g), {in_grad.data(), in_grad.size()}); });
    stage.forward(ctx, bytes_of(x), {out.data(), out.size()});
    timed(input, [&] { stage.backward_input(ctx, bytes_of(g), {in_grad.data(), in_grad.size()}); });
    timed(weight, [&] { stage.backward_weight(ctx); });
    module->zero_grad();
  }
  for (auto* v : {&f, &fused, &input, &weight}) v->erase(v->begin(), v->begin() + 2);  // warm-up
  Costs c;
  c.forward = 1e3 * median(f);
  c.weight = 1e3 * median(weight);
  c.backward = 1e3 * median(input) + c.weight;  // a split backward: input part + weight part
  c.forward_backward = c.forward + c.backward;  // one thread: F&B overlaps nothing on a CPU rank
  std::ostringstream bounds;
  for (ScheduleKind kind :
       {ScheduleKind::dualpipe, ScheduleKind::dualpipev, ScheduleKind::one_f_one_b, ScheduleKind::zb1p}) {
    const Trace trace = make_trace(kind, ranks, m.chunks);
    const Summary s = summarize(simulate(trace, kind, c), trace);
    bounds << (bounds.tellp() > 0 ? ", " : "") << "\"" << schedule_name(kind) << "\": " << 1.0 - s.bubble_ratio;
  }
  std::printf(
      "result: {\"command\": \"costs\", \"ranks\": %d, \"forward_ms\": %.4f, \"fused_backward_ms\": %.4f, "
      "\"input_ms\": %.4f, \"weight_ms\": %.4f, \"bound\": {%s}, %s}\n",
      ranks, c.forward, 1e3 * median(fused), 1e3 * median(input), c.weight, bounds.str().c_str(),
      context_json().c_str());
  return 0;
}

/// One rank's side of the pipeline run: its modules, its TorchStages, its Pipeline.
template <class Schedule, class Linear, class Comm>
struct Rank {
  std::vector<std::shared_ptr<StageImpl<Linear>>> modules;
  std::vector<std::unique_ptr<TorchStage>> stages;
  std::unique_ptr<Pipeline<Schedule, Comm, TorchStage>> pipe;

  Rank(Comm& comm, const std::string& dir, const Meta& m, int ranks, int rank) {
    TorchStageOptions options;
    options.activation_shape = m.chunk_shape();
    options.dtype = torch::kFloat32;
    std::array<TorchStage*, Schedule::modules_per_rank> ptrs{};
    for (int k = 0; k < Schedule::modules_per_rank; ++k) {
      const int s = Schedule::placement(ranks, m.chunks, rank, k).stage;
      modules.push_back(load_stage<Linear>(dir, m, s));
      stages.push_back(std::make_unique<TorchStage>(modules.back(), options, criterion));
      ptrs[k] = stages.back().get();
    }
    PipelineOptions po;
    po.record_timeline = true;  // the wait spans say where a step's time goes (a clock read per op)
    pipe = std::make_unique<Pipeline<Schedule, Comm, TorchStage>>(comm, ptrs, po);
  }
  void zero_grad() {
    for (auto& mod : modules) mod->zero_grad();
  }
};

/// Seconds of a rank's step spent in wait spans (waiting for data or for a transfer to finish).
double wait_time(const StepResult& res) {
  double total = 0;
  for (const Span& span : res.spans)
    if (span.lane == Span::Lane::wait) total += span.duration();
  return total;
}

#if DUALPIPE_PEERS_MPI
/// --progress auto|wait|thread: MpiOptions::progress.
MpiOptions mpi_options(const Args& a) {
  const std::string progress = a.text("progress", "auto");
  MpiOptions options;
  if (progress == "auto") options.progress = MpiProgress::automatic;
  else if (progress == "wait") options.progress = MpiProgress::on_wait;
  else if (progress == "thread") options.progress = MpiProgress::thread;
  else throw ConfigError("--progress must be auto, wait or thread (got '" + progress + "')");
  const auto knob = [&a](const char* key, std::chrono::microseconds fallback) {
    return std::chrono::microseconds(a.number(key, static_cast<int>(fallback.count())));
  };
  options.progress_interval = knob("progress-interval-us", options.progress_interval);
  options.spin = knob("spin-us", options.spin);
  options.sleep = knob("sleep-us", options.sleep);
  return options;
}
#endif

struct PipelineRun {
  std::vector<double> step_seconds;  // per step: the slowest rank's time
  std::vector<double> wait_seconds;  // per step: the ranks' mean time in wait spans
  double progress_cpu_per_step = 0;  // MPI: the progress threads' CPU seconds per step, mean over ranks
  double cpu_per_step = 0;           // CPU seconds per step and rank (the process's, over the timed steps)
  std::string progress = "none";     // MPI: "thread" or "wait" (what MpiOptions::progress gave)
  std::vector<double> losses;        // first step, per chunk
  int stages = 0;
};

template <class Schedule, class Linear>
PipelineRun run_inprocess(const std::string& dir, const Meta& m, int ranks, int warmup, int steps,
                          const torch::Tensor& x, const torch::Tensor& l) {
  InProcessWorld world(ranks);
  std::vector<std::unique_ptr<Rank<Schedule, Linear, InProcessCommunicator>>> rs;
  for (int r = 0; r < ranks; ++r)
    rs.push_back(
        std::make_unique<Rank<Schedule, Linear, InProcessCommunicator>>(world.communicator(r), dir, m, ranks, r));
  PipelineRun out;
  out.stages = Schedule::placement(ranks, m.chunks, 0, 0).num_stages;
  out.losses.assign(m.chunks, 0.0);
  std::vector<double> rank_time(ranks);
  std::vector<StepResult> results(ranks);
  double cpu_start = 0;
  for (int step = 0; step < warmup + steps; ++step) {
    if (step == warmup) cpu_start = process_cpu_seconds();
    for (auto& r : rs) r->zero_grad();
    // run_ranks starts the rank threads together; each times its own step.
    run_ranks(ranks, [&](int r) {
      const double t0 = seconds_now();
      results[r] = rs[r]->pipe->step(m.chunks, bytes_of(x), bytes_of(l));
      rank_time[r] = seconds_now() - t0;
    });
    if (step == 0)
      for (const StepResult& res : results)
        for (int c = 0; c < m.chunks; ++c)
          if (!std::isnan(res.losses[c])) out.losses[c] = res.losses[c];
    if (step >= warmup) {
      out.step_seconds.push_back(*std::max_element(rank_time.begin(), rank_time.end()));
      double waits = 0;
      for (const StepResult& res : results) waits += wait_time(res);
      out.wait_seconds.push_back(waits / ranks);
    }
  }
  out.cpu_per_step = (process_cpu_seconds() - cpu_start) / steps / ranks;
  return out;
}

#if DUALPIPE_PEERS_MPI
template <class Schedule, class Linear>
PipelineRun run_mpi(const std::string& dir, const Meta& m, int ranks, int warmup, int steps, const torch::Tensor& x,
                    const torch::Tensor& l, const MpiOptions& options) {
  MpiCommunicator comm(MPI_COMM_WORLD, options);
  if (comm.size() != ranks)
    throw ConfigError("--ranks " + std::to_string(ranks) + " but mpirun started " + std::to_string(comm.size()) +
                      " processes");
  Rank<Schedule, Linear, MpiCommunicator> rank(comm, dir, m, ranks, comm.rank());
  PipelineRun out;
  out.stages = Schedule::placement(ranks, m.chunks, 0, 0).num_stages;
  out.losses.assign(m.chunks, 0.0);
  double progress_cpu_start = 0, cpu_start = 0;
  for (int step = 0; step < warmup + steps; ++step) {
    rank.zero_grad();
    if (step == warmup) {
      progress_cpu_start = comm.progress_cpu_seconds();
      cpu_start = process_cpu_seconds();
    }
    dualpipe::detail::mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");  // every rank starts the step together
    const double t0 = seconds_now();
    StepResult res = rank.pipe->step(m.chunks, bytes_of(x), bytes_of(l));
    double mine = seconds_now() - t0, slowest = 0;
    dualpipe::detail::mpi_check(MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD),
                                "MPI_Allreduce");
    if (step == 0) {
      std::vector<double> local(m.chunks, 0.0);
      for (int c = 0; c < m.chunks; ++c)
        if (!std::isnan(res.losses[c])) local[c] = res.losses[c];
      dualpipe::detail::mpi_check(
          MPI_Allreduce(local.data(), out.losses.data(), m.chunks, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");  // each chunk's loss comes from one rank, zeros from the others
    }
    double waits = 0;
    const double my_wait = wait_time(res);
    dualpipe::detail::mpi_check(MPI_Allreduce(&my_wait, &waits, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
                                "MPI_Allreduce");
    if (step >= warmup) {
      out.step_seconds.push_back(slowest);
      out.wait_seconds.push_back(waits / ranks);
    }
  }
  const double mine_cpu[2] = {(comm.progress_cpu_seconds() - progress_cpu_start) / steps,
                              (process_cpu_seconds() - cpu_start) / steps};
  double all_cpu[2] = {0, 0};
  dualpipe::detail::mpi_check(MPI_Allreduce(mine_cpu, all_cpu, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
                              "MPI_Allreduce");
  out.progress_cpu_per_step = all_cpu[0] / ranks;
  out.cpu_per_step = all_cpu[1] / ranks;
  out.progress = comm.has_progress_thread() ? "thread" : "wait";
  return out;
}
#endif

int pipeline(const Args& a) {
  const std::string dir = a.text("dir");
  const Meta m = read_meta(dir);
  const int ranks = a.number("ranks", 2), steps = a.number("steps", 10), warmup = a.number("warmup", 3);
  const ScheduleKind kind = parse_schedule_kind(a.text("schedule"));
  const std::string linear = a.text("linear", "deferred");
  if (linear != "deferred" && linear != "plain")
    throw ConfigError("--linear must be deferred or plain (got '" + linear + "')");
  for (const char* key : {"progress", "progress-interval-us", "spin-us", "sleep-us"})
    if (!a.mpi && a.values.count(key))
      throw ConfigError(std::string("--") + key + " is an MpiOptions knob: it needs --mpi");
  const torch::Tensor x = read_tensor(dir + "/x.bin", m.batch_shape());
  const torch::Tensor l = read_tensor(dir + "/labels.bin", m.batch_shape());
  int world_rank = 0;
  PipelineRun run = visit_schedule(kind, [&](auto schedule) -> PipelineRun {
    using Schedule = decltype(schedule);
    Schedule::check(ranks, m.chunks);
    const int stages = Schedule::placement(ranks, m.chunks, 0, 0).num_stages;
    if (stages > m.stages)
      throw ConfigError(std::string(Schedule::name) + " on " + std::to_string(ranks) + " ranks needs " +
                        std::to_string(stages) + " stages; the data has " + std::to_string(m.stages));
    auto go = [&]<class Linear>() -> PipelineRun {
#if DUALPIPE_PEERS_MPI
      if (a.mpi) {
        MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
        return run_mpi<Schedule, Linear>(dir, m, ranks, warmup, steps, x, l, mpi_options(a));
      }
#endif
      if (a.mpi) throw ConfigError("--mpi: this dualpipe-peers was built without MPI");
      return run_inprocess<Schedule, Linear>(dir, m, ranks, warmup, steps, x, l);
    };
    return linear == "deferred" ? go.template operator()<DeferredLinear>()
                                : go.template operator()<torch::nn::Linear>();
  });
  if (world_rank == 0)
    std::printf(
        "result: {\"command\": \"pipeline\", \"schedule\": \"%s\", \"comm\": \"%s\", \"linear\": \"%s\", "
        "\"ranks\": %d, \"stages\": %d, \"chunks\": %d, \"step_ms\": %.4f, \"step_ms_all\": %s, "
        "\"wait_ms\": %.4f, \"cpu_ms\": %.4f, \"progress_cpu_ms\": %.4f, \"progress\": \"%s\", \"losses\": %s, "
        "%s}\n",
        std::string(schedule_name(kind)).c_str(), a.mpi ? "mpi" : "threads", linear.c_str(), ranks, run.stages,
        m.chunks, 1e3 * median(run.step_seconds), json_numbers(milliseconds(run.step_seconds)).c_str(),
        1e3 * median(run.wait_seconds), 1e3 * run.cpu_per_step, 1e3 * run.progress_cpu_per_step, run.progress.c_str(),
        json_numbers(run.losses).c_str(), context_json().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse_args(argc, argv);
    // One thread per rank: the ranks are the parallelism (libtorch's OpenMP and the BLAS's own threads).
    torch::set_num_threads(1);
    set_blas_threads(1);
#if DUALPIPE_PEERS_MPI
    std::unique_ptr<MpiSession> session;
    if (args.mpi) session = std::make_unique<MpiSession>(argc, argv);
#endif
    if (args.command == "data") return write_data(args);
    if (args.command == "sequential") return sequential(args);
    if (args.command == "costs") return costs(args);
    if (args.command == "pipeline") return pipeline(args);
    throw ConfigError("unknown command '" + args.command + "' (data, sequential, costs, pipeline)");
  } catch (const ConfigError& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 1;
  }
}
