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
//       a middle stage's F, fused backward, input part (B) and weight part (W) through TorchStage, the same for
//       the first stage (no input gradient) and the last (F with the loss), and our simulator's bound (1 - bubble
//       ratio) for each schedule at P ranks with those per-stage costs (bound), and with the middle stage's
//       costs for every stage (bound_even).
//   dualpipe-peers pipeline --dir D --schedule dualpipe|dualpipev|1f1b|zb1p --ranks P [--mpi]
//                           [--steps 10] [--warmup 3] [--linear deferred|plain] [--progress auto|wait|thread]
//                           [--progress-interval-us 100] [--spin-us 1000] [--sleep-us 50] [--paired]
//                           [--fill N] [--eager] [--waits] [--replay none|alone|together]
//       the pipeline: P rank threads (InProcessWorld; RankThreads, kept from step to step), or with --mpi one
//       rank per process under mpirun -np P
//       (--progress, --progress-interval-us, --spin-us, --sleep-us: those MpiOptions). Each step starts
//       together on every rank; its time is the slowest rank's; the median of the timed steps is reported,
//       with the first step's losses, the time the ranks spent waiting for data (from the measured timeline's
//       wait spans: the median over the timed steps of the ranks' mean) and, under MPI, the CPU time of the
//       progress thread per step. --paired runs one sequential step (as `sequential`, S stages) right before
//       every pipeline step (rank 0 under MPI, the others sleeping) and reports their times: the efficiency of
//       each step against a baseline timed seconds apart, not minutes, on a machine whose speed drifts.
//       compute_ms_all: per timed step, the ranks' summed time in compute spans (against the paired sequential
//       step: what the ops cost inside the pipeline). --fill N: PipelineOptions::weight_fill_depth (owed weight
//       gradients run while a commit waits). --eager: PipelineOptions::eager_transfers (outputs sent as soon
//       as computed; an FB waits for its forward input only, the rest before its backward half). --waits (threads):
//       waits_ms lists, per rank and op index (a commit's), the ms it waited per timed step. --replay
//       alone|together (threads): after each timed step, every rank's op list again against its own copy of the stages and a NullCommunicator, one rank after the
//       other or all at once; replay_ms gives per op kind the ranks' compute ms per step [pipeline, replay]:
//       whether an op costs more inside the pipeline than alone, or than beside the other ranks' work.
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
#include <cctype>
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
#include <thread>
#include <vector>

