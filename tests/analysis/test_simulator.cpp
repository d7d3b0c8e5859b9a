// The simulator against the spec's figures (bubble formula, the 8x20 examples, PP+1 activations) and
// against hand-computed timelines.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "dualpipe/analysis/simulator.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "trace_edit.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;

namespace {

constexpr double eps = 1e-9;

Costs spec_costs(double fb) {
  Costs c;  // F = W = 1, B = 2, free communication
  c.forward_backward = fb;
  return c;
}

/// Configurations of the formula test: a few chunk counts from 2P up.
std::vector<int> chunk_counts(int p, bool even_only) {
  std::vector<int> out{2 * p, 2 * p + 2, 3 * p + (even_only ? (3 * p) % 2 : 1), 4 * p, 4 * p + 6};
  return out;
}

/// Two ranks, one module each, written by hand (stage 0 on rank 0, stage 1 on rank 1).
ModulePlacement two_stage(int rank, int) { return two_stage_placement(rank, 1); }

}  // namespace

TEST_CASE("Simulator.Spec.DualPipe8x20") {
  const Trace t = make_trace(ScheduleKind::dualpipe, 8, 20);
  {
    const Timeline tl = simulate(t, ScheduleKind::dualpipe, spec_costs(3));
    const Summary s = summarize(tl, t);
    CHECK(s.makespan == doctest::Approx(66).epsilon(eps));
    for (double idle : s.idle) CHECK(idle == doctest::Approx(6).epsilon(eps));
    CHECK(s.max_idle() == doctest::Approx(6).epsilon(eps));
    CHECK(s.bubble_ratio == doctest::Approx(6.0 / 66).epsilon(eps));
    CHECK(s.schedule == "dualpipe");
    CHECK(s.ranks == 8);
    CHECK(s.chunks == 20);
  }
  {
    const Summary s = summarize(simulate(t, ScheduleKind::dualpipe, spec_costs(2.5)), t);
    CHECK(s.makespan == doctest::Approx(59).epsilon(eps));
    const std::vector<double> expect{3.5, 4, 4.5, 4.5, 4.5, 4.5, 4, 3.5};
    REQUIRE(s.idle.size() == expect.size());
    for (std::size_t r = 0; r < expect.size(); ++r) {
      CAPTURE(r);
      CHECK(s.idle[r] == doctest::Approx(expect[r]).epsilon(eps));
    }
  }
}

TEST_CASE("Simulator.Spec.BubbleFormula.DualPipe") {
  // Worst rank idles (PP/2-1)(F&B+B-3W) with F=W=1, B=2, F&B in [2, 3]; PP = P.
  for (int p = 2; p <= 16; p += 2)
    for (int c : chunk_counts(p, true)) {
      const Trace t = make_trace(ScheduleKind::dualpipe, p, c);
      for (double fb : {2.0, 2.25, 2.5, 2.75, 3.0}) {
        CAPTURE(p);
        CAPTURE(c);
        CAPTURE(fb);
        const Summary s = summarize(simulate(t, ScheduleKind::dualpipe, spec_costs(fb)), t);
        CHECK(std::abs(s.max_idle() - (p / 2.0 - 1) * (fb + 2 - 3)) < eps);
      }
    }
}

TEST_CASE("Simulator.Spec.BubbleFormula.DualPipeV") {
  // Same formula with PP = 2P stages on P ranks (so (P-1)(F&B+B-3W)); any C >= 2P, odd ones too.
  for (int p = 1; p <= 16; ++p)
    for (int c : chunk_counts(p, false)) {
      const Trace t = make_trace(ScheduleKind::dualpipev, p, c);
      for (double fb : {2.0, 2.25, 2.5, 2.75, 3.0}) {
        CAPTURE(p);
        CAPTURE(c);
        CAPTURE(fb);
        const Summary s = summarize(simulate(t, ScheduleKind::dualpipev, spec_costs(fb)), t);
        CHECK(std::abs(s.max_idle() - (2 * p / 2.0 - 1) * (fb + 2 - 3)) < eps);
      }
    }
}

