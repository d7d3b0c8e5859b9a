// The demo's core function, run_demo_inproc, for every schedule over a grid of (ranks, chunks): each run
// must match the sequential run of the same model; and the checks must be able to fail.
#include <doctest/doctest.h>

#include <cmath>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "demo.hpp"
#include "options.hpp"
#include "support/messages.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;
using namespace dualpipe::cpu_demo;

namespace {
DemoConfig small(std::string_view schedule, int ranks, int chunks, int steps = 2) {
  DemoConfig c;
  c.schedule = parse_schedule_kind(schedule);
  c.ranks = ranks;
  c.model.chunks = chunks;
  c.model.steps = steps;
  c.model.hidden = 4;
  c.model.rows = 3;
  c.model.seed = 11;
  c.timeout = std::chrono::milliseconds(30'000);
  return c;
}

struct GridPoint {
  const char* schedule;
  int ranks;
  int chunks;
};
}  // namespace

TEST_CASE("CpuDemo.Core.EveryScheduleMatchesTheSequentialRun" * doctest::timeout(240)) {
  const GridPoint grid[] = {
      {"dualpipe", 2, 4},  {"dualpipe", 2, 6},  {"dualpipe", 4, 8},  {"dualpipe", 4, 10}, {"dualpipe", 6, 12},
      {"dualpipev", 1, 2}, {"dualpipev", 1, 3}, {"dualpipev", 2, 4}, {"dualpipev", 2, 5}, {"dualpipev", 3, 7},
      {"dualpipev", 4, 8}, {"1f1b", 1, 1},      {"1f1b", 2, 1},      {"1f1b", 3, 5},      {"1f1b", 4, 8},
      {"1f1b", 4, 3},      {"zb1p", 1, 1},      {"zb1p", 2, 1},      {"zb1p", 3, 5},      {"zb1p", 4, 8},
      {"zb1p", 4, 3},      {"gpipe", 3, 4},
  };
  for (const GridPoint& g : grid) {
    CAPTURE(g.schedule);
    CAPTURE(g.ranks);
    CAPTURE(g.chunks);
    const DemoConfig cfg = small(g.schedule, g.ranks, g.chunks);
    const DemoReport r = run_demo_inproc(cfg);
    std::string problems;
    for (const auto& p : r.problems) problems += p + "; ";
    CAPTURE(problems);
    CHECK(r.pass());
    CHECK(r.problems.empty());
    CHECK(r.max_rel_err <= 1e-12);
    CHECK(r.schedule == g.schedule);
    CHECK(r.ranks == g.ranks);
    CHECK(r.chunks == g.chunks);
    CHECK(r.stages == (std::string_view(g.schedule) == "dualpipev" ? 2 * g.ranks : g.ranks));
    CHECK(r.copies == (std::string_view(g.schedule) == "dualpipe" ? 2 : 1));
    CHECK(std::isfinite(r.loss_sum));
    CHECK(r.grad_norm > 0);
    CHECK(r.timeline.ranks == g.ranks);
    CHECK(r.per_rank.size() == static_cast<std::size_t>(g.ranks));
    CHECK(contains(result_line(r), "check=pass"));
    // Measured next to simulated: the same step, so the same ranks and a makespan of the same trace.
    CHECK(r.profile.measured_makespan == r.timeline.makespan());
    CHECK(r.profile.simulated_makespan > 0);
    CHECK(r.profile.simulated.ranks == g.ranks);
    CHECK(r.profile.chunks_per_second > 0);
    CHECK(contains(profile_line(r), "profile: measured_bubble="));
  }
}

TEST_CASE("CpuDemo.VariableLengths.EveryScheduleMatchesTheSequentialRun" * doctest::timeout(240)) {
  const GridPoint grid[] = {
      {"dualpipe", 2, 4}, {"dualpipe", 4, 8}, {"dualpipev", 1, 3}, {"dualpipev", 2, 5}, {"1f1b", 2, 3},
      {"1f1b", 4, 8},     {"zb1p", 2, 3},     {"zb1p", 4, 8},      {"gpipe", 3, 4},
  };
  for (const GridPoint& g : grid) {
    CAPTURE(g.schedule);
    CAPTURE(g.ranks);
    CAPTURE(g.chunks);
    DemoConfig cfg = small(g.schedule, g.ranks, g.chunks);
    cfg.model.variable_rows = true;
    cfg.model.rows = 5;
    const DemoReport r = run_demo_inproc(cfg);
    std::string problems;
    for (const auto& p : r.problems) problems += p + "; ";
    CAPTURE(problems);
    CHECK(r.pass());
    CHECK(r.max_rel_err <= 1e-12);
    CHECK(r.grad_norm > 0);
  }
}

TEST_CASE("CpuDemo.VariableLengths.ChunksHaveTheirOwnRowsAndTheCheckCanFail") {
  ModelSpec spec;
  spec.variable_rows = true;
  spec.rows = 5;
  spec.chunks = 16;
  spec.hidden = 4;
  const Batch b = make_batch(spec, 0);
  REQUIRE(b.rows.size() == 16);
  bool differ = false;
  for (std::size_t r : b.rows) {
    CHECK(r >= 1);
    CHECK(r <= 5);
    differ = differ || r != b.rows[0];
  }
  CHECK(differ);
  CHECK(b.inputs.size() == b.input_offset.back());
  // Against the fixed-size model's sequential run, the variable-size run must fail its check.
  DemoConfig cfg = small("1f1b", 2, 4);
  cfg.model.variable_rows = true;
  cfg.model.rows = 5;
  DemoConfig fixed = cfg;
  fixed.model.variable_rows = false;
  const SequentialRun other = sequential_for(fixed);
  const DemoReport r = run_demo_inproc(cfg, &other);
  CHECK_FALSE(r.pass());
}

TEST_CASE("CpuDemo.Core.OneStepLossesEqualTheSequentialRunBitForBit") {
  // With one step the weights are the initial ones everywhere, and each chunk's forward is the same
  // arithmetic in the same order as in the sequential run: the loss sum (batch-chunk order) is exact.
  for (const GridPoint& g :
       {GridPoint{"dualpipe", 4, 8}, GridPoint{"dualpipev", 2, 8}, GridPoint{"1f1b", 4, 8}, GridPoint{"zb1p", 4, 8}}) {
    CAPTURE(g.schedule);
    const DemoConfig cfg = small(g.schedule, g.ranks, g.chunks, 1);
    const SequentialRun seq = sequential_for(cfg);
    double want = 0;
    for (double l : seq.losses[0]) want += l;
    const DemoReport r = run_demo_inproc(cfg, &seq);
    CHECK(r.pass());
    CHECK(r.loss_sum == want);
  }
}

TEST_CASE("CpuDemo.Core.TheCheckFailsAgainstAnotherModel") {
  DemoConfig cfg = small("dualpipe", 2, 4);
  DemoConfig other = cfg;
  other.model.seed = cfg.model.seed + 1;  // other weights and data
  const SequentialRun wrong = sequential_for(other);
  const DemoReport r = run_demo_inproc(cfg, &wrong);
  CHECK_FALSE(r.pass());
  CHECK(r.max_rel_err > 1e-6);
  CHECK_FALSE(r.problems.empty());
  CHECK(contains(result_line(r), "check=FAIL"));

  // A different learning rate: step 0 agrees, step 1 (after an SGD update) must not.
  other = cfg;
  other.model.lr = cfg.model.lr * 2;
  const SequentialRun wrong_lr = sequential_for(other);
  const DemoReport r2 = run_demo_inproc(cfg, &wrong_lr);
  CHECK_FALSE(r2.pass());
  bool step1 = false;
  for (const auto& p : r2.problems) step1 = step1 || contains(p, "step 1");
  CHECK(step1);
}

TEST_CASE("CpuDemo.Core.AFailingStageEndsTheRunWithStepErrorNamingItsRank" * doctest::timeout(120)) {
  for (const GridPoint& g :
       {GridPoint{"dualpipe", 4, 8}, GridPoint{"dualpipev", 2, 4}, GridPoint{"1f1b", 4, 8}, GridPoint{"zb1p", 3, 4}}) {
    CAPTURE(g.schedule);
    DemoConfig cfg = small(g.schedule, g.ranks, g.chunks);
    cfg.inject_failure = 1;
    cfg.timeout = std::chrono::milliseconds(20'000);
    try {
      (void)run_demo_inproc(cfg);
      FAIL("no StepError");
    } catch (const StepError& e) {
      CHECK(e.origin().rank == 1);
      CHECK(contains(e.what(), "rank 1"));
      CHECK(contains(e.what(), "injected failure"));
    }
  }
}

TEST_CASE("CpuDemo.Core.BadConfigurationsAreRefusedBeforeAnythingRuns") {
  CHECK(contains(config_message([] { (void)run_demo_inproc(small("dualpipe", 4, 6)); }), "chunks=6"));
  CHECK(contains(config_message([] { (void)run_demo_inproc(small("dualpipe", 3, 6)); }), "ranks must be even"));
  CHECK(contains(config_message([] { (void)run_demo_inproc(small("dualpipev", 2, 3)); }), "chunks=3"));
  auto c = small("1f1b", 2, 2);
  c.inject_failure = 2;
  CHECK(contains(config_message([&] { validate(c); }), "failing rank must be in [0, ranks)"));
  c = small("1f1b", 2, 2);
  c.model.hidden = 0;
  CHECK(contains(config_message([&] { validate(c); }), "hidden=0"));
  c = small("1f1b", 2, 2);
  c.model.steps = 1000;
  c.model.hidden = 4096;
  CHECK(contains(config_message([&] { validate(c); }), "2 GiB"));
}

TEST_CASE("CpuDemo.Grid.DpTwoChunksEightTrainsLikeDpOneChunksSixteen" * doctest::timeout(240)) {
  // The same 16-chunk batches, split over 2 replicas (or 2 accumulated steps) instead of one pipeline step:
  // the per-step loss sums agree to rounding (the gradients add in another order), and every run passes.
  for (const GridPoint& g :
       {GridPoint{"dualpipe", 4, 8}, GridPoint{"dualpipev", 2, 8}, GridPoint{"1f1b", 4, 8}, GridPoint{"zb1p", 4, 8}}) {
    CAPTURE(g.schedule);
    const DemoReport one = run_demo_inproc(small(g.schedule, g.ranks, 2 * g.chunks, 3));
    DemoConfig dp2 = small(g.schedule, g.ranks, g.chunks, 3);
    dp2.dp = 2;
    DemoConfig acc2 = dp2;
    acc2.dp = 1;
    acc2.accumulate = 2;
    std::vector<DemoConfig> configs{dp2, acc2};
    if (g.schedule != std::string_view("dualpipe")) {  // DualPipe needs chunks >= 2 * ranks
      DemoConfig both = dp2;
      both.model.chunks = g.chunks / 2;
      both.accumulate = 2;
      configs.push_back(both);
    }
    for (const DemoConfig& cfg : configs) {
      CAPTURE(cfg.dp);
      CAPTURE(cfg.accumulate);
      CAPTURE(cfg.model.chunks);
      const DemoReport r = run_demo_inproc(cfg);
      std::string problems;
      for (const auto& p : r.problems) problems += p + "; ";
      CAPTURE(problems);
      CHECK(r.pass());
      CHECK(r.dp == cfg.dp);
      CHECK(r.accumulate == cfg.accumulate);
      REQUIRE(r.step_loss_sums.size() == one.step_loss_sums.size());
      for (std::size_t u = 0; u < r.step_loss_sums.size(); ++u) {
        CAPTURE(u);
        CHECK(std::abs(r.step_loss_sums[u] - one.step_loss_sums[u]) <= 1e-12 * std::abs(one.step_loss_sums[u]));
      }
      // The first update starts from the same weights on the same data: the same losses bit for bit.
      CHECK(r.step_loss_sums[0] == one.step_loss_sums[0]);
      CHECK(std::abs(r.grad_norm - one.grad_norm) <= 1e-12 * one.grad_norm);
      CHECK(contains(result_line(r), " chunks=" + std::to_string(cfg.model.chunks) + " dp=" + std::to_string(cfg.dp) +
                                         " accumulate=" + std::to_string(cfg.accumulate) + " comm=inproc "));
    }
  }
}

TEST_CASE("CpuDemo.Grid.TheCheckCoversEveryReplica" * doctest::timeout(120)) {
  // Checked against a run of half the batch (dp=1's sequential run): the second replica's chunks are
  // missing from it, so the check must fail.
  DemoConfig cfg = small("1f1b", 2, 4);
  cfg.dp = 2;
  DemoConfig half = cfg;
  half.dp = 1;
  const SequentialRun wrong = sequential_for(half);
  CHECK_FALSE(run_demo_inproc(cfg, &wrong).pass());  // its losses have 4 chunks per step, the grid computes 8
  DemoConfig other_data = cfg;
  other_data.model.seed += 1;
  const SequentialRun wrong_seed = sequential_for(other_data);
  const DemoReport r = run_demo_inproc(cfg, &wrong_seed);
  CHECK_FALSE(r.pass());
}

TEST_CASE("CpuDemo.Grid.AFailingStageInOneReplicaEndsEveryReplica" * doctest::timeout(120)) {
  DemoConfig cfg = small("dualpipe", 2, 4);
  cfg.dp = 2;
  cfg.inject_failure = 3;  // pipeline rank 1 of replica 1
  cfg.timeout = std::chrono::milliseconds(20'000);
  try {
    (void)run_demo_inproc(cfg);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(contains(e.what(), "failure on rank 1"));
    CHECK(contains(e.what(), "injected failure"));
    CHECK(contains(e.what(), "[replica 1: grid rank 3]"));
  }
}

TEST_CASE("CpuDemo.ResultLineFormat") {
  DemoReport r;
  r.schedule = "zb1p";
  r.ranks = 4;
  r.chunks = 8;
  r.loss_sum = 0.1;
  r.grad_norm = 2.5;
  r.max_rel_err = 1.5e-16;
  CHECK(
      result_line(r) ==
      "result: schedule=zb1p ranks=4 chunks=8 dp=1 accumulate=1 comm=inproc loss_sum=0.10000000000000001 grad_norm=2.5 "
      "max_rel_err=1.5e-16 check=pass");
  r.max_rel_err = 2e-12;
  CHECK(contains(result_line(r), "check=FAIL"));
}

TEST_CASE("CpuDemo.Options") {
  auto parse = [](std::vector<std::string_view> a) { return parse_options(a); };
  const ProgramOptions d = parse({});
  REQUIRE(d.schedules.size() == 4);
  CHECK(schedule_name(d.schedules[0]) == "dualpipe");
  CHECK(schedule_name(d.schedules[1]) == "dualpipev");
  CHECK(schedule_name(d.schedules[2]) == "1f1b");
  CHECK(schedule_name(d.schedules[3]) == "zb1p");
  const auto configs = make_configs(d);
  REQUIRE(configs.size() == 4);
  CHECK(configs[0].ranks == 4);
  CHECK(configs[1].ranks == 2);  // dualpipev: the same 4-stage model on 2 ranks
  CHECK(stages_of(configs[1].schedule, configs[1].ranks, configs[1].model.chunks) == 4);
  CHECK_FALSE(configs[0].model.variable_rows);
  CHECK(make_configs(parse({"--variable-lengths"}))[0].model.variable_rows);

  const ProgramOptions o = parse({"--schedule",
                                  "zb1p,1f1b",
                                  "--schedule=zb1p",
                                  "--ranks",
                                  "2",
                                  "--chunks=6",
                                  "--steps",
                                  "5",
                                  "--hidden",
                                  "8",
                                  "--batch-rows",
                                  "3",
                                  "--seed",
                                  "9",
                                  "--lr",
                                  "0.5",
                                  "--trace-dir",
                                  "t",
                                  "--inject-failure",
                                  "1",
                                  "--timeout-ms",
                                  "100",
                                  "--comm",
                                  "inproc"});
  REQUIRE(o.schedules.size() == 2);
  CHECK(schedule_name(o.schedules[0]) == "zb1p");
  CHECK(o.ranks == 2);
  CHECK(o.chunks == 6);
  CHECK(o.steps == 5);
  CHECK(o.hidden == 8);
  CHECK(o.rows == 3);
  CHECK(o.seed == 9);
  CHECK(o.lr == 0.5);
  CHECK(o.trace_dir == "t");
  CHECK(o.inject_failure == 1);
  CHECK(o.timeout_ms == 100);
  CHECK(parse({"--v-ranks", "3", "--schedule", "dualpipev", "--ranks", "3"}).v_ranks == 3);
  CHECK(make_configs(parse({"--v-ranks", "3", "--schedule", "dualpipev", "--ranks", "3", "--chunks", "6"}))[0].ranks ==
        3);
  CHECK(parse({"--help"}).help);

  auto msg = [&](std::vector<std::string_view> a) {
    return config_message([&] { (void)make_configs(parse_options(a)); });
  };
  CHECK(contains(msg({"--frobnicate"}), "unknown option '--frobnicate'"));
  CHECK(contains(msg({"--ranks", "four"}), "--ranks needs an integer (got 'four')"));
  CHECK(contains(msg({"--ranks", "0"}), "--ranks must be in [1, 256] (got 0)"));
  CHECK(contains(msg({"--chunks"}), "--chunks needs a value"));
  CHECK(contains(msg({"--schedule", "pipedream"}), "unknown schedule 'pipedream'"));
  CHECK(contains(msg({"--ranks", "3"}), "ranks must be even"));
  CHECK(contains(msg({"--schedule", "dualpipe", "--chunks", "6"}), "chunks=6"));
  CHECK(contains(msg({"--inject-failure", "3"}), "failing rank"));  // dualpipev has 2 ranks by default
  CHECK(contains(msg({"--comm", "pigeon"}), "unknown --comm 'pigeon'"));
  CHECK(contains(msg({"--lr", "nan"}), "--lr needs a finite number"));
  CHECK(contains(msg({"--dp", "0"}), "--dp must be in [1, 256] (got 0)"));
  CHECK(contains(msg({"--accumulate", "two"}), "--accumulate needs an integer (got 'two')"));
  CHECK(contains(msg({"--dp", "2", "--inject-failure", "8"}), "failing rank (a grid rank) must be in [0, ranks x dp)"));
  const ProgramOptions g = parse({"--dp", "2", "--accumulate=3"});
  CHECK(g.dp == 2);
  CHECK(g.accumulate == 3);
  CHECK(make_configs(g)[0].dp == 2);
  CHECK(make_configs(g)[0].accumulate == 3);
  CHECK(parse({}).dp == 1);
  CHECK(parse({}).accumulate == 1);
}