#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/comm/null.hpp"
#include "dualpipe/dualpipe.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/runtime/rank_threads.hpp"
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
  bool paired = false;
  bool eager = false;  // --eager: PipelineOptions::eager_transfers
  bool waits = false;  // --waits: where each rank waited (threads)

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
    if (key == "--mpi" || key == "--paired" || key == "--eager" || key == "--waits") {
      (key == "--mpi" ? a.mpi : key == "--paired" ? a.paired : key == "--eager" ? a.eager : a.waits) = true;
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

/// The model without a pipeline: plain libtorch (torch::nn::Linear), chunk after chunk through its stages,
/// forward, loss, loss.backward(). What a user pays without a pipeline.
class SequentialModel {
public:
  SequentialModel(const std::string& dir, const Meta& m, int stages) : _chunks(m.chunks) {
    if (stages > m.stages)
      throw ConfigError("--stages " + std::to_string(stages) + " exceeds the data's " + std::to_string(m.stages));
    for (int s = 0; s < stages; ++s) _model.push_back(load_stage<torch::nn::Linear>(dir, m, s));
    _xs = read_tensor(dir + "/x.bin", m.batch_shape()).chunk(m.chunks);
    _ls = read_tensor(dir + "/labels.bin", m.batch_shape()).chunk(m.chunks);
  }

  /// One step from zeroed gradients; returns its seconds. `losses`, when given, gets each chunk's loss.
  double step(std::vector<double>* losses = nullptr) {
    for (auto& s : _model) s->zero_grad();
    const double t0 = seconds_now();
    for (int c = 0; c < _chunks; ++c) {
      torch::Tensor y = _xs[static_cast<std::size_t>(c)];
      for (auto& s : _model) y = s->forward(y);
      torch::Tensor loss = criterion(y, _ls[static_cast<std::size_t>(c)]);
      loss.backward();
      if (losses) losses->push_back(loss.item<double>());
    }
    return seconds_now() - t0;
  }

private:
  int _chunks;
  std::vector<std::shared_ptr<StageImpl<torch::nn::Linear>>> _model;
  std::vector<torch::Tensor> _xs, _ls;
};

int sequential(const Args& a) {
  const std::string dir = a.text("dir");
  const Meta m = read_meta(dir);
  const int stages = a.number("stages", m.stages), steps = a.number("steps", 10), warmup = a.number("warmup", 3);
  SequentialModel model(dir, m, stages);
  std::vector<double> times, first_losses;
  for (int step = 0; step < warmup + steps; ++step) {
    const double t = model.step(step == 0 ? &first_losses : nullptr);
    if (step >= warmup) times.push_back(t);
  }
  std::printf(
      "result: {\"command\": \"sequential\", \"stages\": %d, \"chunks\": %d, \"step_ms\": %.4f, "
      "\"step_ms_all\": %s, \"losses\": %s, %s}\n",
      stages, m.chunks, 1e3 * median(times), json_numbers(milliseconds(times)).c_str(),
      json_numbers(first_losses).c_str(), context_json().c_str());
  return 0;
}

/// One stage's measured costs per chunk, in milliseconds (medians).
struct MeasuredCosts {
  double forward = 0, fused = 0, input = 0, weight = 0;

  /// The simulator's Costs of this stage: a split backward is input part + weight part, and on one CPU thread an
  /// F&B overlaps nothing.
  [[nodiscard]] Costs simulator_costs() const {
    Costs c;
    c.forward = forward;
    c.weight = weight;
    c.backward = input + weight;
    c.forward_backward = c.forward + c.backward;
    return c;
  }
  [[nodiscard]] std::string json() const {
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "{\"forward_ms\": %.4f, \"fused_backward_ms\": %.4f, \"input_ms\": %.4f, \"weight_ms\": %.4f}",
                  forward, fused, input, weight);
    return buf;
  }
};

/// Times F (with the loss on the last stage), the fused backward, and the input and weight parts of stage `s`
/// of a model of `num_stages` >= 3: the first stage computes no input gradient, the last starts from the loss.
MeasuredCosts measure_stage(const std::string& dir, const Meta& m, int s, int num_stages, int reps) {
  auto module = load_stage<DeferredLinear>(dir, m, s);
  TorchStageOptions options;
  options.activation_shape = m.chunk_shape();
  options.dtype = torch::kFloat32;
  TorchStage stage(module, options, criterion);
  StageContext ctx;
  ctx.stage = s;
  ctx.num_stages = num_stages;
  ctx.is_first_stage = s == 0;
  ctx.is_last_stage = s == num_stages - 1;
  const torch::Tensor x = read_tensor(dir + "/x.bin", m.batch_shape()).chunk(m.chunks)[0].contiguous();
  const torch::Tensor labels = read_tensor(dir + "/labels.bin", m.batch_shape()).chunk(m.chunks)[0].contiguous();
  const torch::Tensor g = torch::randn(m.chunk_shape()) * 1e-3;
  std::vector<std::byte> out(stage.output_bytes()), in_grad(ctx.is_first_stage ? 0 : stage.input_bytes());
  const ConstBytes out_grad = ctx.is_last_stage ? ConstBytes{} : bytes_of(g);
  const MutableBytes in_grad_span{in_grad.data(), in_grad.size()};
  auto forward = [&] {
    stage.forward(ctx, bytes_of(x), {out.data(), out.size()});
    if (ctx.is_last_stage) (void)stage.loss(ctx, {out.data(), out.size()}, bytes_of(labels));
  };
  std::vector<double> f, fused, input, weight;
  auto timed = [](std::vector<double>& into, auto&& fn) {
    const double t0 = seconds_now();
    fn();
    into.push_back(seconds_now() - t0);
  };
  for (int i = 0; i < reps + 2; ++i) {
    timed(f, forward);
    timed(fused, [&] { stage.backward(ctx, out_grad, in_grad_span); });
    forward();
    timed(input, [&] { stage.backward_input(ctx, out_grad, in_grad_span); });
    timed(weight, [&] { stage.backward_weight(ctx); });
    module->zero_grad();
  }
  for (auto* v : {&f, &fused, &input, &weight}) v->erase(v->begin(), v->begin() + 2);  // warm-up
  return {1e3 * median(f), 1e3 * median(fused), 1e3 * median(input), 1e3 * median(weight)};
}

