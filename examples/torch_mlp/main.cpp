// dualpipe-torch-mlp: the reference's example in libtorch. The model (per stage Linear(h,4h) -> GELU ->
// Linear(4h,h), no bias, MSE loss) runs on P rank threads (InProcessWorld) or P MPI processes under DualPipe or
// DualPipeV (or any schedule of the registry: the baselines too), through TorchStage, and is checked against a
// sequential libtorch run of the same model on the same data:
//   - every chunk's loss equal, bitwise (the same ops on the same numbers in the same order);
//   - every parameter's gradient (summed over the copies of its stage, as the reference does) within the
//     reference's criterion 1 - 2<x,y>/(|x|^2+|y|^2) < 1e-13, in float64, and (stricter: that criterion is
//     quadratic in the error) a relative error max|x-y|/max|y| below 1e-10, reported as max_rel_err;
//   - a forward-only step's outputs and losses equal to the sequential forward, bitwise.
// Each of the --steps steps takes a new batch, with gradients zeroed before it in both runs (no optimizer).
// As in the CPU demo's result line: loss_sum adds the last step's chunk losses in batch-chunk order, and
// grad_norm is the norm of the last step's gradient (every stage's copies summed, stage order).
// --comm mpi (mpirun -np P ... --ranks P): one rank per process (mpi_team.hpp), rank 0 checking and printing
// the same result line (comm=mpi); the checks see every rank's results, gathered (team.hpp).
#include <torch/utils.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/dualpipe.hpp"
#include "dualpipe/torch.hpp"
#include "example_cli.hpp"
#include "team.hpp"
#include "torch_mlp.hpp"
#ifdef DUALPIPE_HAS_MPI
#include "mpi_team.hpp"  // --comm mpi: one rank per process
#endif

using namespace dualpipe;
using torch_mlp::MlpStage;
using torch_mlp::RankGrads;

namespace {

constexpr const char* program = "dualpipe-torch-mlp";
std::string usage() {
  return "usage: dualpipe-torch-mlp [--schedule NAME] [--ranks P] [--chunks C] [--hidden H] [--steps N] "
         "[--variable-lengths] [--comm inproc|mpi]\n"
         "  NAME: " +
         schedule_names() +
         " (default dualpipe); defaults P=4 C=20 H=32 N=1\n"
         "  --variable-lengths: each chunk its own sequence length in [1, 16] (seeded), and the stages pass two\n"
         "  tensors (x, and a per-position column the next stage adds), through TorchTensorsStage\n"
         "  --comm: inproc (default: P rank threads) or mpi (one rank per process: mpirun -np P ... --ranks P;\n"
         "  rank 0 checks and prints)";
}

struct Args {
  ScheduleKind schedule = ScheduleKind::dualpipe;
  int ranks = 4;
  int chunks = 20;
  int hidden = 32;
  int steps = 1;
  bool variable_lengths = false;
  std::string comm = "inproc";
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << usage() << "\n";
      std::exit(0);
    }
    if (flag == "--variable-lengths") {
      a.variable_lengths = true;
      continue;
    }
    if (i + 1 >= argc) throw ConfigError("unknown option or missing value: '" + std::string(flag) + "'");
    std::string_view value = argv[++i];
    if (flag == "--schedule") a.schedule = parse_schedule_kind(value);
    else if (flag == "--ranks") a.ranks = examples::parse_integer(flag, value, 1, std::numeric_limits<int>::max());
    else if (flag == "--chunks") a.chunks = examples::parse_integer(flag, value, 1, std::numeric_limits<int>::max());
    else if (flag == "--hidden") a.hidden = examples::parse_integer(flag, value, 1, std::numeric_limits<int>::max());
    else if (flag == "--steps") a.steps = examples::parse_integer(flag, value, 1, std::numeric_limits<int>::max());
    else if (flag == "--comm") {
      if (value != "inproc" && value != "mpi")
        throw ConfigError("--comm must be inproc or mpi, got '" + std::string(value) + "'");
      a.comm = value;
    } else throw ConfigError("unknown option '" + std::string(flag) + "'");
  }
  check_config(a.schedule, a.ranks, a.chunks);  // the schedule's rules, before anything starts
  return a;
}

