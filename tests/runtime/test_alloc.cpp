// After a configuration's first step, a step allocates nothing: not the executor, not the buffers, not the
// in-process communicator, not the result (step_into / eval_into reuse it). Counted with a replaced global
// operator new, on real threads.
#include <doctest/doctest.h>

#include <atomic>
#include <barrier>
#include <cstdlib>
#include <new>
#include <vector>

#include "byte_stage.hpp"
#include "dualpipe/dualpipe.hpp"
#include "row_stage.hpp"
#include "test_model.hpp"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};

void* counted(std::size_t n, std::size_t align) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  void* p =
      align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align) : std::malloc(n);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted(n, 0); }
void* operator new[](std::size_t n) { return counted(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace dualpipe;

namespace {

/// Allocations made by the second of two steps of every rank (train, then eval), on P threads.
template <class Schedule, class StageT>
long second_step_allocations(int P, int C) {
  const int S = Schedule::placement(P, C, 0, 0).num_stages;
  InProcessWorld world(P);
  std::vector<std::vector<std::unique_ptr<StageT>>> stages(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p)
    for (int m = 0; m < 2; ++m) {
      const auto pl = Schedule::placement(P, C, p, m);
      stages[static_cast<std::size_t>(p)].push_back(std::make_unique<StageT>(pl.stage, pl.num_chunks));
    }
  const testmodel::Batch batch(C, S);
  std::barrier sync(P);
  allocations = 0;
  run_ranks(P, [&](int r) {
    auto& st = stages[static_cast<std::size_t>(r)];
    Pipeline<Schedule, InProcessCommunicator, StageT> pipe(world.communicator(r), {st[0].get(), st[1].get()});
    StepResult train, eval;
    auto steps = [&] {
      pipe.step_into(train, C, batch.input_bytes(), batch.label_bytes(), {true});
      pipe.eval_into(eval, C, batch.input_bytes(), batch.label_bytes(), {true});
    };
    steps();  // the first step of each configuration builds plans and buffers
    sync.arrive_and_wait();
    if (r == 0) counting = true;
    sync.arrive_and_wait();
    steps();
    sync.arrive_and_wait();
    if (r == 0) counting = false;
    sync.arrive_and_wait();
  });
  return allocations.load();
}

/// A variable-size step (two tensors, rows per chunk from a size table, runtime/tensors.hpp): allocations made
/// by the second train + eval of every rank, whose chunks have other sizes than the first's (the largest too).
template <class Schedule>
long variable_step_allocations(int P, int C) {
  constexpr int M = Schedule::modules_per_rank;
  constexpr int H = 3;
  constexpr std::size_t R = 6;
  InProcessWorld world(P);
  std::vector<std::vector<std::unique_ptr<testmodel::RowStage>>> stages(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p)
    for (int m = 0; m < M; ++m) {
      const auto pl = Schedule::placement(P, C, p, m);
      stages[static_cast<std::size_t>(p)].push_back(
          std::make_unique<testmodel::RowStage>(pl.stage, pl.num_chunks, H, R));
    }
  struct Data {
    std::vector<std::size_t> table;
    std::vector<double> inputs, labels;
  };
  Data data[2];
  for (int d = 0; d < 2; ++d)
    for (int b = 0; b < C; ++b) {
      const std::size_t rows = d == 0 ? 1 + static_cast<std::size_t>(b) % 2 : R - static_cast<std::size_t>(b) % 3;
      data[d].table.insert(data[d].table.end(), {rows, rows});
      data[d].inputs.insert(data[d].inputs.end(), rows * (H + 1), 0.5);
      data[d].labels.insert(data[d].labels.end(), rows * H, 0.25);
    }
  std::barrier sync(P);
  allocations = 0;
  run_ranks(P, [&](int r) {
    std::array<testmodel::RowStage*, M> ptrs{};
    for (int m = 0; m < M; ++m)
      ptrs[static_cast<std::size_t>(m)] = stages[static_cast<std::size_t>(r)][static_cast<std::size_t>(m)].get();
    Pipeline<Schedule, InProcessCommunicator, testmodel::RowStage> pipe(world.communicator(r), ptrs);
    StepResult train, eval;
    auto steps = [&](const Data& d) {
      StepOptions o;
      o.return_outputs = true;
      o.sizes = ChunkSizes{d.table, 2};
      pipe.step_into(train, C, as_bytes(std::span(d.inputs)), as_bytes(std::span(d.labels)), o);
      pipe.eval_into(eval, C, as_bytes(std::span(d.inputs)), as_bytes(std::span(d.labels)), o);
    };
    steps(data[0]);  // small chunks: the buffers are sized at the maxima all the same
    sync.arrive_and_wait();
    if (r == 0) counting = true;
    sync.arrive_and_wait();
    steps(data[1]);
    sync.arrive_and_wait();
    if (r == 0) counting = false;
    sync.arrive_and_wait();
  });
  return allocations.load();
}

}  // namespace

TEST_CASE("Runtime.ZeroAllocation.VariableSizes" * doctest::timeout(120)) {
  CHECK(variable_step_allocations<DualPipe>(4, 8) == 0);
  CHECK(variable_step_allocations<DualPipeV>(2, 5) == 0);
  CHECK(variable_step_allocations<OneFOneB>(2, 4) == 0);
  CHECK(variable_step_allocations<ZB1P>(4, 6) == 0);
}

TEST_CASE("Runtime.ZeroAllocation.CounterWorks") {
  // The control: the counter sees an allocation while counting, and none otherwise.
  allocations = 0;
  counting = true;
  auto* v = new std::vector<int>(100);
  counting = false;
  delete v;
  CHECK(allocations.load() == 2);
}

TEST_CASE("Runtime.ZeroAllocation.DualPipe.4ranks.8chunks" * doctest::timeout(120)) {
  CHECK(second_step_allocations<DualPipe, testmodel::PlainStage>(4, 8) == 0);
  CHECK(second_step_allocations<DualPipe, testmodel::OverlapStage>(4, 8) == 0);
}

TEST_CASE("Runtime.ZeroAllocation.DualPipeV.3ranks.7chunks" * doctest::timeout(120)) {
  CHECK(second_step_allocations<DualPipeV, testmodel::PlainStage>(3, 7) == 0);
}

TEST_CASE("Runtime.ZeroAllocation.NullCommunicatorOneThread") {
  // Every rank's step in turn on this thread, against the null communicator (the executor alone).
  const int P = 8, C = 20;
  std::vector<NullCommunicator> comms;
  for (int r = 0; r < P; ++r) comms.emplace_back(r, P);
  std::vector<testmodel::ByteStage> stages(2 * P);
  std::vector<std::unique_ptr<Pipeline<DualPipe, NullCommunicator, testmodel::ByteStage>>> pipes;
  for (int r = 0; r < P; ++r)
    pipes.push_back(std::make_unique<Pipeline<DualPipe, NullCommunicator, testmodel::ByteStage>>(
        comms[static_cast<std::size_t>(r)],
        std::array{&stages[static_cast<std::size_t>(2 * r)], &stages[static_cast<std::size_t>(2 * r + 1)]}));
  std::vector<std::byte> in(C * 64), labels(C * 8);
  std::vector<StepResult> results(P);
  for (int round = 0; round < 2; ++round) {
    if (round == 1) {
      allocations = 0;
      counting = true;
    }
    for (int r = 0; r < P; ++r)
      pipes[static_cast<std::size_t>(r)]->step_into(results[static_cast<std::size_t>(r)], C, in, labels);
    counting = false;
  }
  CHECK(allocations.load() == 0);
}
