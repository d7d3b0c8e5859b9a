// Inside a real job: the process grid, the in-process grid, which ranks hold each stage, the gradient
// reduction over copies and replicas, Stage::on_grads_ready and gradient accumulation.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "byte_stage.hpp"
#include "dualpipe/dualpipe.hpp"

using namespace dualpipe;
using namespace std::chrono_literals;

namespace {
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string config_error(auto&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<no ConfigError>";
}
}  // namespace

// ---- ProcessGrid ----------------------------------------------------------------------------------------

TEST_CASE("Grid.ProcessGrid.PpFastestThenDp") {
  const ProcessGrid g(8, {.pp = 4, .dp = 2}, "pp,dp");
  CHECK(g.describe(5) == "grid: pp=4 dp=2 ep=1 tp=1 order=pp,dp rank 5 = (pp 1, dp 1)");
  CHECK(g.describe(0) == "grid: pp=4 dp=2 ep=1 tp=1 order=pp,dp rank 0 = (pp 0, dp 0)");
  CHECK(g.describe(6) == "grid: pp=4 dp=2 ep=1 tp=1 order=pp,dp rank 6 = (pp 2, dp 1)");
  CHECK(g.coord(5, GridDim::pp) == 1);
  CHECK(g.coord(5, GridDim::dp) == 1);
  CHECK(g.coord(5, GridDim::ep) == 0);
  CHECK(g.group(GridDim::pp, 5) == std::vector<int>{4, 5, 6, 7});
  CHECK(g.group(GridDim::pp, 2) == std::vector<int>{0, 1, 2, 3});
  CHECK(g.group(GridDim::dp, 5) == std::vector<int>{1, 5});
  CHECK(g.group(GridDim::dp, 3) == std::vector<int>{3, 7});
  CHECK(g.group(GridDim::tp, 3) == std::vector<int>{3});
  CHECK(g.groups(GridDim::pp) == 2);
  CHECK(g.groups(GridDim::dp) == 4);
  CHECK(g.group_index(GridDim::pp, 6) == 1);
  CHECK(g.group_index(GridDim::dp, 6) == 2);
  for (int r = 0; r < 8; ++r) CHECK(g.rank_of(g.coords(r)) == r);
}

TEST_CASE("Grid.ProcessGrid.DpFastest") {
  const ProcessGrid g(8, {.pp = 4, .dp = 2}, "dp,pp");
  CHECK(g.describe(5) == "grid: pp=4 dp=2 ep=1 tp=1 order=dp,pp rank 5 = (dp 1, pp 2)");
  CHECK(g.group(GridDim::pp, 5) == std::vector<int>{1, 3, 5, 7});
  CHECK(g.group(GridDim::dp, 5) == std::vector<int>{4, 5});
}

TEST_CASE("Grid.ProcessGrid.FourDimensionsEveryRankInOneGroupPerDimension") {
  const ProcessGrid g(24, {.pp = 2, .dp = 3, .ep = 2, .tp = 2}, "tp, ep ,dp,pp");
  CHECK(g.describe(23) == "grid: pp=2 dp=3 ep=2 tp=2 order=tp,ep,dp,pp rank 23 = (tp 1, ep 1, dp 2, pp 1)");
  for (GridDim d : all_grid_dims) {
    std::vector<int> seen(24, 0);
    for (int r = 0; r < 24; ++r) {
      const std::vector<int> members = g.group(d, r);
      REQUIRE(members.size() == static_cast<std::size_t>(g.size(d)));
      CHECK(members[static_cast<std::size_t>(g.coord(r, d))] == r);  // a rank's group index is its coordinate
      for (int m : members) {
        CHECK(g.group_index(d, m) == g.group_index(d, r));
        for (GridDim e : all_grid_dims)
          if (e != d) CHECK(g.coord(m, e) == g.coord(r, e));
      }
      ++seen[static_cast<std::size_t>(r)];
    }
    for (int r = 0; r < 24; ++r) CHECK(seen[static_cast<std::size_t>(r)] == 1);
  }
  // Size-1 dimensions may be left out of the order.
  const ProcessGrid pipeline_only(4, {.pp = 4}, "pp");
  CHECK(pipeline_only.describe(3) == "grid: pp=4 dp=1 ep=1 tp=1 order=pp rank 3 = (pp 3)");
}

