// Several tensors per chunk and sizes that change per chunk (runtime/tensors.hpp): every schedule against a
// sequential run, and each bad size table seen as the same ConfigError on every rank.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dualpipe/dualpipe.hpp"
#include "row_stage.hpp"

using namespace dualpipe;
using testmodel::RowStage;

namespace {

constexpr int H = 3;
constexpr std::size_t R = 5;

struct RowData {
  std::vector<std::size_t> table;  // chunk x 2 tensors (both have the chunk's rows)
  std::vector<std::size_t> rows;   // chunk -> rows
  std::vector<double> inputs, labels;
};

RowData make_data(int chunks, unsigned seed) {
  RowData d;
  unsigned s = seed;
  auto next = [&] {
    s = s * 1103515245u + 12345u;
    return (s >> 8) & 0xffff;
  };
  for (int b = 0; b < chunks; ++b) {
    const std::size_t n = 1 + next() % R;
    d.rows.push_back(n);
    d.table.push_back(n);
    d.table.push_back(n);
    for (std::size_t i = 0; i < n * H + n; ++i) d.inputs.push_back(static_cast<double>(next() % 200) / 100.0 - 1.0);
    for (std::size_t i = 0; i < n * H; ++i) d.labels.push_back(static_cast<double>(next() % 200) / 100.0 - 1.0);
  }
  return d;
}

// Runs one training step of the RowStage model with `Schedule` on P threads; `tweak(p, sizes)` may change a
// rank's table. Returns each rank's exception message ("" when its step passed) and checks the results.
template <class Schedule>
std::vector<std::string> run_rows(int P, int C, const RowData& data, bool check,
                                  void (*tweak)(int, std::vector<std::size_t>&) = nullptr, bool with_table = true) {
  constexpr int M = Schedule::modules_per_rank;
  InProcessWorld world(P);
  const int S = Schedule::placement(P, C, 0, 0).num_stages;
  std::vector<std::vector<std::unique_ptr<RowStage>>> stages(static_cast<std::size_t>(P));
  std::vector<std::string> errors(static_cast<std::size_t>(P));
  std::vector<StepResult> results(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p)
    for (int m = 0; m < M; ++m) {
      const auto pl = Schedule::placement(P, C, p, m);
      stages[static_cast<std::size_t>(p)].push_back(std::make_unique<RowStage>(pl.stage, pl.num_chunks, H, R));
    }
  PipelineOptions opts;
  opts.timeout = std::chrono::milliseconds(20'000);
  opts.scale_loss_by_chunks = true;
  run_ranks(P, [&](int p) {
    std::array<RowStage*, M> ptrs{};
    for (int m = 0; m < M; ++m)
      ptrs[static_cast<std::size_t>(m)] = stages[static_cast<std::size_t>(p)][static_cast<std::size_t>(m)].get();
    Pipeline<Schedule, InProcessCommunicator, RowStage> pipe(world.communicator(p), ptrs, opts);
    std::vector<std::size_t> table = data.table;
    if (tweak) tweak(p, table);
    StepOptions so;
    if (with_table) so.sizes = ChunkSizes{table, 2};
    so.return_outputs = true;
    try {
      results[static_cast<std::size_t>(p)] =
          pipe.step(C, as_bytes(std::span(data.inputs)), as_bytes(std::span(data.labels)), so);
    } catch (const std::exception& e) {
      errors[static_cast<std::size_t>(p)] = e.what();
    }
  });
  if (!check) return errors;
  for (int p = 0; p < P; ++p)
    REQUIRE_MESSAGE(errors[static_cast<std::size_t>(p)].empty(), errors[static_cast<std::size_t>(p)]);
  const testmodel::RowReference ref =
      testmodel::row_reference(S, H, data.rows, data.inputs, data.labels, 1.0 / static_cast<double>(C));
  std::vector<double> losses(static_cast<std::size_t>(C), std::nan("")), dw(static_cast<std::size_t>(S), 0.0);
  std::size_t out_bytes = 0;
  for (int p = 0; p < P; ++p) {
    const StepResult& r = results[static_cast<std::size_t>(p)];
    for (int b = 0; b < C; ++b)
      if (!std::isnan(r.losses[static_cast<std::size_t>(b)]))
        losses[static_cast<std::size_t>(b)] = r.losses[static_cast<std::size_t>(b)];
    for (int b : r.output_chunks) out_bytes += data.rows[static_cast<std::size_t>(b)] * (H + 1) * sizeof(double);
    CHECK(r.outputs.size() == [&] {
      std::size_t n = 0;
      for (int b : r.output_chunks) n += data.rows[static_cast<std::size_t>(b)] * (H + 1) * sizeof(double);
      return n;
    }());
    for (const auto& st : stages[static_cast<std::size_t>(p)]) dw[static_cast<std::size_t>(st->stage)] += st->dw;
  }
  std::size_t all_rows = 0;
  for (std::size_t n : data.rows) all_rows += n;
  CHECK(out_bytes == all_rows * (H + 1) * sizeof(double));  // every chunk's output came back once, at its size
  for (int b = 0; b < C; ++b)
    CHECK(losses[static_cast<std::size_t>(b)] ==
          doctest::Approx(ref.losses[static_cast<std::size_t>(b)]).epsilon(1e-12));
  for (int s = 0; s < S; ++s)
    CHECK(dw[static_cast<std::size_t>(s)] == doctest::Approx(ref.dw[static_cast<std::size_t>(s)]).epsilon(1e-12));
  return errors;
}

template <class Schedule>
void every_size(int P, int C) {
  for (unsigned seed : {1u, 7u, 42u}) run_rows<Schedule>(P, C, make_data(C, seed), true);
}

// Every rank must see a ConfigError holding each of `words`.
void expect_everywhere(const std::vector<std::string>& errors, std::initializer_list<const char*> words) {
  for (std::size_t p = 0; p < errors.size(); ++p) {
    INFO("rank " << p << ": " << errors[p]);
    CHECK(errors[p].find("chunk sizes") != std::string::npos);
    for (const char* w : words) CHECK(errors[p].find(w) != std::string::npos);
  }
  for (std::size_t p = 1; p < errors.size(); ++p) CHECK(errors[p] == errors[0]);
}

}  // namespace

TEST_CASE("Tensors.VariableSizes.DualPipe") {
  every_size<DualPipe>(2, 4);
  every_size<DualPipe>(4, 8);
}
TEST_CASE("Tensors.VariableSizes.DualPipeV") {
  every_size<DualPipeV>(2, 4);
  every_size<DualPipeV>(3, 7);
}
TEST_CASE("Tensors.VariableSizes.OneFOneB") {
  every_size<OneFOneB>(2, 4);
  every_size<OneFOneB>(4, 8);
}
TEST_CASE("Tensors.VariableSizes.ZB1P") {
  every_size<ZB1P>(2, 4);
  every_size<ZB1P>(4, 8);
}
TEST_CASE("Tensors.VariableSizes.GPipe") { every_size<GPipe>(4, 6); }

TEST_CASE("Tensors.FixedSizesWithoutTable") {
  // No table: every chunk at its maxima, which the sequential run sees too.
  RowData full;
  for (int b = 0; b < 4; ++b) {
    full.rows.push_back(R);
    full.table.push_back(R);
    full.table.push_back(R);
  }
  full.inputs.assign(4 * (R * H + R), 0.5);
  full.labels.assign(4 * R * H, 0.25);
  run_rows<OneFOneB>(2, 4, full, true, nullptr, false);
  run_rows<DualPipe>(2, 4, full, true, nullptr, false);
}

TEST_CASE("Tensors.PlainStageRefusesATable") {
  // A stage without input_tensors() has fixed sizes: a table is a ConfigError on the rank given one.
  InProcessWorld world(1);
  struct Plain {
    void forward(const StageContext&, ConstBytes, MutableBytes) {}
    double loss(const StageContext&, ConstBytes, ConstBytes) { return 0; }
    void backward_input(const StageContext&, ConstBytes, MutableBytes) {}
    void backward_weight(const StageContext&) {}
    std::size_t input_bytes() const { return 8; }
    std::size_t output_bytes() const { return 8; }
  } st;
  Pipeline<OneFOneB, InProcessCommunicator, Plain> pipe(world.communicator(0), {&st});
  std::vector<std::byte> in(16), labels(16);
  const std::size_t rows[] = {1, 1};
  StepOptions o;
  o.sizes = ChunkSizes{rows, 1};
  CHECK_THROWS_WITH_AS(pipe.step(2, in, labels, o), doctest::Contains("fixed sizes"), ConfigError);
}

TEST_CASE("Tensors.BadTable.ChunkOverMaximum") {
  RowData d = make_data(4, 5);
  const auto errors =
      run_rows<OneFOneB>(2, 4, d, false, [](int, std::vector<std::size_t>& t) { t[2 * 2 + 1] = R + 3; });
  expect_everywhere(errors, {"chunk 2", "tensor 1", "8 rows", "5 rows"});
}

TEST_CASE("Tensors.BadTable.WrongLength") {
  RowData d = make_data(4, 5);
  const auto errors = run_rows<DualPipe>(2, 4, d, false, [](int p, std::vector<std::size_t>& t) {
    if (p == 1) t.pop_back();
  });
  expect_everywhere(errors, {"rank 1", "7 entries", "4 x 2 = 8"});
}

TEST_CASE("Tensors.BadTable.RanksDisagree") {
  RowData d = make_data(4, 5);
  // Rank 3 (the last stage only) swaps two chunks' rows: same total, so its labels still split.
  std::size_t b = 0;
  while (d.rows[b] == d.rows[b + 1]) ++b;
  static std::size_t swap_at = 0;
  swap_at = b;
  const auto errors = run_rows<ZB1P>(4, 4, d, false, [](int p, std::vector<std::size_t>& t) {
    if (p != 3) return;
    std::swap(t[2 * swap_at], t[2 * swap_at + 2]);
    std::swap(t[2 * swap_at + 1], t[2 * swap_at + 3]);
  });
  const std::string where = "chunk " + std::to_string(b) + ", tensor 0";
  const std::string want =
      std::to_string(d.rows[b]) + " rows on rank 0, " + std::to_string(d.rows[b + 1]) + " rows on rank 3";
  expect_everywhere(errors, {where.c_str(), want.c_str()});
}

TEST_CASE("Tensors.BytesList") {
  const TensorSpec specs[] = {{8, 4, true}, {4, 4, false}};
  const TensorLayout layout{std::span<const TensorSpec>(specs)};
  CHECK(layout.max_bytes() == 48);
  CHECK(layout.max_bytes(true) == 32);
  std::vector<std::byte> buf(48);
  const std::size_t rows[] = {3, 2, 1, 1};
  const ChunkSizes sizes{rows, 2};
  const MutableBytesList l = layout.split(MutableBytes(buf), sizes, 0);
  REQUIRE(l.size() == 2);
  CHECK(l[0].data() == buf.data());
  CHECK(l[0].size() == 24);
  CHECK(l[1].data() == buf.data() + 24);
  CHECK(l[1].size() == 8);
  CHECK(l.packed().size() == 32);
  const MutableBytesList g = layout.split(MutableBytes(buf), sizes, 1, true);
  CHECK(g[0].size() == 8);
  CHECK(g[1].empty());
  CHECK(g.packed().size() == 8);
}