int costs(const Args& a) {
  const std::string dir = a.text("dir");
  const Meta m = read_meta(dir);
  const int ranks = a.number("ranks", 2), reps = a.number("reps", 20);
  if (m.stages < 3)
    throw ConfigError("costs needs data of at least 3 stages (first, middle, last); got " + std::to_string(m.stages));
  // The first stage has no input gradient to compute and the last adds the loss: their costs differ from a
  // middle stage's, and on few stages that difference shows in the bubble.
  const MeasuredCosts first = measure_stage(dir, m, 0, 3, reps), middle = measure_stage(dir, m, 1, 3, reps),
                      last = measure_stage(dir, m, 2, 3, reps);
  std::ostringstream bounds, even_bounds;
  for (ScheduleKind kind :
       {ScheduleKind::dualpipe, ScheduleKind::dualpipev, ScheduleKind::one_f_one_b, ScheduleKind::zb1p}) {
    const Trace trace = make_trace(kind, ranks, m.chunks);
    const int stages = placement_of(kind, ranks, m.chunks)(0, 0).num_stages;
    std::vector<Costs> per_stage(static_cast<std::size_t>(stages), middle.simulator_costs());
    per_stage.front() = first.simulator_costs();
    per_stage.back() = last.simulator_costs();
    const Summary s = summarize(simulate(trace, kind, StageCosts(per_stage)), trace);
    const Summary even = summarize(simulate(trace, kind, middle.simulator_costs()), trace);
    const std::string key = "\"" + std::string(schedule_name(kind)) + "\": ";
    bounds << (bounds.tellp() > 0 ? ", " : "") << key << 1.0 - s.bubble_ratio;
    even_bounds << (even_bounds.tellp() > 0 ? ", " : "") << key << 1.0 - even.bubble_ratio;
  }
  const std::string middle_json = middle.json();
  std::printf(
      "result: {\"command\": \"costs\", \"ranks\": %d, %s, \"first\": %s, \"last\": %s, \"bound\": {%s}, "
      "\"bound_even\": {%s}, %s}\n",
      ranks, middle_json.substr(1, middle_json.size() - 2).c_str(), first.json().c_str(), last.json().c_str(),
      bounds.str().c_str(), even_bounds.str().c_str(), context_json().c_str());
  return 0;
}

/// One rank's side of the pipeline run: its modules, its TorchStages, its Pipeline.
template <class Schedule, class Linear, class Comm>
struct Rank {
  std::vector<std::shared_ptr<StageImpl<Linear>>> modules;
  std::vector<std::unique_ptr<TorchStage>> stages;
  std::unique_ptr<Pipeline<Schedule, Comm, TorchStage>> pipe;

  Rank(Comm& comm, const std::string& dir, const Meta& m, int ranks, int rank, int fill = 0, bool eager = false) {
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
    po.weight_fill_depth = fill;
    po.eager_transfers = eager;
    pipe = std::make_unique<Pipeline<Schedule, Comm, TorchStage>>(comm, ptrs, po);
  }
  void zero_grad() {
    for (auto& mod : modules) mod->zero_grad();
  }
};

/// Seconds of a rank's step spent in one lane's spans: wait (waiting for data or for a transfer to finish) or
/// compute (the stage's own calls).
double lane_time(const StepResult& res, Span::Lane lane) {
  double total = 0;
  for (const Span& span : res.spans)
    if (span.lane == lane) total += span.duration();
  return total;
}