TEST_CASE("Simulator.Spec.PeakActivations") {
  struct Case {
    ScheduleKind kind;
    int ranks, chunks, pp;
  };
  for (const Case& k : {Case{ScheduleKind::dualpipe, 8, 20, 8}, Case{ScheduleKind::dualpipev, 4, 10, 8},
                        Case{ScheduleKind::dualpipe, 16, 32, 16}, Case{ScheduleKind::dualpipe, 16, 40, 16},
                        Case{ScheduleKind::dualpipev, 4, 11, 8}, Case{ScheduleKind::dualpipe, 4, 20, 4}}) {
    CAPTURE(schedule_name(k.kind));
    CAPTURE(k.ranks);
    CAPTURE(k.chunks);
    const Trace t = make_trace(k.kind, k.ranks, k.chunks);
    const std::vector<int> expect(static_cast<std::size_t>(k.ranks), k.pp + 1);
    CHECK(peak_activations(t) == expect);
    CHECK(peak_activations(t, ActivationRelease::weight) == expect);
    // The summary of a simulated step reports the same.
    CHECK(summarize(simulate(t, k.kind), t).peak_activations == expect);
  }
}

TEST_CASE("Simulator.PeakActivations.Conventions") {
  Trace t{"handmade", 1, 2, Mode::train, {{}}};
  // A deferred backward frees at Bw by default, at its W with ActivationRelease::weight.
  set_tokens(t, 0, {"F0.0", "B0.0w", "F0.1", "W", "B0.1"});
  CHECK(peak_activations(t) == std::vector<int>{1});
  CHECK(peak_activations(t, ActivationRelease::weight) == std::vector<int>{2});
  // An FB holds its forward's chunk before its backward frees the other one.
  set_tokens(t, 0, {"F0.0", "FB0.1/0.0", "B0.1"});
  CHECK(peak_activations(t) == std::vector<int>{2});
  // W frees the oldest group's chunk, one per W.
  set_tokens(t, 0, {"F0.0", "F0.1", "B0.0w", "B0.1w", "F0.2", "W", "W", "B0.2"});
  CHECK(peak_activations(t) == std::vector<int>{2});
  CHECK(peak_activations(t, ActivationRelease::weight) == std::vector<int>{3});
}

TEST_CASE("Simulator.HandComputed.Rendezvous") {
  // rank 0: F 0-1, its commit launches sF at 1; rank 1's commit launched rF at 0 -> transfer ends at
  // max(1, 0) + 0.5 = 1.5. Rank 1: F 1.5-2.5, B 2.5-4.5, commit at 4.5 -> gradient arrives at 5 on
  // rank 0 (its rB was launched at 1.5, when its second commit began), B 5-7.
  Trace t{"handmade", 2, 1, Mode::train, {{}, {}}};
  set_tokens(t, 0, {"F0.0", "sF0.0", "|", "rB0.0", "|", "B0.0"});
  set_tokens(t, 1, {"rF0.0", "|", "F0.0", "B0.0", "sB0.0", "|"});
  Costs c;
  c.latency = 0.25;
  c.bytes = 1;
  c.bandwidth = 4;  // transfer = 0.25 + 1/4 = 0.5
  const Timeline tl = simulate(t, two_stage, 1, c);
  CHECK(tl.makespan() == doctest::Approx(7));
  CHECK(tl.time_unit == "units");
  auto span_of = [&](int r, int index, Span::Lane lane) -> const Span& {
    for (const Span& s : tl.spans[static_cast<std::size_t>(r)])
      if (s.index == index && s.lane == lane) return s;
    FAIL("no span");
    return tl.spans[0][0];
  };
  CHECK(span_of(0, 1, Span::Lane::transfer).start == doctest::Approx(1));
  CHECK(span_of(0, 1, Span::Lane::transfer).end == doctest::Approx(1.5));
  CHECK(span_of(1, 0, Span::Lane::transfer).start == doctest::Approx(0));
  CHECK(span_of(1, 1, Span::Lane::wait).end == doctest::Approx(1.5));
  CHECK(span_of(1, 2, Span::Lane::compute).start == doctest::Approx(1.5));
  CHECK(span_of(0, 3, Span::Lane::transfer).start == doctest::Approx(1.5));
  CHECK(span_of(0, 4, Span::Lane::wait).end == doctest::Approx(5));
  CHECK(span_of(0, 5, Span::Lane::compute).start == doctest::Approx(5));
  CHECK(span_of(1, 5, Span::Lane::wait).start == doctest::Approx(4.5));
  CHECK(span_of(1, 5, Span::Lane::wait).end == doctest::Approx(5));
  CHECK(tl.idle(0) == doctest::Approx(4));
}

