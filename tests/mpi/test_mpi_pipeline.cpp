// Pipeline<Schedule, MpiCommunicator, Stage> with one rank per process: a step's losses, summed weight
// gradients and outputs equal a sequential run of the same model (to rounding) and the in-process run of the
// same pipeline (bit for bit: the same ops on the same numbers in the same order). Every process runs its
// own pipeline rank; rank 0 gathers what every rank computed and runs the in-process pipeline and the
// sequential model itself to compare.
#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "dualpipe/dualpipe.hpp"
#include "dualpipe/mpi.hpp"
#include "harness.hpp"    // tests/runtime: the test model, the in-process harness, the sequential run
#include "row_stage.hpp"  // tests/runtime: a two-tensor stage with rows per chunk

using namespace dualpipe;
using namespace testmodel;

TYPE_TO_STRING(DualPipe);
TYPE_TO_STRING(DualPipeV);
TYPE_TO_STRING(OneFOneB);
TYPE_TO_STRING(ZB1P);

namespace {

constexpr double tolerance = 1e-12;

/// What one process computed in a step, flattened into doubles for MpiCommunicator::gather.
struct RankRecord {
  int pipeline_rank = 0;
  std::vector<double> losses;              // size C
  std::vector<int> stages;                 // per module
  std::vector<std::vector<double>> grads;  // per module: grad_w then grad_b
  std::vector<int> output_chunks;
  std::vector<double> outputs;

  [[nodiscard]] std::vector<std::byte> bytes() const {
    std::vector<double> v{static_cast<double>(pipeline_rank), static_cast<double>(losses.size())};
    v.insert(v.end(), losses.begin(), losses.end());
    v.push_back(static_cast<double>(stages.size()));
    for (std::size_t m = 0; m < stages.size(); ++m) {
      v.push_back(stages[m]);
      v.push_back(static_cast<double>(grads[m].size()));
      v.insert(v.end(), grads[m].begin(), grads[m].end());
    }
    v.push_back(static_cast<double>(output_chunks.size()));
    for (int c : output_chunks) v.push_back(c);
    v.push_back(static_cast<double>(outputs.size()));
    v.insert(v.end(), outputs.begin(), outputs.end());
    std::vector<std::byte> out(v.size() * sizeof(double));
    std::memcpy(out.data(), v.data(), out.size());
    return out;
  }