TEST_CASE("Grid.ProcessGrid.BadShapesAreConfigErrorsNamingTheNumbers") {
  std::string e = config_error([] { ProcessGrid(8, {.pp = 4, .dp = 3}, "pp,dp"); });
  CHECK(contains(e, "pp=4 dp=3 ep=1 tp=1 makes 12 ranks, the world has 8"));
  e = config_error([] { ProcessGrid(8, {.pp = 0, .dp = 2}, "pp,dp"); });
  CHECK(contains(e, "at least 1 (got pp=0"));
  e = config_error([] { ProcessGrid(8, {.pp = 4, .dp = -2}, "pp,dp"); });
  CHECK(contains(e, "got dp=-2"));
  e = config_error([] { ProcessGrid(8, {.pp = 4, .dp = 2}, "pp,xp"); });
  CHECK(contains(e, "unknown dimension 'xp'"));
  e = config_error([] { ProcessGrid(8, {.pp = 4, .dp = 2}, "pp,dp,pp"); });
  CHECK(contains(e, "names pp twice"));
  e = config_error([] { ProcessGrid(8, {.pp = 4, .dp = 2}, "pp"); });
  CHECK(contains(e, "dp=2 is missing"));
  e = config_error([] { ProcessGrid(0, {}, "pp"); });
  CHECK(contains(e, "the world has 0"));
  const ProcessGrid g(2, {.pp = 2}, "pp");
  e = config_error([&] { (void)g.describe(2); });
  CHECK(contains(e, "rank must be in [0, 2) (got rank 2)"));
}

TEST_CASE("Grid.InProcessGrid.EachRankGetsItsGroupsCommunicators" * doctest::timeout(30)) {
  InProcessGrid grid(ProcessGrid(8, {.pp = 4, .dp = 2}, "pp,dp"));
  std::vector<int> got(8, -1);
  run_ranks(8, [&](int r) {
    InProcessCommunicator& pp = grid.communicator(GridDim::pp, r);
    InProcessCommunicator& dp = grid.communicator(GridDim::dp, r);
    CHECK(pp.size() == 4);
    CHECK(pp.rank() == r % 4);
    CHECK(dp.size() == 2);
    CHECK(dp.rank() == r / 4);
    // Each rank sends its world rank to its dp peer: the other replica of the same pipeline rank.
    const int mine = r;
    dp.post_send(1 - dp.rank(), MessageTag{0, 0, Payload::activation}, std::as_bytes(std::span(&mine, 1)));
    dp.post_recv(1 - dp.rank(), MessageTag{0, 0, Payload::activation},
                 std::as_writable_bytes(std::span(&got[static_cast<std::size_t>(r)], 1)));
    dp.commit().wait(10s);
  });
  CHECK(got == std::vector<int>{4, 5, 6, 7, 0, 1, 2, 3});
}

// ---- Stage copies -------------------------------------------------------------------------------------

TEST_CASE("Grid.StageCopies.EverySchedule") {
  const StageCopies dp = stage_copies<DualPipe>(4, 8);
  CHECK(dp.stages == 4);
  CHECK(dp.copies_per_stage() == 2);
  for (int s = 0; s < 4; ++s) {
    // Stage s: module 0 of rank s and module 1 of rank P-1-s, by rank.
    const StageCopy a{s, 0}, b{3 - s, 1};
    const std::vector<StageCopy> want = s < 3 - s ? std::vector<StageCopy>{a, b} : std::vector<StageCopy>{b, a};
    CHECK(dp.copies(s) == want);
    CHECK(dp.stage(s, 0) == s);
    CHECK(dp.stage(s, 1) == 3 - s);
  }
  const StageCopies v = stage_copies(ScheduleKind::dualpipev, 2, 4);
  CHECK(v.stages == 4);
  CHECK(v.copies_per_stage() == 1);
  CHECK(v.copies(0) == std::vector<StageCopy>{{0, 0}});
  CHECK(v.copies(1) == std::vector<StageCopy>{{1, 0}});
  CHECK(v.copies(2) == std::vector<StageCopy>{{1, 1}});
  CHECK(v.copies(3) == std::vector<StageCopy>{{0, 1}});
  for (ScheduleKind k : {ScheduleKind::one_f_one_b, ScheduleKind::zb1p, ScheduleKind::gpipe}) {
    const StageCopies c = stage_copies(k, 3, 5);
    CHECK(c.stages == 3);
    CHECK(c.copies_per_stage() == 1);
    for (int s = 0; s < 3; ++s) CHECK(c.copies(s) == std::vector<StageCopy>{{s, 0}});
  }
  CHECK(contains(config_error([] { (void)stage_copies<DualPipe>(3, 8); }), "ranks must be even"));
  CHECK(contains(config_error([&] { (void)dp.copies(4); }), "stage must be in [0, 4) (got stage 4)"));
}