TEST_CASE("Simulator.HandComputed.Async") {
  // Rank 0 sends F0.0 then, in the same commit, would wait for nothing: async lets rank 0 run F0.1 while
  // the transfer of F0.0 is in flight. Rendezvous makes it wait for the transfer at its commit.
  Trace t{"handmade", 2, 2, Mode::forward, {{}, {}}};
  set_tokens(t, 0, {"F0.0", "sF0.0", "|", "F0.1", "sF0.1", "|"});
  set_tokens(t, 1, {"rF0.0", "rF0.1", "|", "F0.0", "F0.1"});
  auto place = [](int rank, int) { return two_stage_placement(rank, 2); };
  Costs c;
  c.latency = 2;
  // Rendezvous: rank 0 F 0-1, commit 1 -> sF0.0 done at max(1, 0) + 2 = 3; F0.1 3-4, sF0.1 done 6.
  // Rank 1's single commit returns at 6: F0.0 6-7, F0.1 7-8.
  CHECK(simulate(t, place, 1, c).makespan() == doctest::Approx(8));
  // Async: F0.0 0-1, sF0.0 issued at 1, arrives at 3; F0.1 1-2, arrives 4. Rank 1: F0.0 3-4, F0.1 4-5.
  const Timeline a = simulate(t, place, 1, c, CommModel::async);
  CHECK(a.makespan() == doctest::Approx(5));
  // Rank 1 waited 3 before F0.0 (a wait span whose op is that forward).
  bool found = false;
  for (const Span& s : a.spans[1])
    if (s.lane == Span::Lane::wait) {
      CHECK(s.op == Op::F(0, 0));
      CHECK(s.start == doctest::Approx(0));
      CHECK(s.end == doctest::Approx(3));
      found = true;
    }
  CHECK(found);
}

TEST_CASE("Simulator.AsyncNeverSlower") {
  for (auto [kind, p, c] : {std::tuple{ScheduleKind::dualpipe, 8, 20}, std::tuple{ScheduleKind::dualpipe, 4, 10},
                            std::tuple{ScheduleKind::dualpipev, 4, 9}, std::tuple{ScheduleKind::dualpipev, 3, 12},
                            std::tuple{ScheduleKind::dualpipe, 16, 36}}) {
    const Trace t = make_trace(kind, p, c);
    for (double fb : {2.0, 2.5, 3.0}) {
      CAPTURE(p);
      CAPTURE(c);
      CAPTURE(fb);
      const Costs costs = spec_costs(fb);
      CHECK(simulate(t, kind, costs, CommModel::async).makespan() <=
            simulate(t, kind, costs, CommModel::rendezvous).makespan() + eps);
    }
  }
  // With latency, rendezvous commits stall compute that async overlaps.
  const Trace t = make_trace(ScheduleKind::dualpipe, 8, 20);
  for (double latency : {0.1, 0.5, 1.0}) {
    CAPTURE(latency);
    Costs costs = spec_costs(3);
    costs.latency = latency;
    const double rendezvous = simulate(t, ScheduleKind::dualpipe, costs).makespan();
    const double async = simulate(t, ScheduleKind::dualpipe, costs, CommModel::async).makespan();
    CHECK(async < rendezvous - eps);
    CHECK(rendezvous > 66);  // latency costs something under rendezvous
  }
}

