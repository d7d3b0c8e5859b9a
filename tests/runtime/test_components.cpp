// The runtime's parts on their own: weight FIFO, chunk pools and buffers, plans, scatter/gather, recorder.
#include <doctest/doctest.h>

#include <numeric>
#include <string>
#include <vector>

#include "byte_stage.hpp"
#include "dualpipe/dualpipe.hpp"
#include "support/messages.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;
using testmodel::ByteStage;

TEST_CASE("Runtime.WeightFifo.OrderAndGroups") {
  WeightFifo fifo(3);
  CHECK(fifo.capacity() == 3);
  CHECK(fifo.empty());
  fifo.push({0, 1});
  fifo.push({1, 0});
  CHECK(fifo.pop() == WeightGroup{0, 1});
  fifo.push({0, 2});
  fifo.push({1, 1});  // wraps around the ring
  CHECK(fifo.size() == 3);
  CHECK(fifo.peak() == 3);
  CHECK(fifo.front() == WeightGroup{1, 0});
  CHECK(fifo.pop() == WeightGroup{1, 0});
  CHECK(fifo.pop() == WeightGroup{0, 2});
  CHECK(fifo.pop() == WeightGroup{1, 1});
  CHECK(fifo.empty());
}

TEST_CASE("Runtime.WeightFifo.Errors") {
  WeightFifo fifo(1);
  const std::string empty = error_message([&] { (void)fifo.pop(Op::W(), 17); });
  CHECK(contains(empty, "W (op 17) pops an empty FIFO"));
  fifo.push({0, 0}, Op::Bw(0, 0));
  const std::string full = error_message([&] { fifo.push({1, 3}, Op::Bw(1, 3)); });
  CHECK(contains(full, "B1.3w pushes onto a full FIFO (capacity 1)"));
  CHECK(contains(error_message([&] { fifo.set_capacity(4); }), "holding 1 groups"));
  fifo.clear();
  CHECK(fifo.empty());
  CHECK(fifo.peak() == 0);
  fifo.set_capacity(4);
  CHECK(fifo.capacity() == 4);
}

TEST_CASE("Runtime.WeightFifo.DepthOfTheSchedules") {
  // The FIFO is sized from the op list; every W of every rank must find a group, and none may be left.
  for (int P : {2, 4, 8})
    for (int r = 0; r < P; ++r) {
      RankPlan plan = make_rank_plan<DualPipe>(P, 2 * P + 2, r, Mode::train);
      Executor<NullCommunicator, ByteStage, 2>::size_plan(plan);
      int depth = 0, peak = 0, deferred = 0;
      for (const Op& op : plan.ops) {
        if (op.kind == OpKind::backward_input) peak = std::max(peak, ++depth), ++deferred;
        if (op.kind == OpKind::weight) REQUIRE(--depth >= 0);
      }
      CHECK(depth == 0);
      CHECK(plan.weight_fifo_capacity == static_cast<std::size_t>(peak));
      CHECK(deferred > 0);
    }
}

TEST_CASE("Runtime.ChunkPool.LendAndReturn") {
  ChunkPool pool("test", 2, 24, 5);
  CHECK(pool.capacity() == 2);
  const MutableBytes a = pool.acquire(3);
  CHECK(a.size() == 24);
  CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % ChunkPool::alignment == 0);
  const MutableBytes b = pool.acquire(0);
  CHECK(a.data() != b.data());
  CHECK(pool.get(3).data() == a.data());
  CHECK(pool.in_use() == 2);
  CHECK(contains(error_message([&] { (void)pool.acquire(1); }), "no free buffer for chunk 1 (all 2 in use)"));
  CHECK(contains(error_message([&] { (void)pool.acquire(3); }), "chunk 3 already holds a buffer"));
  pool.release(3);
  CHECK(!pool.holds(3));
  CHECK(pool.acquire(4).data() == a.data());  // the freed slot is reused
  CHECK(contains(error_message([&] { pool.release(2); }), "release of chunk 2 which holds no buffer"));
  CHECK(contains(error_message([&] { (void)pool.get(1); }), "chunk 1 holds no buffer"));
  CHECK(contains(error_message([&] { (void)pool.acquire(5); }), "outside [0, 5)"));
  CHECK(pool.peak() == 2);
  pool.reset();
  CHECK(pool.in_use() == 0);
  CHECK(pool.peak() == 0);
}