  static RankRecord from(const std::vector<std::byte>& bytes) {
    std::vector<double> v(bytes.size() / sizeof(double));
    std::memcpy(v.data(), bytes.data(), v.size() * sizeof(double));
    std::size_t at = 0;
    auto next = [&] { return v.at(at++); };
    auto take = [&](std::size_t n) {
      REQUIRE(at + n <= v.size());
      std::vector<double> out(v.begin() + static_cast<std::ptrdiff_t>(at),
                              v.begin() + static_cast<std::ptrdiff_t>(at + n));
      at += n;
      return out;
    };
    RankRecord r;
    r.pipeline_rank = static_cast<int>(next());
    r.losses = take(static_cast<std::size_t>(next()));
    const auto modules = static_cast<std::size_t>(next());
    for (std::size_t m = 0; m < modules; ++m) {
      r.stages.push_back(static_cast<int>(next()));
      r.grads.push_back(take(static_cast<std::size_t>(next())));
    }
    const auto n_chunks = static_cast<std::size_t>(next());
    for (std::size_t i = 0; i < n_chunks; ++i) r.output_chunks.push_back(static_cast<int>(next()));
    r.outputs = take(static_cast<std::size_t>(next()));
    CHECK(at == v.size());
    return r;
  }
};

/// Runs `steps` steps of Schedule on every process and checks them on rank 0 against the in-process run
/// and the sequential model.
template <class Schedule, class StageT>
void check_under_mpi(MpiCommunicator& comm, int C, PipelineOptions options, Mode mode, int steps = 2) {
  constexpr int M = Schedule::modules_per_rank;
  const int P = comm.size();
  const int S = Schedule::placement(P, C, 0, 0).num_stages;
  const int p =
      options.rank_mapping.empty() ? comm.rank() : options.rank_mapping[static_cast<std::size_t>(comm.rank())];
  CAPTURE(P);
  CAPTURE(C);
  CAPTURE(mode);
  comm.check_chunks(C);
  const Batch batch(C, S);
  std::vector<std::unique_ptr<StageT>> stages;
  std::array<StageT*, M> ptrs{};
  bool first = false, last = false;
  for (int m = 0; m < M; ++m) {
    const ModulePlacement pl = Schedule::placement(P, C, p, m);
    stages.push_back(std::make_unique<StageT>(pl.stage, pl.num_chunks));
    ptrs[static_cast<std::size_t>(m)] = stages.back().get();
    first = first || pl.is_first_stage();
    last = last || pl.is_last_stage();
  }
  options.timeout = std::chrono::milliseconds(30'000);
  Pipeline<Schedule, MpiCommunicator, StageT> pipe(comm, ptrs, options);
  CHECK(pipe.rank() == p);

  // The reference runs, on rank 0 only.
  std::unique_ptr<Harness<Schedule, StageT>> inproc;
  std::unique_ptr<Sequential> seq;
  if (comm.rank() == 0) {
    inproc = std::make_unique<Harness<Schedule, StageT>>(P, C, options);
    seq = std::make_unique<Sequential>(S, C, batch, options.scale_loss_by_chunks ? 1.0 / C : 1.0, mode == Mode::train);
  }

  for (int step = 0; step < steps; ++step) {
    CAPTURE(step);
    for (auto& s : stages) s->zero_grad();
    const ConstBytes in = first ? batch.input_bytes() : ConstBytes{};
    const ConstBytes lab = last ? batch.label_bytes() : ConstBytes{};
    const StepResult res = mode == Mode::train ? pipe.step(C, in, lab, {.return_outputs = true})
                                               : pipe.eval(C, in, lab, {.return_outputs = true});
    CHECK(res.rank == p);
    RankRecord mine;
    mine.pipeline_rank = p;
    mine.losses = res.losses;
    for (auto& s : stages) {
      mine.stages.push_back(Schedule::placement(P, C, p, static_cast<int>(&s - stages.data())).stage);
      std::vector<double> g = s->grad_w();
      g.insert(g.end(), s->grad_b().begin(), s->grad_b().end());
      mine.grads.push_back(std::move(g));
    }
    mine.output_chunks = res.output_chunks;
    const auto outs = as_doubles(ConstBytes(res.outputs));
    mine.outputs.assign(outs.begin(), outs.end());

    const auto gathered = comm.gather(mine.bytes(), 0);
    if (comm.rank() != 0) continue;

    // Records by pipeline rank, and StepResults rebuilt from them for the harness's helpers.
    std::vector<RankRecord> by_rank(static_cast<std::size_t>(P));
    std::vector<StepResult> results(static_cast<std::size_t>(P));
    for (const auto& bytes : gathered) {
      RankRecord r = RankRecord::from(bytes);
      const auto at = static_cast<std::size_t>(r.pipeline_rank);
      results[at].losses = r.losses;
      results[at].output_chunks = r.output_chunks;
      results[at].outputs.resize(r.outputs.size() * sizeof(double));
      std::memcpy(results[at].outputs.data(), r.outputs.data(), results[at].outputs.size());
      by_rank[at] = std::move(r);
    }
    inproc->zero_grad();
    const auto ref = inproc->step(mode, /*return_outputs=*/true);

    const std::vector<double> losses = inproc->losses(results);
    const std::vector<double> ref_losses = inproc->losses(ref);
    CHECK(rel_err(losses, seq->losses) <= tolerance);
    CHECK(std::memcmp(losses.data(), ref_losses.data(), losses.size() * sizeof(double)) == 0);  // bit for bit

    const std::vector<double> outputs = inproc->outputs(results);
    CHECK(rel_err(outputs, seq->outputs) <= tolerance);
    CHECK(outputs == inproc->outputs(ref));

    if (mode != Mode::train) continue;
    for (int s = 0; s < S; ++s) {
      CAPTURE(s);
      // Summed in the harness's order (pipeline rank, then module), so the sum matches it bit for bit.
      std::vector<double> g;
      for (int r = 0; r < P; ++r)
        for (int m = 0; m < M; ++m) {
          const RankRecord& rec = by_rank[static_cast<std::size_t>(r)];
          if (rec.stages[static_cast<std::size_t>(m)] != s) continue;
          const auto& mg = rec.grads[static_cast<std::size_t>(m)];
          if (g.empty()) g.assign(mg.size(), 0.0);
          for (std::size_t k = 0; k < g.size(); ++k) g[k] += mg[k];
        }
      std::vector<double> expected = seq->layers[static_cast<std::size_t>(s)].grad_w();
      const auto& gb = seq->layers[static_cast<std::size_t>(s)].grad_b();
      expected.insert(expected.end(), gb.begin(), gb.end());
      CHECK(rel_err(g, expected) <= tolerance);
      const std::vector<double> ref_g = inproc->grad(s);
      REQUIRE(g.size() == ref_g.size());
      CHECK(std::memcmp(g.data(), ref_g.data(), g.size() * sizeof(double)) == 0);  // bit for bit
    }
  }
}

/// The chunk counts of a small grid that Schedule accepts on P ranks.
template <class Schedule>
std::vector<int> chunk_counts(int P) {
  std::vector<int> out;
  for (int C : {P, 2 * P, 2 * P + 2, 3 * P + 1}) {
    try {
      Schedule::check(P, C);
    } catch (const ConfigError&) {
      continue;
    }
    if (std::find(out.begin(), out.end(), C) == out.end()) out.push_back(C);
  }
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("Mpi.Pipeline.TrainStepEqualsSequentialAndInProcess", Schedule, DualPipe, DualPipeV, OneFOneB,
                   ZB1P) {
  MpiCommunicator comm;
  const auto counts = chunk_counts<Schedule>(comm.size());
  REQUIRE_FALSE(counts.empty());
  for (int C : counts) {
    PipelineOptions o;
    o.scale_loss_by_chunks = true;
    check_under_mpi<Schedule, OverlapStage>(comm, C, o, Mode::train);
  }
  // The other stage flavours (no overlap hook; fused backward only) on one chunk count.
  check_under_mpi<Schedule, PlainStage>(comm, counts.back(), {}, Mode::train, 1);
  check_under_mpi<Schedule, FusedStage>(comm, counts.back(), {}, Mode::train, 1);
}

TEST_CASE_TEMPLATE("Mpi.Pipeline.WeightFill", Schedule, DualPipe, DualPipeV) {
  // PipelineOptions::weight_fill_depth over MPI (MpiCommitGroup::ready() polls the group): the same
  // losses, outputs and gradients as the in-process run with the same option and the sequential model.
  MpiCommunicator comm;
  PipelineOptions o;
  o.weight_fill_depth = 2;
  const int C = chunk_counts<Schedule>(comm.size()).back();
  check_under_mpi<Schedule, PlainStage>(comm, C, o, Mode::train);
  check_under_mpi<Schedule, FusedStage>(comm, C, o, Mode::train, 1);
}

TEST_CASE_TEMPLATE("Mpi.Pipeline.EagerTransfers", Schedule, DualPipe, DualPipeV) {
  // PipelineOptions::eager_transfers over MPI (a send starts when posted; MpiCommitGroup::wait_receive waits
  // for an FB's forward input alone): the same losses, outputs and gradients as the in-process run with the
  // same option and the sequential model.
  MpiCommunicator comm;
  PipelineOptions o;
  o.eager_transfers = true;
  const int C = chunk_counts<Schedule>(comm.size()).back();
  check_under_mpi<Schedule, PlainStage>(comm, C, o, Mode::train);
  check_under_mpi<Schedule, FusedStage>(comm, C, o, Mode::train, 1);
}

TEST_CASE_TEMPLATE("Mpi.Pipeline.ForwardOnly", Schedule, DualPipe, DualPipeV) {
  MpiCommunicator comm;
  check_under_mpi<Schedule, PlainStage>(comm, chunk_counts<Schedule>(comm.size()).back(), {}, Mode::forward, 1);
}

TEST_CASE("Mpi.Pipeline.RankMapping") {
  // Pipeline rank p runs on process P-1-p: messages follow the mapping, results do not change.
  MpiCommunicator comm;
  PipelineOptions o;
  for (int c = 0; c < comm.size(); ++c) o.rank_mapping.push_back(comm.size() - 1 - c);
  check_under_mpi<DualPipe, OverlapStage>(comm, 2 * comm.size(), o, Mode::train, 1);
}

TEST_CASE("Mpi.Pipeline.BadSizeTablesAreTheSameConfigErrorOnEveryRank") {
  // Chunks of their own sizes (runtime/tensors.hpp): a table that disagrees between ranks, then one with a
  // chunk over the stages' maximum, each seen as the same ConfigError on every process, none left waiting;
  // then a good table runs.
  MpiCommunicator comm;
  const int P = comm.size(), C = 2 * P;
  constexpr std::size_t R = 4;
  const ModulePlacement pl = OneFOneB::placement(P, C, comm.rank(), 0);
  RowStage stage(pl.stage, pl.num_chunks, 3, R);
  PipelineOptions o;
  o.timeout = std::chrono::milliseconds(20'000);
  Pipeline<OneFOneB, MpiCommunicator, RowStage> pipe(comm, {&stage}, o);
  std::vector<std::size_t> table;
  std::vector<double> inputs, labels;
  for (int b = 0; b < C; ++b) {
    const std::size_t rows = 1 + static_cast<std::size_t>(b) % R;
    table.insert(table.end(), {rows, rows});
    inputs.insert(inputs.end(), rows * 4, 0.5);
    labels.insert(labels.end(), rows * 3, 0.25);
  }
  auto step_with = [&](std::vector<std::size_t> t) -> std::string {
    StepOptions so;
    so.sizes = ChunkSizes{t, 2};
    try {
      (void)pipe.step(C, std::as_bytes(std::span(inputs)), std::as_bytes(std::span(labels)), so);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return {};
  };
  std::vector<std::size_t> other = table;
  if (comm.rank() == P - 1) std::swap(other[0], other[2]), std::swap(other[1], other[3]);  // chunks 0 and 1
  const std::string disagree = step_with(other);
  CHECK(disagree.find("the ranks' tables differ at chunk 0, tensor 0: 1 rows on rank 0, 2 rows on rank " +
                      std::to_string(P - 1)) != std::string::npos);
  std::vector<std::size_t> big = table;
  big[2 * 1 + 1] = R + 2;  // chunk 1, tensor 1: 6 rows, the maximum is 4
  const std::string too_large = step_with(big);
  CHECK(too_large.find("chunk 1, tensor 1 has 6 rows, more than the 4 rows") != std::string::npos);
  CHECK(step_with(table).empty());
}