TEST_CASE("Simulator.TimelineInvariants") {
  Costs costs = spec_costs(2.5);
  costs.latency = 0.3;
  costs.bytes = 10;
  costs.bandwidth = 100;
  for (CommModel model : {CommModel::rendezvous, CommModel::async})
    for (auto [kind, p, c, mode] : {std::tuple{ScheduleKind::dualpipe, 8, 20, Mode::train},
                                    std::tuple{ScheduleKind::dualpipev, 4, 11, Mode::train},
                                    std::tuple{ScheduleKind::dualpipe, 4, 8, Mode::forward},
                                    std::tuple{ScheduleKind::dualpipev, 1, 3, Mode::train}}) {
      CAPTURE(to_string(model));
      CAPTURE(schedule_name(kind));
      CAPTURE(p);
      CAPTURE(c);
      const Trace t = make_trace(kind, p, c, mode);
      const Timeline tl = simulate(t, kind, costs, model);
      REQUIRE(tl.spans.size() == static_cast<std::size_t>(p));
      CHECK(tl.mode == mode);
      for (int r = 0; r < p; ++r) {
        CAPTURE(r);
        const auto& ops = t.ops[static_cast<std::size_t>(r)];
        double op_cost = 0;
        int compute_ops = 0, posts = 0;
        for (const Op& op : ops) {
          op_cost += costs.of(op.kind);
          compute_ops += is_compute(op.kind);
          posts += is_post(op.kind);
        }
        double previous_end = 0, busy = 0, previous_transfer = 0;
        int compute_spans = 0, transfer_spans = 0;
        for (const Span& s : tl.spans[static_cast<std::size_t>(r)]) {
          CHECK(s.end >= s.start);
          REQUIRE(s.index >= 0);
          REQUIRE(s.index < static_cast<int>(ops.size()));
          CHECK(s.op == ops[static_cast<std::size_t>(s.index)]);
          if (s.lane == Span::Lane::compute) {
            CHECK(s.start >= previous_end - eps);  // one compute op at a time
            previous_end = s.end;
            busy += s.duration();
            ++compute_spans;
            CHECK(s.duration() == doctest::Approx(costs.of(s.op.kind)));
          } else if (s.lane == Span::Lane::transfer) {
            CHECK(s.start >= previous_transfer - eps);  // sorted by launch
            previous_transfer = s.start;
            CHECK(s.duration() >= costs.transfer() - eps);
            ++transfer_spans;
          }
        }
        CHECK(compute_spans == compute_ops);
        CHECK(transfer_spans == posts);
        CHECK(busy == doctest::Approx(op_cost));
        CHECK(tl.busy(r) == doctest::Approx(op_cost));
      }
      const Summary s = summarize(tl, t);
      CHECK(s.makespan == doctest::Approx(tl.makespan()));
      CHECK(s.bubble_ratio == doctest::Approx(tl.bubble_ratio()));
      for (int r = 0; r < p; ++r) CHECK(s.idle[static_cast<std::size_t>(r)] == doctest::Approx(tl.idle(r)));
    }
}

TEST_CASE("Simulator.InvalidTracesThrow") {
  Trace t = make_trace(ScheduleKind::dualpipe, 2, 4);
  CHECK_NOTHROW((void)simulate(t));
  // Deadlock (see Validator.Break.DeadlockByReorderedCommits), under both models.
  for (int r = 0; r < 2; ++r) {
    auto toks = tokens(t, r);
    const std::string send = toks[1];
    toks.erase(toks.begin() + 1);
    toks.insert(toks.begin() + 3, {send, "|"});
    set_tokens(t, r, toks);
  }
  for (CommModel model : {CommModel::rendezvous, CommModel::async}) {
    try {
      (void)simulate(t, ScheduleKind::dualpipe, Costs{}, model);
      FAIL("no ValidationError");
    } catch (const ValidationError& e) {
      CHECK(e.rule() == ValidationRule::deadlock);
      CHECK(e.result().stuck.size() == 2);
      CHECK(std::string(e.what()).find("rank 1 is stuck at op 2") != std::string::npos);
    }
  }
  Trace u = make_trace(ScheduleKind::dualpipe, 2, 4);
  erase_at(u, 0, find(u, 0, "W"));
  CHECK_THROWS_AS((void)simulate(u), ValidationError);
  // Invalid costs are a configuration error.
  Costs bad;
  bad.weight = 5;
  CHECK_THROWS_AS((void)simulate(make_trace(ScheduleKind::dualpipe, 2, 4), bad), ConfigError);
}