/// Adds a step's compute spans to `by_kind`, keyed by the op's kind (its token's letters: F, B, Bw, FB, W).
void add_compute_by_kind(const StepResult& res, std::map<std::string, double>& by_kind) {
  for (const Span& span : res.spans) {
    if (span.lane != Span::Lane::compute) continue;
    std::string kind;
    for (const char ch : to_token(span.op))
      if (std::isalpha(static_cast<unsigned char>(ch))) kind += ch;
    by_kind[kind] += span.duration();
  }
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
  std::vector<double> step_seconds;     // per step: the slowest rank's time
  std::vector<double> wait_seconds;     // per step: the ranks' mean time in wait spans
  std::vector<double> compute_seconds;  // per step: the ranks' summed time in compute spans
  // --replay: per op kind (F, B, ...), the ranks' summed compute seconds per step in the pipeline, and in the
  // replay of the same op lists with nothing moving and nothing waiting.
  std::map<std::string, double> replay_pipeline_seconds, replay_seconds;
  // Threads: per (rank, op index), the seconds of wait spans per timed step (--waits reports them).
  std::map<std::pair<int, int>, double> wait_by_op;
  double progress_cpu_per_step = 0;  // MPI: the progress threads' CPU seconds per step, mean over ranks
  double cpu_per_step = 0;           // CPU seconds per step and rank (the process's, over the timed steps)
  std::string progress = "none";     // MPI: "thread" or "wait" (what MpiOptions::progress gave)
  std::vector<double> losses;        // first step, per chunk
  // --paired: per timed step, the seconds of the sequential step run just before it.
  std::vector<double> paired_sequential_seconds;
  int stages = 0;
};

template <class Schedule, class Linear>
PipelineRun run_inprocess(const std::string& dir, const Meta& m, int ranks, int warmup, int steps, int fill, bool eager,
                          const std::string& replay, const torch::Tensor& x, const torch::Tensor& l,
                          SequentialModel* paired) {
  InProcessWorld world(ranks);
  std::vector<std::unique_ptr<Rank<Schedule, Linear, InProcessCommunicator>>> rs;
  for (int r = 0; r < ranks; ++r)
    rs.push_back(std::make_unique<Rank<Schedule, Linear, InProcessCommunicator>>(world.communicator(r), dir, m, ranks,
                                                                                 r, fill, eager));
  PipelineRun out;
  out.stages = Schedule::placement(ranks, m.chunks, 0, 0).num_stages;
  out.losses.assign(m.chunks, 0.0);
  std::vector<double> rank_time(ranks);
  std::vector<StepResult> results(ranks);
  // Kept for every step, as a training loop keeps its ranks (runtime/rank_threads.hpp: a thread started per
  // step made the step 3% longer).
  RankThreads threads(ranks);
  // --replay: each rank's op list again, on its own thread, against its own copy of the stages and a
  // NullCommunicator (nothing moves, nothing waits).
  std::vector<NullCommunicator> nulls;
  std::vector<std::unique_ptr<Rank<Schedule, Linear, NullCommunicator>>> replays;
  if (!replay.empty()) {
    nulls.reserve(ranks);
    for (int r = 0; r < ranks; ++r) nulls.emplace_back(r, ranks);
    for (int r = 0; r < ranks; ++r)
      replays.push_back(std::make_unique<Rank<Schedule, Linear, NullCommunicator>>(nulls[r], dir, m, ranks, r));
  }
  double cpu_start = 0;
  for (int step = 0; step < warmup + steps; ++step) {
    // --paired: the sequential step right before, on this thread while the rank threads are not running.
    const double sequential_seconds = paired ? paired->step() : 0.0;
    if (paired && step >= warmup) out.paired_sequential_seconds.push_back(sequential_seconds);
    if (step == warmup) cpu_start = process_cpu_seconds();
    for (auto& r : rs) r->zero_grad();
    // The rank threads start the step together; each times its own.
    threads.run([&](int r) {
      const double t0 = seconds_now();
      results[r] = rs[r]->pipe->step(m.chunks, bytes_of(x), bytes_of(l));
      rank_time[r] = seconds_now() - t0;
    });
    if (step == 0)
      for (const StepResult& res : results)
        for (int c = 0; c < m.chunks; ++c)
          if (!std::isnan(res.losses[c])) out.losses[c] = res.losses[c];
    if (!replay.empty() && step >= warmup) {
      for (const StepResult& res : results) add_compute_by_kind(res, out.replay_pipeline_seconds);
      std::vector<StepResult> again(ranks);
      const bool together = replay == "together";
      for (int turn = 0; turn < (together ? 1 : ranks); ++turn)
        threads.run([&](int r) {
          if (!together && r != turn) return;
          replays[r]->zero_grad();
          again[r] = replays[r]->pipe->step(m.chunks, bytes_of(x), bytes_of(l));
        });
      for (const StepResult& res : again) add_compute_by_kind(res, out.replay_seconds);
    }
    if (step >= warmup) {
      out.step_seconds.push_back(*std::max_element(rank_time.begin(), rank_time.end()));
      double waits = 0, compute = 0;
      for (const StepResult& res : results)
        for (const Span& span : res.spans)
          if (span.lane == Span::Lane::wait) out.wait_by_op[{res.rank, span.index}] += span.duration() / steps;
      for (const StepResult& res : results) {
        waits += lane_time(res, Span::Lane::wait);
        compute += lane_time(res, Span::Lane::compute);
      }
      out.wait_seconds.push_back(waits / ranks);
      out.compute_seconds.push_back(compute);
    }
  }
  out.cpu_per_step = (process_cpu_seconds() - cpu_start) / steps / ranks;
  for (auto* by_kind : {&out.replay_pipeline_seconds, &out.replay_seconds})
    for (auto& [kind, seconds] : *by_kind) seconds /= steps;
  return out;
}