/// The reference's cal_diff: 1 - 2<x,y>/(|x|^2+|y|^2), 0 for two zero tensors.
double cal_diff(const torch::Tensor& x, const torch::Tensor& y) {
  const double den = (x * x + y * y).sum().item<double>();
  return den == 0 ? 0.0 : 1.0 - 2.0 * (x * y).sum().item<double>() / den;
}

/// Relative error as the CPU demo measures it: max |x - y| / max |y| (|x - y| when y is zero).
double rel_err(const torch::Tensor& x, const torch::Tensor& y) {
  const double ny = y.abs().max().item<double>(), nd = (x - y).abs().max().item<double>();
  return ny == 0 ? nd : nd / ny;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

std::string g17(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

/// Collects the first failed check, for one line on stderr.
struct Checks {
  bool ok = true;
  void expect(bool cond, const std::string& what) {
    if (!cond && ok) std::cerr << program << ": check failed: " << what << "\n";
    ok = ok && cond;
  }
};

/// Each batch chunk's loss, gathered from the ranks that computed it; checks that exactly one did.
std::vector<double> gather_losses(const std::vector<StepResult>& per_rank, int chunks, Checks& checks) {
  std::vector<double> losses(chunks, std::numeric_limits<double>::quiet_NaN());
  std::vector<int> count(chunks, 0);
  for (const StepResult& r : per_rank)
    for (int c = 0; c < chunks && c < static_cast<int>(r.losses.size()); ++c)
      if (!std::isnan(r.losses[c])) {
        losses[c] = r.losses[c];
        ++count[c];
      }
  for (int c = 0; c < chunks; ++c)
    checks.expect(count[c] == 1, "chunk " + std::to_string(c) + " has " + std::to_string(count[c]) + " losses");
  return losses;
}

/// Checks one training step's gradients: each stage's copies summed (in rank, module order) against the
/// sequential model's. Returns the sum of squares of the summed gradients (stage order, for grad_norm).
double check_grads(std::vector<MlpStage>& model, const std::vector<RankGrads>& ranks, int step, Checks& checks,
                   double& max_diff, double& max_err) {
  double norm2 = 0;
  for (int s = 0; s < static_cast<int>(model.size()); ++s) {
    auto ref_params = model[s]->parameters();
    for (std::size_t i = 0; i < ref_params.size(); ++i) {
      torch::Tensor sum = torch::zeros_like(ref_params[i]);
      int copies = 0;
      for (const RankGrads& rank : ranks)
        for (std::size_t m = 0; m < rank.stage_of.size(); ++m)
          if (rank.stage_of[m] == s) {
            ++copies;
            sum += rank.grads[m][i];
          }
      checks.expect(copies >= 1, "stage " + std::to_string(s) + " is on no rank");
      // The reference's criterion; and, stricter, the relative error: in float64 with only the order of the
      // additions differing it is ~1e-16, while the criterion (quadratic in the error) allows ~4e-7.
      const double diff = cal_diff(sum, ref_params[i].grad()), err = rel_err(sum, ref_params[i].grad());
      const std::string where = "step " + std::to_string(step) + " stage " + std::to_string(s) + " parameter " +
                                std::to_string(i) + " gradient: ";
      checks.expect(diff < 1e-13, where + "1-2<x,y>/(|x|^2+|y|^2) = " + g17(diff) + ", not below 1e-13");
      checks.expect(err < 1e-10, where + "relative error " + g17(err) + ", not below 1e-10");
      max_diff = std::max(max_diff, diff);
      max_err = std::max(max_err, err);
      norm2 += (sum * sum).sum().item<double>();
    }
  }
  for (const RankGrads& rank : ranks)
    checks.expect(rank.released, "a stage still keeps a chunk's graph after the step");
  return norm2;
}

/// Checks a forward-only step: every chunk's output returned once and equal to the sequential forward's,
/// and its loss too, bitwise.
void check_forward(const std::vector<StepResult>& eval, const torch_mlp::SequentialStep& ref, int chunks,
                   std::size_t piece, Checks& checks) {
  std::vector<double> losses = gather_losses(eval, chunks, checks);
  for (int c = 0; c < chunks; ++c)
    checks.expect(same_bits(losses[c], ref.losses[c]), "forward-only chunk " + std::to_string(c) + " loss differs");
  auto ref_out = ref.outputs.chunk(chunks);
  std::vector<int> seen(chunks, 0);
  for (const StepResult& r : eval) {
    checks.expect(r.outputs.size() == piece * r.output_chunks.size(), "forward-only outputs have the wrong size");
    for (std::size_t k = 0; k < r.output_chunks.size() && r.outputs.size() >= (k + 1) * piece; ++k) {
      const int c = r.output_chunks[k];
      checks.expect(c >= 0 && c < chunks, "forward-only output of chunk " + std::to_string(c));
      if (c < 0 || c >= chunks) continue;
      ++seen[c];
      torch::Tensor expected = ref_out[c].contiguous();
      checks.expect(std::memcmp(r.outputs.data() + k * piece, expected.data_ptr(), piece) == 0,
                    "forward-only output of chunk " + std::to_string(c) + " differs from the sequential forward");
    }
  }
  for (int c = 0; c < chunks; ++c)
    checks.expect(seen[c] == 1, "forward-only output of chunk " + std::to_string(c) + " returned " +
                                    std::to_string(seen[c]) + " times");
}

/// The result line, the same in-process and under MPI but for comm=.
void print_result(std::string_view schedule, const Args& a, double loss_sum, double norm2, double max_err, bool ok) {
  std::printf(
      "result: schedule=%s ranks=%d chunks=%d comm=%s loss_sum=%.17g grad_norm=%.17g max_rel_err=%.3g check=%s\n",
      std::string(schedule).c_str(), a.ranks, a.chunks, a.comm.c_str(), loss_sum, std::sqrt(norm2), max_err,
      ok ? "pass" : "FAIL");
}

/// `Team` (team.hpp) runs the ranks: InProcessTeam or MpiTeam. Only the process that checks prints.
template <class Schedule, template <class, class, class> class Team>
int run(const Args& a) {
  const int P = a.ranks, C = a.chunks;
  const int stages = Schedule::placement(P, C, 0, 0).num_stages;
  torch_mlp::Shape shape;
  shape.hidden = a.hidden;

  // The model, seeded as the reference's example is, and each rank's copies of its stages.
  std::vector<MlpStage> model = torch_mlp::make_model(stages, a.hidden, 233);
  Team<Schedule, torch_mlp::RankStages<Schedule>, TorchStage> team(model, shape, P, C);
  // The batches' draws start here, from their own seed: building a stage copy draws initial weights (then
  // overwritten), and an MPI process builds only its own rank's copies.
  torch::manual_seed(234);

  Checks checks;
  double loss_sum = 0, norm2 = 0, max_diff = 0, max_err = 0;
  torch_mlp::SequentialStep reference;
  torch::Tensor x, l;
  for (int k = 0; k < a.steps; ++k) {
    // A new batch each step; gradients start from zero in both runs (no optimizer: the weights stay).
    x = torch::randn(shape.batch(C), torch::kFloat64);
    l = torch::randn(shape.batch(C), torch::kFloat64);
    for (MlpStage& m : model) m->zero_grad();
    team.zero_grad();
    // The pipeline, the whole batch given to every rank.
    std::vector<StepResult> results = team.run(true, C, torch_mlp::bytes_of(x), torch_mlp::bytes_of(l), {});
    std::vector<RankGrads> grads = team.grads();
    if (!team.checks()) continue;
    // The sequential run: the whole model, chunk after chunk.
    reference = torch_mlp::sequential_step(model, x, l, C, true);

    // Losses bitwise; loss_sum is the last step's, in batch-chunk order.
    std::vector<double> losses = gather_losses(results, C, checks);
    loss_sum = 0;
    for (int c = 0; c < C; ++c) {
      checks.expect(same_bits(losses[c], reference.losses[c]), "step " + std::to_string(k) + " chunk " +
                                                                   std::to_string(c) + " loss " + g17(losses[c]) +
                                                                   " != sequential " + g17(reference.losses[c]));
      loss_sum += losses[c];
    }
    norm2 = check_grads(model, grads, k, checks, max_diff, max_err);
  }

  // Forward-only, on the last step's batch.
  StepOptions with_outputs;
  with_outputs.return_outputs = true;
  std::vector<StepResult> eval = team.run(false, C, torch_mlp::bytes_of(x), torch_mlp::bytes_of(l), with_outputs);
  if (!team.checks()) return 0;
  check_forward(eval, reference, C, team.output_bytes(), checks);

  std::printf("model: stages=%d hidden=%d micro_batch=%lld seq_len=%lld dtype=float64 steps=%d torch_threads=%d\n",
              stages, a.hidden, static_cast<long long>(shape.micro_batch), static_cast<long long>(shape.seq_len),
              a.steps, torch::get_num_threads());
  std::printf("grads: max 1-2<x,y>/(|x|^2+|y|^2) = %.3g (reference criterion: < 1e-13), max relative error %.3g\n",
              max_diff, max_err);
  print_result(Schedule::name, a, loss_sum, norm2, max_err, checks.ok);
  return checks.ok ? 0 : 1;
}

/// --variable-lengths: the same model over chunks of their own sequence lengths, two tensors per boundary
/// (TorchTensorsStage), against the sequential run of the same chunks; losses and returned outputs bitwise.
template <class Schedule, template <class, class, class> class Team>
int run_variable(const Args& a) {
  const int P = a.ranks, C = a.chunks;
  const int stages = Schedule::placement(P, C, 0, 0).num_stages;
  torch_mlp::Shape shape;
  shape.hidden = a.hidden;
  std::vector<MlpStage> model = torch_mlp::make_model(stages, a.hidden, 233);
  Team<Schedule, torch_mlp::VarRankStages<Schedule>, TorchTensorsStage> team(model, shape, P, C);
  // The batches' draws start here, from their own seed: building a stage copy draws initial weights (then
  // overwritten), and an MPI process builds only its own rank's copies.
  torch::manual_seed(234);

  Checks checks;
  double loss_sum = 0, norm2 = 0, max_diff = 0, max_err = 0;
  std::uint64_t lcg = 233;
  std::vector<torch_mlp::VarChunk> batch;
  std::vector<std::byte> inputs, labels;
  std::vector<std::size_t> table;
  torch_mlp::SequentialStep reference;
  auto append = [](std::vector<std::byte>& to, const torch::Tensor& t) {
    const dualpipe::ConstBytes b = torch_mlp::bytes_of(t);
    to.insert(to.end(), b.begin(), b.end());
  };
  for (int k = 0; k < a.steps; ++k) {
    batch.clear();
    inputs.clear();
    labels.clear();
    table.clear();
    for (int c = 0; c < C; ++c) {
      lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
      torch_mlp::VarChunk ch;
      ch.seq = 1 + static_cast<std::int64_t>((lcg >> 33) % static_cast<std::uint64_t>(shape.seq_len));
      ch.x = torch::randn({shape.micro_batch, ch.seq, shape.hidden}, torch::kFloat64);
      ch.a = torch::randn({shape.micro_batch, ch.seq}, torch::kFloat64);
      ch.labels = torch::randn({shape.micro_batch, ch.seq, shape.hidden}, torch::kFloat64);
      append(inputs, ch.x);
      append(inputs, ch.a);
      append(labels, ch.labels);
      table.insert(table.end(), {static_cast<std::size_t>(ch.seq), static_cast<std::size_t>(ch.seq)});
      batch.push_back(std::move(ch));
    }
    for (MlpStage& m : model) m->zero_grad();
    team.zero_grad();
    StepOptions o;
    o.sizes = ChunkSizes{table, 2};
    std::vector<StepResult> results = team.run(true, C, inputs, labels, o);
    std::vector<RankGrads> grads = team.grads();
    if (!team.checks()) continue;
    reference = torch_mlp::sequential_variable_step(model, batch, true);
    std::vector<double> losses = gather_losses(results, C, checks);
    loss_sum = 0;
    for (int c = 0; c < C; ++c) {
      checks.expect(same_bits(losses[c], reference.losses[c]), "step " + std::to_string(k) + " chunk " +
                                                                   std::to_string(c) + " loss " + g17(losses[c]) +
                                                                   " != sequential " + g17(reference.losses[c]));
      loss_sum += losses[c];
    }
    norm2 = check_grads(model, grads, k, checks, max_diff, max_err);
  }

  // Forward-only on the last batch: every chunk's returned x equal to the sequential forward's, bitwise.
  StepOptions o;
  o.sizes = ChunkSizes{table, 2};
  o.return_outputs = true;
  std::vector<StepResult> eval = team.run(false, C, inputs, labels, o);
  if (!team.checks()) return 0;
  std::vector<int> seen(C, 0);
  for (const StepResult& r : eval) {
    std::size_t at = 0;
    for (int c : r.output_chunks) {
      const torch_mlp::VarChunk& ch = batch[c];
      const std::size_t x_bytes = static_cast<std::size_t>(shape.micro_batch * ch.seq * shape.hidden) * sizeof(double);
      const std::size_t piece = x_bytes + static_cast<std::size_t>(shape.micro_batch * ch.seq) * sizeof(double);
      ++seen[c];
      const bool fits = at + piece <= r.outputs.size();
      checks.expect(fits, "forward-only outputs are too short");
      if (fits) {
        std::vector<torch::Tensor> xa{ch.x, ch.a};
        {
          torch::NoGradGuard no_grad;
          for (MlpStage& stage : model) xa = torch_mlp::aux_forward(*stage, xa);
        }
        const torch::Tensor want = xa[0].contiguous();
        checks.expect(std::memcmp(r.outputs.data() + at, want.data_ptr(), x_bytes) == 0,
                      "forward-only output of chunk " + std::to_string(c) + " differs from the sequential forward");
      }
      at += piece;
    }
    checks.expect(at == r.outputs.size(), "forward-only outputs have the wrong size");
  }
  for (int c = 0; c < C; ++c)
    checks.expect(seen[c] == 1, "forward-only output of chunk " + std::to_string(c) + " returned " +
                                    std::to_string(seen[c]) + " times");

  std::printf(
      "model: stages=%d hidden=%d micro_batch=%lld seq_len=1..%lld (per chunk) dtype=float64 steps=%d "
      "tensors=2\n",
      stages, a.hidden, static_cast<long long>(shape.micro_batch), static_cast<long long>(shape.seq_len), a.steps);
  std::printf("grads: max 1-2<x,y>/(|x|^2+|y|^2) = %.3g (reference criterion: < 1e-13), max relative error %.3g\n",
              max_diff, max_err);
  print_result(Schedule::name, a, loss_sum, norm2, max_err, checks.ok);
  return checks.ok ? 0 : 1;
}

/// Runs the schedule with the team --comm names.
template <class Schedule>
int run_with(const Args& a) {
  if (a.comm == "inproc")
    return a.variable_lengths ? run_variable<Schedule, torch_mlp::InProcessTeam>(a)
                              : run<Schedule, torch_mlp::InProcessTeam>(a);
#ifdef DUALPIPE_HAS_MPI
  return a.variable_lengths ? run_variable<Schedule, torch_mlp::MpiTeam>(a) : run<Schedule, torch_mlp::MpiTeam>(a);
#else
  throw ConfigError("--comm mpi: this dualpipe-torch-mlp was built without MPI");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = parse_args(argc, argv);
#ifndef DUALPIPE_HAS_MPI
    if (args.comm == "mpi")
      throw ConfigError(
          "--comm mpi: this dualpipe-torch-mlp was built without MPI (configure with an MPI installed and "
          "DUALPIPE_ENABLE_MPI=ON)");
#endif
  } catch (const std::exception& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 2;
  }
#ifdef DUALPIPE_HAS_MPI
  // With --comm mpi: MPI lives for the rest of main (finalized at return); only rank 0 prints.
  std::optional<MpiSession> mpi_session;
  int world_rank = 0;
  if (args.comm == "mpi") {
    mpi_session.emplace();
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  }
  const bool prints = world_rank == 0;
#else
  const bool prints = true;
#endif
  // One intra-op thread: the P rank threads are the parallelism (and one thread keeps reductions in one order).
  torch::set_num_threads(1);
  dualpipe::set_blas_threads(1);  // OpenBLAS's own threads: at::set_num_threads does not reach them
  if (prints) std::printf("%s\n", dualpipe::describe_blas(dualpipe::loaded_blas()).c_str());
  try {
    return visit_schedule(args.schedule, [&](auto schedule) { return run_with<decltype(schedule)>(args); });
  } catch (const ConfigError& e) {
    // Found before anything was sent (on every process under MPI: the job's size, the MPI tag bound).
    if (prints) std::cerr << program << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 1;
  }
}