namespace {

/// One rank, two stages in a row on it (module 0 = stage 0 feeds module 1 = stage 1): nothing remote, so the
/// timeline is the sum of the per-stage costs in issue order, written out by hand below.
ModulePlacement one_rank_two_stages(int, int module, int chunks) {
  ModulePlacement p;
  p.stage = module;
  p.num_stages = 2;
  p.num_chunks = chunks;
  if (module == 0) p.local_next_module = 1;
  else p.local_prev_module = 0;
  return p;
}

Costs stage_costs(double f, double b, double w, double fb) {
  Costs c;
  c.forward = f;
  c.backward = b;
  c.weight = w;
  c.forward_backward = fb;
  return c;
}

}  // namespace

TEST_CASE("Simulator.StageCosts.EqualStagesGiveTheSameTimeline") {
  // Per-stage costs that are all equal must reproduce the single-Costs simulation span for span.
  for (auto [kind, p, c] : {std::tuple{ScheduleKind::dualpipe, 4, 10}, std::tuple{ScheduleKind::dualpipev, 3, 12},
                            std::tuple{ScheduleKind::one_f_one_b, 4, 8}, std::tuple{ScheduleKind::zb1p, 4, 8},
                            std::tuple{ScheduleKind::gpipe, 3, 6}}) {
    const Trace t = make_trace(kind, p, c);
    const int stages = placement_of(kind, p, c)(0, 0).num_stages;
    Costs costs = spec_costs(2.5);
    costs.latency = 0.3;
    for (CommModel model : {CommModel::rendezvous, CommModel::async}) {
      CAPTURE(t.schedule);
      CAPTURE(to_string(model));
      const Timeline one = simulate(t, kind, costs, model);
      const Timeline per_stage =
          simulate(t, kind, StageCosts(std::vector<Costs>(static_cast<std::size_t>(stages), costs)), model);
      CHECK(per_stage.makespan() == doctest::Approx(one.makespan()).epsilon(eps));
      REQUIRE(per_stage.spans.size() == one.spans.size());
      for (std::size_t r = 0; r < one.spans.size(); ++r) {
        REQUIRE(per_stage.spans[r].size() == one.spans[r].size());
        for (std::size_t i = 0; i < one.spans[r].size(); ++i) {
          CHECK(per_stage.spans[r][i].start == doctest::Approx(one.spans[r][i].start).epsilon(eps));
          CHECK(per_stage.spans[r][i].end == doctest::Approx(one.spans[r][i].end).epsilon(eps));
        }
      }
    }
  }
}

TEST_CASE("Simulator.StageCosts.HandComputed") {
  const StageCosts costs({stage_costs(1, 2, 0.5, 2.5), stage_costs(3, 5, 4, 7)});
  auto place = [](int rank, int module) { return one_rank_two_stages(rank, module, 2); };
  auto durations = [](const Timeline& tl) {
    std::vector<double> out;
    for (const Span& s : tl.spans[0])
      if (s.lane == Span::Lane::compute) out.push_back(s.duration());
    return out;
  };
  auto check_durations = [](const std::vector<double>& got, const std::vector<double>& want) {
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      CAPTURE(i);
      CHECK(got[i] == doctest::Approx(want[i]).epsilon(eps));
    }
  };
  SUBCASE("deferred weights run oldest first, each at its own stage's W") {
    Trace t{"handmade", 1, 2, Mode::train, {{}}};
    // F of stage 0 (1) and stage 1 (3); input parts B-W: stage 1 (5-4 = 1), stage 0 (2-0.5 = 1.5); then the
    // FIFO: the first W is stage 1's (4), the second stage 0's (0.5). Chunk 1 likewise with full backwards.
    set_tokens(t, 0, {"F0.0", "F1.0", "B1.0w", "B0.0w", "W", "W", "F0.1", "F1.1", "B1.1", "B0.1"});
    const Timeline tl = simulate(t, place, 2, costs);
    check_durations(durations(tl), {1, 3, 1, 1.5, 4, 0.5, 1, 3, 5, 2});
    CHECK(tl.makespan() == doctest::Approx(22).epsilon(eps));
  }
  SUBCASE("an F&B pairs one stage's forward with another's backward") {
    Trace t{"handmade", 1, 2, Mode::train, {{}}};
    // FB0.1/1.0: forward of stage 0 (1) + backward of stage 1 (5) - the smaller overlap saving
    // (stage 0: 1 + 2 - 2.5 = 0.5; stage 1: 3 + 5 - 7 = 1) = 5.5.
    set_tokens(t, 0, {"F0.0", "F1.0", "FB0.1/1.0", "B0.0", "F1.1", "B1.1", "B0.1"});
    check_durations(durations(simulate(t, place, 2, costs)), {1, 3, 5.5, 2, 3, 5, 2});
    check_durations(durations(simulate(t, place, 2, costs, CommModel::async)), {1, 3, 5.5, 2, 3, 5, 2});
  }
}