TEST_CASE("Runtime.ChunkBuffers.LocalHandOff") {
  // DualPipeV on one rank: module 1's input is module 0's output buffer, module 0's output gradient is
  // module 1's input gradient buffer; nothing is copied and nothing outlives the chunk.
  std::vector<ModuleBuffersSpec> specs;
  for (int m = 0; m < 2; ++m) specs.push_back({DualPipeV::placement(1, 2, 0, m), 16, 16, {1, 1, 1, 1}});
  ChunkBuffers buf(Mode::train, specs, 4);
  CHECK(buf.forward_input(0, 0).empty());  // first stage: the batch
  const MutableBytes out0 = buf.forward_output(0, 0);
  buf.after_forward(0, 0);
  CHECK(buf.forward_input(1, 0).data() == out0.data());
  const MutableBytes out1 = buf.forward_output(1, 0);
  CHECK(out1.data() != out0.data());
  buf.after_forward(1, 0);  // last stage: the output is given back at once
  CHECK(buf.in_use() == 1);
  CHECK(buf.backward_output_grad(1, 0).empty());  // last stage: starts from the loss
  const MutableBytes ig1 = buf.backward_input_grad(1, 0);
  buf.after_backward(1, 0);  // gives back module 0's output (module 1's input)
  CHECK(buf.backward_output_grad(0, 0).data() == ig1.data());
  CHECK(buf.backward_input_grad(0, 0).empty());  // first stage
  buf.after_backward(0, 0);
  CHECK(buf.in_use() == 0);
  CHECK(buf.peak() == 2);
  CHECK_NOTHROW(buf.check_all_free());
}

TEST_CASE("Runtime.ChunkBuffers.SendsWaitForTheCommit") {
  std::vector<ModuleBuffersSpec> specs;
  for (int m = 0; m < 2; ++m) specs.push_back({DualPipe::placement(2, 4, 0, m), 8, 8, {2, 2, 2, 2}});
  ChunkBuffers buf(Mode::train, specs, 1);
  (void)buf.forward_output(0, 0);
  buf.after_forward(0, 0);
  (void)buf.send_output(0, 0);
  CHECK(buf.in_use() == 1);
  CHECK(contains(error_message([&] { buf.check_all_free(); }), "module 0 output activations (1)"));
  (void)buf.forward_output(0, 1);
  CHECK(contains(error_message([&] { (void)buf.send_output(0, 1); }), "more than 1 sends before one commit"));
  buf.after_commit();
  CHECK(buf.in_use() == 1);  // chunk 1's output was never sent
  buf.reset();
  CHECK(buf.in_use() == 0);
}

TEST_CASE("Runtime.Plan.CapacitiesAndOutputs") {
  for (int P : {2, 4, 8}) {
    const int C = 2 * P + 4;
    for (int r = 0; r < P; ++r) {
      for (Mode mode : {Mode::train, Mode::forward}) {
        RankPlan plan = make_rank_plan<DualPipe>(P, C, r, mode);
        Executor<NullCommunicator, ByteStage, 2>::size_plan(plan);
        CHECK(plan.compute_ops + plan.post_ops + plan.commit_ops == plan.ops.size());
        for (int m = 0; m < 2; ++m) {
          const auto& cap = plan.capacity[static_cast<std::size_t>(m)];
          for (std::size_t k = 0; k < 4; ++k) CHECK(cap[k] <= static_cast<std::size_t>(C / 2));
          // Output activations are always needed; received inputs wherever the module is not a first stage.
          CHECK(cap[static_cast<std::size_t>(BufferKind::output)] >= 1);
          CHECK((cap[static_cast<std::size_t>(BufferKind::input)] >= 1) ==
                !plan.placements[static_cast<std::size_t>(m)].is_first_stage());
          if (mode == Mode::forward) {
            CHECK(cap[static_cast<std::size_t>(BufferKind::output_grad)] == 0);
            CHECK(cap[static_cast<std::size_t>(BufferKind::input_grad)] == 0);
          }
        }
        // DualPipe: rank 0 ends direction 1 (batch chunks C/2..C-1), rank P-1 ends direction 0.
        std::vector<int> expected;
        if (r == 0)
          for (int b = C / 2; b < C; ++b) expected.push_back(b);
        if (r == P - 1)
          for (int b = 0; b < C / 2; ++b) expected.push_back(b);
        CHECK(plan.output_chunks == expected);
      }
    }
  }
}

