// The baseline schedules (1F1B, GPipe, ZB1P): hand-checked traces, structure over a grid of
// configurations, configuration errors, the registry, and constant-expression use.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "dualpipe/dualpipe.hpp"
#include "support/messages.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;

namespace {

constexpr std::array baseline_kinds{ScheduleKind::one_f_one_b, ScheduleKind::gpipe, ScheduleKind::zb1p};

// Chunk numbers of the ops of `kind` on one rank, in issue order.
std::vector<int> chunks_of(const std::vector<Op>& ops, OpKind kind) {
  std::vector<int> out;
  for (const Op& op : ops)
    if (op.kind == kind) out.push_back(op.chunk);
  return out;
}

std::vector<int> iota(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

// Largest number of chunks forwarded and not yet backwarded (B or Bw) on one rank.
int peak_in_flight(const std::vector<Op>& ops) {
  int now = 0, peak = 0;
  for (const Op& op : ops) {
    if (op.has_forward()) peak = std::max(peak, ++now);
    if (op.has_backward()) --now;
  }
  return peak;
}

// Index of the first op equal to `op`, or -1.
int index_of(const std::vector<Op>& ops, const Op& op) {
  const auto it = std::find(ops.begin(), ops.end(), op);
  return it == ops.end() ? -1 : static_cast<int>(it - ops.begin());
}

// Whether a commit lies strictly between positions a < b.
bool commit_between(const std::vector<Op>& ops, int a, int b) {
  for (int i = a + 1; i < b; ++i)
    if (ops[static_cast<std::size_t>(i)].kind == OpKind::commit) return true;
  return false;
}

}  // namespace

// ---- Exact traces, worked out by hand from the rules in one_f_one_b_walk.hpp / gpipe.hpp ------------

TEST_CASE("Baselines.Trace.1F1B.2ranks.3chunks") {
  // Rank 0: one warm-up forward; steady (F1,B0), (F2,B1); cool-down B2. Rank 1: no warm-up.
  const Trace expected = parse_trace(
      "# 1f1b ranks=2 chunks=3 mode=train\n"
      "rank 0: F0.0 sF0.0 | F0.1 sF0.1 rB0.0 | B0.0 F0.2 sF0.2 rB0.1 | B0.1 rB0.2 | B0.2\n"
      "rank 1: rF0.0 | F0.0 B0.0 sB0.0 rF0.1 | F0.1 B0.1 sB0.1 rF0.2 | F0.2 B0.2 sB0.2 |\n");
  CHECK(make_trace<OneFOneB>(2, 3) == expected);
  CHECK(make_trace(ScheduleKind::one_f_one_b, 2, 3) == expected);
}

TEST_CASE("Baselines.Trace.1F1B.3ranks.2chunks.FewerChunksThanRanks") {
  // Rank 0 would warm up with 2 forwards but has only 2 chunks: all warm-up, no steady state.
  const Trace expected = parse_trace(
      "# 1f1b ranks=3 chunks=2 mode=train\n"
      "rank 0: F0.0 sF0.0 | F0.1 sF0.1 | rB0.0 | B0.0 rB0.1 | B0.1\n"
      "rank 1: rF0.0 | F0.0 sF0.0 | rF0.1 | F0.1 sF0.1 rB0.0 | B0.0 sB0.0 | rB0.1 | B0.1 sB0.1 |\n"
      "rank 2: rF0.0 | F0.0 B0.0 sB0.0 rF0.1 | F0.1 B0.1 sB0.1 |\n");
  CHECK(make_trace<OneFOneB>(3, 2) == expected);
}

TEST_CASE("Baselines.Trace.GPipe.2ranks.2chunks") {
  const Trace expected = parse_trace(
      "# gpipe ranks=2 chunks=2 mode=train\n"
      "rank 0: F0.0 sF0.0 | F0.1 sF0.1 | rB0.0 | B0.0 rB0.1 | B0.1\n"
      "rank 1: rF0.0 | F0.0 rF0.1 | F0.1 B0.0 sB0.0 | B0.1 sB0.1 |\n");
  CHECK(make_trace<GPipe>(2, 2) == expected);
}

TEST_CASE("Baselines.Trace.ZB1P.2ranks.3chunks") {
  // Rank 0 runs W right after each input backward (lag 0); rank 1 lags one group, so its first W
  // comes after B0.1w (before the commit that waits for F0.2) and one W closes its step.
  const Trace expected = parse_trace(
      "# zb1p ranks=2 chunks=3 mode=train\n"
      "rank 0: F0.0 sF0.0 | F0.1 sF0.1 rB0.0 | B0.0w W F0.2 sF0.2 rB0.1 | B0.1w W rB0.2 | B0.2w W\n"
      "rank 1: rF0.0 | F0.0 B0.0w sB0.0 rF0.1 | F0.1 B0.1w sB0.1 W rF0.2 | F0.2 B0.2w sB0.2 | W W\n");
  CHECK(make_trace<ZB1P>(2, 3) == expected);
}

TEST_CASE("Baselines.Trace.ForwardMode.2ranks.2chunks") {
  const std::string body =
      "rank 0: F0.0 sF0.0 | F0.1 sF0.1 |\n"
      "rank 1: rF0.0 | F0.0 rF0.1 | F0.1\n";
  CHECK(format_trace(make_trace<OneFOneB>(2, 2, Mode::forward)) == "# 1f1b ranks=2 chunks=2 mode=forward\n" + body);
  CHECK(format_trace(make_trace<GPipe>(2, 2, Mode::forward)) == "# gpipe ranks=2 chunks=2 mode=forward\n" + body);
  CHECK(format_trace(make_trace<ZB1P>(2, 2, Mode::forward)) == "# zb1p ranks=2 chunks=2 mode=forward\n" + body);
}

TEST_CASE("Baselines.Trace.OneRankHasNoPosts") {
  CHECK(format_rank_line(0, OneFOneB::ops(1, 2, 0)) == "rank 0: F0.0 B0.0 F0.1 B0.1");
  CHECK(format_rank_line(0, ZB1P::ops(1, 2, 0)) == "rank 0: F0.0 B0.0w W F0.1 B0.1w W");
  CHECK(format_rank_line(0, GPipe::ops(1, 2, 0)) == "rank 0: F0.0 F0.1 B0.0 B0.1");
}

// ---- Structure over a grid ---------------------------------------------------------------------------

TEST_CASE("Baselines.EveryChunkForwardedAndBackwardedOnceInOrder") {
  for (ScheduleKind kind : baseline_kinds) {
    for (int P = 1; P <= 9; ++P) {
      for (int C = 1; C <= 3 * P + 1; ++C) {
        for (Mode mode : {Mode::train, Mode::forward}) {
          CAPTURE(schedule_name(kind));
          CAPTURE(P);
          CAPTURE(C);
          CAPTURE(to_string(mode));
          const Trace t = make_trace(kind, P, C, mode);
          for (int r = 0; r < P; ++r) {
            CAPTURE(r);
            const auto& ops = t.ops[static_cast<std::size_t>(r)];
            CHECK(chunks_of(ops, OpKind::forward) == iota(C));
            CHECK(chunks_of(ops, OpKind::forward_backward).empty());
            for (const Op& op : ops)
              if (op.kind != OpKind::commit && op.kind != OpKind::weight) CHECK(op.module == 0);
            const auto full = chunks_of(ops, OpKind::backward);
            const auto split = chunks_of(ops, OpKind::backward_input);
            const auto weights =
                std::count_if(ops.begin(), ops.end(), [](const Op& o) { return o.kind == OpKind::weight; });
            if (mode == Mode::forward) {
              CHECK(full.empty());
              CHECK(split.empty());
              CHECK(weights == 0);
              CHECK(chunks_of(ops, OpKind::send_gradient).empty());
              CHECK(chunks_of(ops, OpKind::recv_gradient).empty());
            } else if (kind == ScheduleKind::zb1p) {
              CHECK(full.empty());
              CHECK(split == iota(C));
              CHECK(weights == C);
            } else {
              CHECK(full == iota(C));
              CHECK(split.empty());
              CHECK(weights == 0);
            }
            // Posts exist exactly where there is a peer, one per chunk, in chunk order.
            CHECK(chunks_of(ops, OpKind::recv_activation) == (r > 0 ? iota(C) : std::vector<int>{}));
            CHECK(chunks_of(ops, OpKind::send_activation) == (r < P - 1 ? iota(C) : std::vector<int>{}));
            if (mode == Mode::train) {
              CHECK(chunks_of(ops, OpKind::recv_gradient) == (r < P - 1 ? iota(C) : std::vector<int>{}));
              CHECK(chunks_of(ops, OpKind::send_gradient) == (r > 0 ? iota(C) : std::vector<int>{}));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("Baselines.DataIsReceivedBeforeUseAndSentAfter") {
  // rX is committed before the compute that needs it; sX comes after the compute that makes it and is
  // committed later; the weight FIFO never runs dry; nothing is left posted at the end.
  for (ScheduleKind kind : baseline_kinds) {
    for (int P = 1; P <= 8; ++P) {
      for (int C = 1; C <= 2 * P + 2; ++C) {
        CAPTURE(schedule_name(kind));
        CAPTURE(P);
        CAPTURE(C);
        const Trace t = make_trace(kind, P, C);
        for (int r = 0; r < P; ++r) {
          CAPTURE(r);
          const auto& ops = t.ops[static_cast<std::size_t>(r)];
          const int n = static_cast<int>(ops.size());
          for (int c = 0; c < C; ++c) {
            CAPTURE(c);
            const int f = index_of(ops, Op::F(0, c));
            const int b = std::max(index_of(ops, Op::B(0, c)), index_of(ops, Op::Bw(0, c)));
            REQUIRE(f >= 0);
            REQUIRE(b > f);
            if (r > 0) {
              const int rf = index_of(ops, Op::rF(0, c));
              CHECK((rf >= 0 && rf < f && commit_between(ops, rf, f)));
              const int sb = index_of(ops, Op::sB(0, c));
              CHECK((sb > b && commit_between(ops, sb, n)));
            }
            if (r < P - 1) {
              const int sf = index_of(ops, Op::sF(0, c));
              CHECK((sf > f && commit_between(ops, sf, n)));
              const int rb = index_of(ops, Op::rB(0, c));
              CHECK((rb >= 0 && rb < b && commit_between(ops, rb, b)));
            }
          }
          int deferred = 0;
          bool pending = false;
          for (const Op& op : ops) {
            if (op.kind == OpKind::backward_input) ++deferred;
            if (op.kind == OpKind::weight) CHECK(--deferred >= 0);
            if (is_post(op.kind)) pending = true;
            if (op.kind == OpKind::commit) {
              CHECK(pending);  // '|' only after a post
              pending = false;
            }
          }
          CHECK(deferred == 0);
          CHECK_FALSE(pending);
        }
      }
    }
  }
}

TEST_CASE("Baselines.SendsAndReceivesPairInOrder") {
  // The k-th sF of rank r is the k-th rF of rank r+1; the k-th sB of rank r+1 the k-th rB of rank r.
  for (ScheduleKind kind : baseline_kinds) {
    for (int P = 2; P <= 8; ++P) {
      for (int C = 1; C <= 2 * P + 2; ++C) {
        CAPTURE(schedule_name(kind));
        CAPTURE(P);
        CAPTURE(C);
        const Trace t = make_trace(kind, P, C);
        for (int r = 0; r + 1 < P; ++r) {
          const auto& lo = t.ops[static_cast<std::size_t>(r)];
          const auto& hi = t.ops[static_cast<std::size_t>(r + 1)];
          CHECK(chunks_of(lo, OpKind::send_activation) == chunks_of(hi, OpKind::recv_activation));
          CHECK(chunks_of(hi, OpKind::send_gradient) == chunks_of(lo, OpKind::recv_gradient));
        }
      }
    }
  }
}

TEST_CASE("Baselines.ActivationMemory") {
  // 1F1B keeps at most min(P-r, C) chunks in flight on rank r; ZB1P keeps the same forward/backward
  // order and thus the same figure; GPipe holds all C.
  for (int P = 1; P <= 10; ++P) {
    for (int C = 1; C <= 3 * P; ++C) {
      CAPTURE(P);
      CAPTURE(C);
      for (int r = 0; r < P; ++r) {
        CAPTURE(r);
        CHECK(peak_in_flight(OneFOneB::ops(P, C, r)) == std::min(P - r, C));
        CHECK(peak_in_flight(ZB1P::ops(P, C, r)) == std::min(P - r, C));
        CHECK(peak_in_flight(GPipe::ops(P, C, r)) == C);
      }
    }
  }
}

TEST_CASE("Baselines.ZB1PWeightsLagByRank") {
  // The paper's steady triple on stage r is (F x, B x-(P-1-r), W x-(P-1)): W of chunk j runs right
  // after the input backward of chunk j + r. With P=4, C=8 on rank 2, W#0 follows B0.2w.
  const auto ops = ZB1P::ops(4, 8, 2);
  const int first_w = index_of(ops, Op::W());
  const int b2 = index_of(ops, Op::Bw(0, 2));
  REQUIRE(first_w > b2);
  for (int i = b2 + 1; i < first_w; ++i) CHECK(ops[static_cast<std::size_t>(i)].kind != OpKind::backward_input);
  // The last rank commits its final gradient send first (rank 2 waits for it), then runs the group due
  // after B0.7w and the P-1 = 3 lagging ones: four W in a row close its step.
  const auto last = ZB1P::ops(4, 8, 3);
  REQUIRE(last.size() >= 4);
  for (std::size_t i = last.size() - 4; i < last.size(); ++i) CHECK(last[i].kind == OpKind::weight);
  CHECK(last[last.size() - 5].kind == OpKind::commit);
}

// ---- Configuration errors, placement, registry -------------------------------------------------------

TEST_CASE("Baselines.ConfigErrorsNameRuleAndValues") {
  auto zero_ranks = config_message([] { (void)OneFOneB::ops(0, 4, 0); });
  CHECK(contains(zero_ranks, "1f1b"));
  CHECK(contains(zero_ranks, "ranks must be at least 1 (got ranks=0)"));
  auto zero_chunks = config_message([] { (void)GPipe::ops(2, 0, 0); });
  CHECK(contains(zero_chunks, "gpipe"));
  CHECK(contains(zero_chunks, "chunks must be at least 1 (got chunks=0)"));
  auto bad_rank = config_message([] { (void)ZB1P::ops(4, 8, 4); });
  CHECK(contains(bad_rank, "zb1p"));
  CHECK(contains(bad_rank, "rank must be in [0, ranks)"));
  CHECK(contains(bad_rank, "rank=4"));
  CHECK(contains(bad_rank, "ranks=4"));
  CHECK(contains(config_message([] { (void)OneFOneB::ops(4, 8, -1); }), "rank=-1"));
  auto bad_module = config_message([] { (void)OneFOneB::placement(4, 8, 0, 1); });
  CHECK(contains(bad_module, "module must be in [0, 1)"));
  CHECK(contains(bad_module, "module=1"));
  CHECK(contains(config_message([] { (void)make_trace(ScheduleKind::zb1p, 3, -2); }), "chunks=-2"));
  // No other constraint: fewer chunks than ranks, odd numbers, one rank.
  for (ScheduleKind kind : baseline_kinds) {
    CHECK_NOTHROW(check_config(kind, 7, 3));
    CHECK_NOTHROW(check_config(kind, 1, 1));
    CHECK_NOTHROW((void)schedule_ops(kind, 5, 2, 4));
  }
}

TEST_CASE("Baselines.Placement") {
  for (ScheduleKind kind : baseline_kinds) {
    CAPTURE(schedule_name(kind));
    CHECK(modules_per_rank(kind) == 1);
    for (int r = 0; r < 4; ++r) {
      const ModulePlacement p = schedule_placement(kind, 4, 6, r, 0);
      CHECK(p.stage == r);
      CHECK(p.num_stages == 4);
      CHECK(p.chunk_offset == 0);
      CHECK(p.num_chunks == 6);
      CHECK(p.prev_rank == (r > 0 ? r - 1 : -1));
      CHECK(p.next_rank == (r < 3 ? r + 1 : -1));
      CHECK(p.local_prev_module == -1);
      CHECK(p.local_next_module == -1);
      CHECK(p.is_first_stage() == (r == 0));
      CHECK(p.is_last_stage() == (r == 3));
    }
  }
}

TEST_CASE("Baselines.Registry") {
  CHECK(all_schedule_kinds.size() == 5);
  CHECK(schedule_names() == "dualpipe, dualpipev, 1f1b, gpipe, zb1p");
  CHECK(parse_schedule_kind("1f1b") == ScheduleKind::one_f_one_b);
  CHECK(parse_schedule_kind("gpipe") == ScheduleKind::gpipe);
  CHECK(parse_schedule_kind("zb1p") == ScheduleKind::zb1p);
  CHECK(schedule_name(ScheduleKind::zb1p) == ZB1P::name);
  CHECK(schedule_ops(ScheduleKind::gpipe, 3, 4, 1) == GPipe::ops(3, 4, 1));
  CHECK(make_trace(ScheduleKind::one_f_one_b, 4, 8).schedule == "1f1b");
  // A trace printed and parsed back is the same trace.
  for (ScheduleKind kind : baseline_kinds) {
    const Trace t = make_trace(kind, 5, 7);
    CHECK(parse_trace(format_trace(t)) == t);
  }
}

// ---- Constant expressions ----------------------------------------------------------------------------

namespace {
constexpr int count_kind(const std::vector<Op>& ops, OpKind kind) {
  int n = 0;
  for (const Op& op : ops) n += op.kind == kind;
  return n;
}
}  // namespace

// Computed by the compiler: rank 1 of 1F1B 4x8 runs 8 forwards and 8 backwards; ZB1P rank 3 runs 8 W.
static_assert(count_kind(OneFOneB::ops(4, 8, 1), OpKind::forward) == 8);
static_assert(count_kind(OneFOneB::ops(4, 8, 1), OpKind::backward) == 8);
static_assert(count_kind(ZB1P::ops(4, 8, 3), OpKind::weight) == 8);
static_assert(count_kind(GPipe::ops(3, 5, 0), OpKind::recv_activation) == 0);
static_assert(OneFOneB::ops(2, 3, 0).size() == 16);  // the hand-checked trace above
static_assert(OneFOneB::placement(3, 4, 2, 0).next_rank == -1);

TEST_CASE("Baselines.ConstexprAgreesWithRuntime") {
  constexpr std::size_t n = ZB1P::ops(4, 8, 2).size();
  CHECK(n == schedule_ops(ScheduleKind::zb1p, 4, 8, 2).size());
  constexpr int commits = count_kind(GPipe::ops(4, 4, 1), OpKind::commit);
  CHECK(commits == count_kind(schedule_ops(ScheduleKind::gpipe, 4, 4, 1), OpKind::commit));
}