// ---- The reduction ------------------------------------------------------------------------------------

namespace {
// Module m of pipeline rank r in replica d: n values that differ everywhere and need rounding to add.
std::vector<double> gradient_of(int d, int r, int m, std::size_t n) {
  std::vector<double> g(n);
  std::uint64_t x = 0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(1 + d * 131 + r * 17 + m * 7);
  for (double& v : g) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = (static_cast<double>(x >> 11) * 0x1.0p-53 - 0.5) * (1.0 + static_cast<double>(x % 1000));
  }
  return g;
}

// Runs the reduction on a PP x DP in-process grid; returns [grid rank][module] the reduced gradients.
// `early`: modules posted before finish (as on_grads_ready would).
std::vector<std::vector<std::vector<double>>> reduce_on_grid(const StageCopies& copies, int dp, std::size_t n,
                                                             bool early) {
  const int P = copies.ranks;
  const int M = copies.modules_per_rank;
  InProcessGrid grid(ProcessGrid(P * dp, {.pp = P, .dp = dp}, "pp,dp"));
  std::vector<std::vector<std::vector<double>>> grads(static_cast<std::size_t>(P * dp));
  for (int w = 0; w < P * dp; ++w)
    for (int m = 0; m < M; ++m) grads[static_cast<std::size_t>(w)].push_back(gradient_of(w / P, w % P, m, n));
  run_ranks(P * dp, [&](int w) {
    std::vector<std::span<double>> mine;
    for (auto& g : grads[static_cast<std::size_t>(w)]) mine.emplace_back(g);
    HostGradientReduction<double, InProcessCommunicator> reduce(copies, grid.communicator(GridDim::pp, w), mine,
                                                                {.timeout = 20s}, &grid.communicator(GridDim::dp, w));
    if (early)
      for (int m = M - 1; m >= 0; --m) reduce.post(m);
    reduce.finish();
  });
  return grads;
}
}  // namespace

TEST_CASE("Grid.Reduction.CopiesAndReplicasEndBitwiseEqualToTheSequentialSum" * doctest::timeout(60)) {
  constexpr std::size_t n = 257;
  struct Case {
    ScheduleKind kind;
    int ranks, chunks, dp;
    bool early;
  };
  for (const Case& c : {Case{ScheduleKind::dualpipe, 4, 8, 2, false}, Case{ScheduleKind::dualpipe, 4, 8, 2, true},
                        Case{ScheduleKind::dualpipe, 2, 4, 1, false}, Case{ScheduleKind::dualpipev, 2, 4, 3, true},
                        Case{ScheduleKind::one_f_one_b, 4, 8, 2, false}, Case{ScheduleKind::zb1p, 3, 5, 2, true}}) {
    CAPTURE(schedule_name(c.kind));
    CAPTURE(c.dp);
    const StageCopies copies = stage_copies(c.kind, c.ranks, c.chunks);
    const auto got = reduce_on_grid(copies, c.dp, n, c.early);
    for (int s = 0; s < copies.stages; ++s) {
      // The sequential sum in the documented order: over replicas of (over copies, canonical order).
      std::vector<double> want(n, 0.0);
      for (int d = 0; d < c.dp; ++d) {
        std::vector<double> copy_sum;
        for (const StageCopy& h : copies.copies(s)) {
          const auto g = gradient_of(d, h.rank, h.module, n);
          if (copy_sum.empty()) copy_sum = g;
          else
            for (std::size_t i = 0; i < n; ++i) copy_sum[i] += g[i];
        }
        if (d == 0) want = copy_sum;
        else
          for (std::size_t i = 0; i < n; ++i) want[i] += copy_sum[i];
      }
      for (int d = 0; d < c.dp; ++d)
        for (const StageCopy& h : copies.copies(s)) {
          const auto& g = got[static_cast<std::size_t>(d * c.ranks + h.rank)][static_cast<std::size_t>(h.module)];
          CHECK(std::memcmp(g.data(), want.data(), n * sizeof(double)) == 0);  // bit for bit, every copy
        }
      // And the sum is a sum: close to one added in another order (a wrong reduction would be far off).
      double other = 0, scale = 0;
      for (int d = c.dp - 1; d >= 0; --d)
        for (const StageCopy& h : copies.copies(s)) other += gradient_of(d, h.rank, h.module, n)[3];
      for (int d = 0; d < c.dp; ++d) scale += std::abs(gradient_of(d, 0, 0, n)[3]);
      CHECK(std::abs(want[3] - other) <= 1e-12 * (1.0 + std::abs(other) + scale * 100));
    }
  }
}