TEST_CASE("Simulator.StageCosts.UnevenStagesOnARealSchedule") {
  // DualPipeV on 2 ranks: rank 0 holds stages 0 and 3, rank 1 stages 1 and 2. A cheaper first stage leaves
  // rank 0 idle by what it saves; each rank's busy time is the sum of its stages' F + B over the chunks
  // (F&B saves nothing here: FB = F + B).
  const int chunks = 20;
  const Trace t = make_trace(ScheduleKind::dualpipev, 2, chunks);
  const Costs full = stage_costs(3, 6, 3, 9), first = stage_costs(3, 4.5, 3, 7.5);
  const StageCosts uneven({first, full, full, full});
  const Timeline even_tl = simulate(t, ScheduleKind::dualpipev, full, CommModel::async);
  const Timeline uneven_tl = simulate(t, ScheduleKind::dualpipev, uneven, CommModel::async);
  auto busy = [](const Timeline& tl, int r) {
    double b = 0;
    for (const Span& s : tl.spans[static_cast<std::size_t>(r)])
      if (s.lane == Span::Lane::compute) b += s.duration();
    return b;
  };
  CHECK(busy(uneven_tl, 0) == doctest::Approx(chunks * (7.5 + 9)).epsilon(eps));
  CHECK(busy(uneven_tl, 1) == doctest::Approx(chunks * (9 + 9)).epsilon(eps));
  CHECK(busy(even_tl, 0) == doctest::Approx(chunks * 18).epsilon(eps));
  // Rank 1 does the same work as before, so the step cannot get shorter than its busy time, and the
  // bubble grows by rank 0's saving at least in part.
  CHECK(uneven_tl.makespan() >= busy(uneven_tl, 1) - eps);
  CHECK(summarize(uneven_tl, t).bubble_ratio > summarize(even_tl, t).bubble_ratio);
}

TEST_CASE("Simulator.StageCosts.BadInputThrows") {
  CHECK_THROWS_WITH_AS(StageCosts(std::vector<Costs>{}), doctest::Contains("at least one stage"), ConfigError);
  CHECK_THROWS_WITH_AS(StageCosts({Costs{}, stage_costs(1, 1, 2, 2)}), doctest::Contains("stage 1: cost W"),
                       ConfigError);
  Costs slow_link;
  slow_link.latency = 1;
  CHECK_THROWS_WITH_AS(StageCosts({Costs{}, slow_link}), doctest::Contains("same transfer"), ConfigError);
  // DualPipeV on 2 ranks has 4 stages.
  const Trace t = make_trace(ScheduleKind::dualpipev, 2, 8);
  CHECK_THROWS_WITH_AS((void)simulate(t, ScheduleKind::dualpipev, StageCosts({Costs{}, Costs{}})),
                       doctest::Contains("StageCosts has 2 stages but the schedule places 4"), ConfigError);
  CHECK(simulate(t, ScheduleKind::dualpipev, StageCosts(Costs{})).makespan() ==
        doctest::Approx(simulate(t, ScheduleKind::dualpipev, Costs{}).makespan()).epsilon(eps));
}