TEST_CASE("Runtime.Scatter.RoundTripAnyDim") {
  // A 3 x 4 x 2 tensor of int32, split along each dimension in turn.
  const std::vector<std::size_t> shape{3, 4, 2};
  std::vector<int> t(24);
  std::iota(t.begin(), t.end(), 0);
  const ConstBytes bytes = std::as_bytes(std::span(t));
  auto at = [&](std::size_t i, std::size_t j, std::size_t k) { return t[(i * 4 + j) * 2 + k]; };

  // Dimension 1 into 2 chunks: chunk c holds rows j in [2c, 2c+2), shape 3 x 2 x 2.
  const auto s1 = scatter(bytes, shape, sizeof(int), 1, 2);
  const auto* v = reinterpret_cast<const int*>(s1.data());
  for (std::size_t c = 0; c < 2; ++c)
    for (std::size_t i = 0; i < 3; ++i)
      for (std::size_t j = 0; j < 2; ++j)
        for (std::size_t k = 0; k < 2; ++k) CHECK(v[c * 12 + (i * 2 + j) * 2 + k] == at(i, 2 * c + j, k));
  CHECK(gather(s1, shape, sizeof(int), 1, 2) == std::vector<std::byte>(bytes.begin(), bytes.end()));

  // Dimension 0 into 3 chunks is the identity; the last dimension (-1) into 2 chunks interleaves.
  const auto s0 = scatter(bytes, shape, sizeof(int), 0, 3);
  CHECK(s0 == std::vector<std::byte>(bytes.begin(), bytes.end()));
  const auto s2 = scatter(bytes, shape, sizeof(int), -1, 2);
  v = reinterpret_cast<const int*>(s2.data());
  for (std::size_t c = 0; c < 2; ++c)
    for (std::size_t i = 0; i < 3; ++i)
      for (std::size_t j = 0; j < 4; ++j) CHECK(v[c * 12 + i * 4 + j] == at(i, j, c));
  CHECK(gather(s2, shape, sizeof(int), 2, 2) == std::vector<std::byte>(bytes.begin(), bytes.end()));
}

TEST_CASE("Runtime.Scatter.Errors") {
  const std::vector<std::size_t> shape{3, 4};
  std::vector<std::byte> t(12 * 4);
  CHECK(contains(error_message([&] { (void)scatter(t, shape, 4, 0, 2); }), "3 rows, not a multiple of chunks=2"));
  CHECK(contains(error_message([&] { (void)scatter(t, shape, 4, 2, 2); }), "batch_dim 2 is outside"));
  CHECK(contains(error_message([&] { (void)scatter(ConstBytes(t).first(40), shape, 4, 1, 2); }),
                 "must have 48 bytes, got 40"));
  std::vector<std::byte> out(40);
  CHECK(contains(error_message([&] { scatter(t, shape, 4, 1, 2, out); }), "the output must have 48 bytes"));
  CHECK(contains(error_message([&] { (void)gather(t, shape, 4, 1, 0); }), "chunks must be at least 1"));
}