TEST_CASE("Grid.Reduction.RefusesBadBuffersAndTimesOutOnAMissingPeer" * doctest::timeout(60)) {
  const StageCopies copies = stage_copies<DualPipe>(2, 4);
  InProcessWorld world(2);
  std::vector<double> a(4), b(4);
  std::string e = config_error([&] {
    HostGradientReduction<double, InProcessCommunicator> r(copies, world.communicator(0), {std::span<double>(a)});
  });
  CHECK(contains(e, "1 gradient buffers given, rank 0 has 2 modules"));
  InProcessWorld three(3);
  e = config_error([&] {
    HostGradientReduction<double, InProcessCommunicator> r(copies, three.communicator(0),
                                                           {std::span<double>(a), std::span<double>(b)});
  });
  CHECK(contains(e, "the copy communicator has 3 ranks, the schedule 2"));
  // Rank 1 never reduces: rank 0's wait times out, and the communicator is aborted for everyone.
  HostGradientReduction<double, InProcessCommunicator> r(
      copies, world.communicator(0), {std::span<double>(a), std::span<double>(b)}, {.timeout = 100ms});
  CHECK_THROWS_AS(r.finish(), TimeoutError);
  CHECK(world.aborted());
}

// ---- on_grads_ready and accumulation -------------------------------------------------------------------

namespace {
/// Counts its weight gradients and records every on_grads_ready call.
struct ProbeStage : testmodel::ByteStage {
  struct Call {
    StageContext ctx;
    int weights_before = 0;  // weight gradients of this step before the call
    double when = 0;         // steady_clock seconds
  };
  int weights = 0;
  std::vector<Call> calls;
  std::vector<double> loss_scales;
  void backward_weight(const StageContext& ctx) {
    ++weights;
    loss_scales.push_back(ctx.loss_scale);
  }
  void on_grads_ready(const StageContext& ctx) {
    calls.push_back(
        {ctx, weights, std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count()});
    weights = 0;
  }
};
static_assert(StageWithGradsReady<ProbeStage>);
static_assert(!StageWithGradsReady<testmodel::ByteStage>);

template <class Schedule>
struct ProbeRun {
  static constexpr int M = Schedule::modules_per_rank;
  std::vector<std::array<ProbeStage, M>> stages;
  std::vector<std::vector<StepResult>> results;  // [rank][step]

  ProbeRun(int P, int C, int steps, PipelineOptions options)
      : stages(static_cast<std::size_t>(P)), results(static_cast<std::size_t>(P)) {
    InProcessWorld world(P);
    std::vector<std::byte> inputs(static_cast<std::size_t>(C) * 64), labels(static_cast<std::size_t>(C) * 8);
    run_ranks(P, [&](int r) {
      std::array<ProbeStage*, M> ptrs{};
      for (int m = 0; m < M; ++m)
        ptrs[static_cast<std::size_t>(m)] = &stages[static_cast<std::size_t>(r)][static_cast<std::size_t>(m)];
      Pipeline<Schedule, InProcessCommunicator, ProbeStage> pipe(world.communicator(r), ptrs, options);
      for (int s = 0; s < steps; ++s) results[static_cast<std::size_t>(r)].push_back(pipe.step(C, inputs, labels));
      pipe.eval(C, inputs, labels);  // a forward step: no call
    });
  }
};
}  // namespace