#if DUALPIPE_PEERS_MPI
/// A barrier that sleeps between tests (1 ms) instead of spinning.
void sleeping_barrier() {
  MPI_Request request = MPI_REQUEST_NULL;
  dualpipe::detail::mpi_check(MPI_Ibarrier(MPI_COMM_WORLD, &request), "MPI_Ibarrier");
  for (int done = 0;;) {
    dualpipe::detail::mpi_check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

template <class Schedule, class Linear>
PipelineRun run_mpi(const std::string& dir, const Meta& m, int ranks, int warmup, int steps, int fill, bool eager,
                    const torch::Tensor& x, const torch::Tensor& l, const MpiOptions& options,
                    SequentialModel* paired) {
  MpiCommunicator comm(MPI_COMM_WORLD, options);
  if (comm.size() != ranks)
    throw ConfigError("--ranks " + std::to_string(ranks) + " but mpirun started " + std::to_string(comm.size()) +
                      " processes");
  Rank<Schedule, Linear, MpiCommunicator> rank(comm, dir, m, ranks, comm.rank(), fill, eager);
  PipelineRun out;
  out.stages = Schedule::placement(ranks, m.chunks, 0, 0).num_stages;
  out.losses.assign(m.chunks, 0.0);
  double progress_cpu_start = 0, cpu_start = 0;
  for (int step = 0; step < warmup + steps; ++step) {
    if (paired) {
      // --paired: rank 0 runs the sequential step right before; the others sleep meanwhile, so that with more
      // ranks than cores they take no CPU from it (MPI_Barrier would spin).
      const double sequential_seconds = comm.rank() == 0 ? paired->step() : 0.0;
      if (step >= warmup && comm.rank() == 0) out.paired_sequential_seconds.push_back(sequential_seconds);
      sleeping_barrier();
    }
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
    const double mine_lanes[2] = {lane_time(res, Span::Lane::wait), lane_time(res, Span::Lane::compute)};
    double all_lanes[2] = {0, 0};
    dualpipe::detail::mpi_check(MPI_Allreduce(mine_lanes, all_lanes, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
                                "MPI_Allreduce");
    if (step >= warmup) {
      out.step_seconds.push_back(slowest);
      out.wait_seconds.push_back(all_lanes[0] / ranks);
      out.compute_seconds.push_back(all_lanes[1]);
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
  const int fill = a.values.count("fill") ? a.number("fill", 1) : 0;  // PipelineOptions::weight_fill_depth
  const std::string replay = a.text("replay", "none") == "none" ? std::string() : a.text("replay");
  if (!replay.empty() && replay != "alone" && replay != "together")
    throw ConfigError("--replay must be alone, together or none (got '" + replay + "')");
  if (a.waits && a.mpi) throw ConfigError("--waits reports the in-process ranks' waits: it cannot be used with --mpi");
  if (!replay.empty() && a.mpi)
    throw ConfigError("--replay runs on the in-process ranks: it cannot be used with --mpi");
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
  std::unique_ptr<SequentialModel> paired;
  PipelineRun run = visit_schedule(kind, [&](auto schedule) -> PipelineRun {
    using Schedule = decltype(schedule);
    Schedule::check(ranks, m.chunks);
    const int stages = Schedule::placement(ranks, m.chunks, 0, 0).num_stages;
    if (stages > m.stages)
      throw ConfigError(std::string(Schedule::name) + " on " + std::to_string(ranks) + " ranks needs " +
                        std::to_string(stages) + " stages; the data has " + std::to_string(m.stages));
    if (a.paired) paired = std::make_unique<SequentialModel>(dir, m, stages);
    auto go = [&]<class Linear>() -> PipelineRun {
#if DUALPIPE_PEERS_MPI
      if (a.mpi) {
        MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
        return run_mpi<Schedule, Linear>(dir, m, ranks, warmup, steps, fill, a.eager, x, l, mpi_options(a),
                                         paired.get());
      }
#endif
      if (a.mpi) throw ConfigError("--mpi: this dualpipe-peers was built without MPI");
      return run_inprocess<Schedule, Linear>(dir, m, ranks, warmup, steps, fill, a.eager, replay, x, l, paired.get());
    };
    return linear == "deferred" ? go.template operator()<DeferredLinear>()
                                : go.template operator()<torch::nn::Linear>();
  });
  std::string replay_json;  // --replay: "replay_ms": {"FB": [pipeline, replay], ...}, per step, ranks summed
  if (!replay.empty()) {
    replay_json = "\"replay\": \"" + replay + "\", \"replay_ms\": {";
    for (const auto& [kind, seconds] : run.replay_pipeline_seconds) {
      char item[96];
      std::snprintf(item, sizeof item, "%s\"%s\": [%.4f, %.4f]", replay_json.back() == '{' ? "" : ", ", kind.c_str(),
                    1e3 * seconds, 1e3 * run.replay_seconds[kind]);
      replay_json += item;
    }
    replay_json += "}, ";
  }
  if (a.waits) {  // --waits: "waits_ms": [[rank, op index, ms per step], ...], the ops with a wait of 10 us or more
    replay_json += "\"waits_ms\": [";
    for (const auto& [where, seconds] : run.wait_by_op) {
      if (seconds < 1e-5) continue;
      char item[64];
      std::snprintf(item, sizeof item, "%s[%d, %d, %.3f]", replay_json.back() == '[' ? "" : ", ", where.first,
                    where.second, 1e3 * seconds);
      replay_json += item;
    }
    replay_json += "], ";
  }
  if (world_rank == 0)
    std::printf(
        "result: {\"command\": \"pipeline\", \"schedule\": \"%s\", \"comm\": \"%s\", \"linear\": \"%s\", "
        "\"fill\": %d, \"eager\": %s, \"ranks\": %d, \"stages\": %d, \"chunks\": %d, \"step_ms\": %.4f, "
        "\"step_ms_all\": %s, "
        "\"wait_ms\": %.4f, \"compute_ms_all\": %s, \"cpu_ms\": %.4f, \"progress_cpu_ms\": %.4f, "
        "\"progress\": \"%s\", \"losses\": %s, \"paired_sequential_ms_all\": %s, %s%s}\n",
        std::string(schedule_name(kind)).c_str(), a.mpi ? "mpi" : "threads", linear.c_str(), fill,
        a.eager ? "true" : "false", ranks, run.stages, m.chunks, 1e3 * median(run.step_seconds),
        json_numbers(milliseconds(run.step_seconds)).c_str(), 1e3 * median(run.wait_seconds),
        json_numbers(milliseconds(run.compute_seconds)).c_str(), 1e3 * run.cpu_per_step,
        1e3 * run.progress_cpu_per_step, run.progress.c_str(), json_numbers(run.losses).c_str(),
        json_numbers(milliseconds(run.paired_sequential_seconds)).c_str(), replay_json.c_str(), context_json().c_str());
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