TEST_CASE("Runtime.Recorder.MergeTimelines") {
  StepResult a, b;
  a.rank = 1;
  b.rank = 0;
  a.chunks = b.chunks = 2;
  a.clock_start = 10.5;
  b.clock_start = 10.0;
  a.spans = {Span{Op::F(0, 0), 0.0, 1.0, Span::Lane::compute, 0}, Span{Op::commit_op(), 1.0, 2.0, Span::Lane::wait, 1}};
  b.spans = {Span{Op::F(0, 0), 0.0, 2.0, Span::Lane::compute, 0}};
  const Timeline t = merge_timelines("dualpipe", 2, Mode::train, {a, b});
  CHECK(t.ranks == 2);
  CHECK(t.time_unit == "s");
  REQUIRE(t.spans[1].size() == 2);
  CHECK(t.spans[1][0].start == doctest::Approx(0.5));  // rank 1 started 0.5 s after rank 0
  CHECK(t.spans[1][1].end == doctest::Approx(2.5));
  CHECK(t.makespan() == doctest::Approx(2.5));
  // Busy 1 of 2.5 on rank 1, 2 of 2.5 on rank 0: idle (1.5 + 0.5) / (2 x 2.5).
  CHECK(measured_bubble_ratio(t) == doctest::Approx(0.4));
  CHECK(chunks_per_second(t) == doctest::Approx(2 / 2.5));
  a.step_seconds = 4;
  b.step_seconds = 2;
  CHECK(chunks_per_second(std::vector<StepResult>{a, b}) == doctest::Approx(0.5));
  StepResult dup = a;
  CHECK(contains(error_message([&] {
                   (void)merge_timelines("x", 2, Mode::train, {a, dup});
                 }),
                 "two results for rank 1"));
  dup.rank = 0;
  dup.chunks = 3;
  CHECK(contains(error_message([&] { (void)merge_timelines("x", 2, Mode::train, {a, dup}); }), "chunks=3"));
}

TEST_CASE("Runtime.Recorder.MeasuredStep" * doctest::timeout(60)) {
  // A measured step of the in-process pipeline: one compute span per compute op, one wait span per
  // commit, in op order, on a common time axis.
  const int P = 4, C = 8;
  InProcessWorld world(P);
  std::vector<testmodel::ByteStage> stages(2 * P);
  std::vector<StepResult> results(P);
  std::vector<std::byte> in(C * 64), labels(C * 8);
  run_ranks(P, [&](int r) {
    Pipeline<DualPipe, InProcessCommunicator, testmodel::ByteStage> pipe(
        world.communicator(r),
        {&stages[static_cast<std::size_t>(2 * r)], &stages[static_cast<std::size_t>(2 * r + 1)]});
    results[static_cast<std::size_t>(r)] = pipe.step(C, in, labels);
  });
  for (int r = 0; r < P; ++r) {
    const std::vector<Op> ops = DualPipe::ops(P, C, r);
    const auto& spans = results[static_cast<std::size_t>(r)].spans;
    std::size_t expected = 0;
    for (const Op& op : ops) expected += (is_compute(op.kind) || op.kind == OpKind::commit) ? 1 : 0;
    REQUIRE(spans.size() == expected);
    for (std::size_t i = 0; i < spans.size(); ++i) {
      const Span& s = spans[i];
      CHECK(s.op == ops[static_cast<std::size_t>(s.index)]);
      CHECK(s.lane == (s.op.kind == OpKind::commit ? Span::Lane::wait : Span::Lane::compute));
      CHECK(s.end >= s.start);
      if (i > 0) CHECK(s.start >= spans[i - 1].end);
      if (i > 0) CHECK(s.index > spans[i - 1].index);
    }
  }
  const Timeline t = merge_timelines("dualpipe", C, Mode::train, results);
  CHECK(t.ranks == P);
  CHECK(t.makespan() > 0);
  const double bubble = measured_bubble_ratio(t);
  CHECK(bubble >= 0);
  CHECK(bubble < 1);
  CHECK(chunks_per_second(t) > 0);
}