TEST_CASE("Grid.GradsReady.OncePerModulePerStepRightAfterItsLastWeightGradient" * doctest::timeout(60)) {
  auto check_run = [](auto run, int P, int steps) {
    using Run = decltype(run);
    for (int r = 0; r < P; ++r)
      for (int m = 0; m < Run::M; ++m) {
        const ProbeStage& st = run.stages[static_cast<std::size_t>(r)][static_cast<std::size_t>(m)];
        CHECK(st.calls.size() == static_cast<std::size_t>(steps));
        for (const auto& call : st.calls) {
          CHECK(call.ctx.module == m);
          CHECK(call.ctx.rank == r);
          CHECK(call.weights_before == st.calls.front().weights_before);
          CHECK(call.weights_before > 0);
        }
        CHECK(st.weights == 0);  // nothing after the last call
      }
  };
  check_run(ProbeRun<DualPipe>(4, 8, 2, {}), 4, 2);
  check_run(ProbeRun<DualPipeV>(2, 6, 2, {}), 2, 2);
  check_run(ProbeRun<ZB1P>(3, 5, 2, {}), 3, 2);
  check_run(ProbeRun<OneFOneB>(3, 5, 2, {}), 3, 2);
}

TEST_CASE("Grid.GradsReady.UnderDualPipeTheFirstModulesCallComesBeforeTheRanksLastOp" * doctest::timeout(60)) {
  const int P = 4, C = 8;
  ProbeRun<DualPipe> run(P, C, 1, {});
  for (int r = 0; r < P; ++r) {
    CAPTURE(r);
    const StepResult& res = run.results[static_cast<std::size_t>(r)][0];
    const Span* last = nullptr;
    for (const Span& s : res.spans)
      if (s.lane == Span::Lane::compute && (last == nullptr || s.index > last->index)) last = &s;
    REQUIRE(last != nullptr);
    double first_call = 1e300;
    for (const ProbeStage& st : run.stages[static_cast<std::size_t>(r)])
      first_call = std::min(first_call, st.calls.at(0).when);
    // The call ran inside an earlier op; the last op started only after that op had ended.
    CHECK(first_call <= res.clock_start + last->start);
    // Each module's call came with its num_chunks weight gradients done.
    for (const ProbeStage& st : run.stages[static_cast<std::size_t>(r)]) CHECK(st.calls.at(0).weights_before == C / 2);
  }
}

TEST_CASE("Grid.Accumulation.ContextAndLossScaleCoverChunksTimesStepsTimesReplicas" * doctest::timeout(60)) {
  const int P = 2, C = 4, K = 2;
  PipelineOptions o;
  o.accumulation_steps = K;
  o.replicas = 3;
  o.scale_loss_by_chunks = true;
  ProbeRun<DualPipe> run(P, C, 2 * K + 1, o);
  for (int r = 0; r < P; ++r)
    for (const ProbeStage& st : run.stages[static_cast<std::size_t>(r)]) {
      REQUIRE(st.calls.size() == 2 * K + 1);
      for (std::size_t s = 0; s < st.calls.size(); ++s) {
        CHECK(st.calls[s].ctx.accumulation_step == static_cast<int>(s % K));
        CHECK(st.calls[s].ctx.accumulation_steps == K);
        CHECK(st.calls[s].ctx.last_accumulation_step() == (s % K == K - 1));
      }
      for (double scale : st.loss_scales) CHECK(scale == 1.0 / (C * K * 3));
    }
  CHECK(contains(config_error([] {
                   InProcessWorld w(1);
                   PipelineOptions bad;
                   bad.accumulation_steps = 0;
                   testmodel::ByteStage s;
                   Pipeline<OneFOneB, InProcessCommunicator, testmodel::ByteStage> p(w.communicator(0), {&s}, bad);
                 }),
                 "accumulation_steps must be at least 1 (got 0)"));
}
