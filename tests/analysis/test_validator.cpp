// The validator: every rule broken by hand on a real schedule, each reported with its rule, rank and op.
#include <doctest/doctest.h>

#include <string>

#include "dualpipe/analysis/validator.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "support/golden_files.hpp"
#include "support/messages.hpp"
#include "trace_edit.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;

namespace {

/// Validates `t` as a trace of the schedule its header names and checks the reported failure.
void expect_failure(const Trace& t, ValidationRule rule, int rank, int index) {
  const ValidationResult r = validate(t);
  INFO(r.message);
  REQUIRE_FALSE(r.ok);
  CHECK(to_string(r.rule) == to_string(rule));
  CHECK(r.rank == rank);
  CHECK(r.index == index);
  // The message names the rule and shows the faulty op marked in the grid.
  CHECK(contains(r.message, "[rule " + std::string(to_string(rule)) + "]"));
  const auto& ops = t.ops[static_cast<std::size_t>(rank)];
  const std::string marked =
      index < static_cast<int>(ops.size()) ? to_token(ops[static_cast<std::size_t>(index)]) : std::string("END");
  CHECK(contains(r.message, ">>" + marked + "<<"));
}

Trace dualpipe_4x8() { return make_trace(ScheduleKind::dualpipe, 4, 8); }

}  // namespace

TEST_CASE("Validator.GoldenTracesAreValid") {
  const auto files = golden_files();
  REQUIRE(files.size() >= 17);
  for (const auto& path : files) {
    CAPTURE(path.filename().string());
    const Trace t = parse_trace(read_text(path));
    const ValidationResult r = validate(t);
    INFO(r.message);
    CHECK(r.ok);
    CHECK(r.rule == ValidationRule::none);
    CHECK_NOTHROW(check_valid(t, parse_schedule_kind(t.schedule)));
  }
}

TEST_CASE("Validator.Break.DuplicateForward") {
  Trace t = dualpipe_4x8();
  const int i = find(t, 0, "F0.1");
  replace_at(t, 0, i, "F0.0");
  expect_failure(t, ValidationRule::duplicate_forward, 0, i);
}

TEST_CASE("Validator.Break.MissingBackward") {
  // Rank 0 ends "B0.3w W"; without both, chunk 3 of module 0 is never backwarded (its rB is still
  // received and committed, so only the backward itself is missing).
  Trace t = dualpipe_4x8();
  auto toks = tokens(t, 0);
  REQUIRE(toks.size() >= 2);
  REQUIRE(toks[toks.size() - 2] == "B0.3w");
  REQUIRE(toks.back() == "W");
  toks.resize(toks.size() - 2);
  set_tokens(t, 0, toks);
  expect_failure(t, ValidationRule::missing_backward, 0, static_cast<int>(toks.size()));
}

TEST_CASE("Validator.Break.BackwardBeforeForward") {
  // Rank 3 holds the last stage of direction 0 (module 0): its backward needs no receive.
  Trace t = dualpipe_4x8();
  const int f = find(t, 3, "F0.0");
  move_token(t, 3, find(t, 3, "B0.0w"), f);
  REQUIRE(tokens(t, 3)[static_cast<std::size_t>(f)] == "B0.0w");
  expect_failure(t, ValidationRule::backward_before_forward, 3, f);
}

TEST_CASE("Validator.Break.DuplicateBackward") {
  Trace t = dualpipe_4x8();
  const int b = find(t, 0, "B1.2");  // module 1 is the last stage of direction 1 on rank 0
  insert_at(t, 0, b + 1, "B1.2");
  expect_failure(t, ValidationRule::duplicate_backward, 0, b + 1);
}

TEST_CASE("Validator.Break.WeightWithoutDeferredGroup") {
  // The first W of rank 0 runs the group of B1.0w; make that a full backward.
  Trace t = dualpipe_4x8();
  replace_at(t, 0, find(t, 0, "B1.0w"), "B1.0");
  expect_failure(t, ValidationRule::weight_without_deferred_group, 0, find(t, 0, "W"));
}

TEST_CASE("Validator.Break.LeftoverDeferredGroup") {
  Trace t = dualpipe_4x8();
  auto toks = tokens(t, 0);
  REQUIRE(toks.back() == "W");
  toks.pop_back();
  set_tokens(t, 0, toks);
  expect_failure(t, ValidationRule::leftover_deferred_group, 0, static_cast<int>(toks.size()));
}

TEST_CASE("Validator.Break.SendReceiveChunkMismatch") {
  // Rank 1 receives chunk 2 of module 0 before chunk 1; rank 0 sends 1 before 2: the second send
  // (sF0.1 on rank 0) pairs with rF0.2.
  Trace t = dualpipe_4x8();
  const int a = find(t, 1, "rF0.1"), b = find(t, 1, "rF0.2");
  replace_at(t, 1, a, "rF0.2");
  replace_at(t, 1, b, "rF0.1");
  expect_failure(t, ValidationRule::pair_mismatch, 0, find(t, 0, "sF0.1"));
  CHECK(contains(validate(t).message, ">>rF0.2<<"));  // the peer's receive is marked too
}

TEST_CASE("Validator.Break.SendToNoPeer") {
  // Module 0 of rank 3 is the last stage of direction 0: nobody receives its activations.
  Trace t = dualpipe_4x8();
  const int f = find(t, 3, "F0.0");
  insert_at(t, 3, f + 1, "sF0.0");
  expect_failure(t, ValidationRule::post_without_peer, 3, f + 1);
  CHECK(contains(validate(t).message, "no next rank"));
}

TEST_CASE("Validator.Break.ReceiveFromNoPeer") {
  Trace t = dualpipe_4x8();
  insert_at(t, 0, 0, "rF0.0");  // module 0 of rank 0 is the first stage
  expect_failure(t, ValidationRule::post_without_peer, 0, 0);
}

TEST_CASE("Validator.Break.MissingReceive") {
  Trace t = dualpipe_4x8();
  erase_at(t, 1, find(t, 1, "rF0.3"));
  expect_failure(t, ValidationRule::send_without_receive, 0, find(t, 0, "sF0.3"));
}

TEST_CASE("Validator.Break.MissingSendOfAReceive") {
  Trace t = dualpipe_4x8();
  erase_at(t, 0, find(t, 0, "sF0.3"));
  expect_failure(t, ValidationRule::receive_without_send, 1, find(t, 1, "rF0.3"));
}

TEST_CASE("Validator.Break.NeitherSentNorReceived") {
  // Both ends removed: pairing holds, but rank 0 never sends F0.3's output.
  Trace t = dualpipe_4x8();
  erase_at(t, 0, find(t, 0, "sF0.3"));
  erase_at(t, 1, find(t, 1, "rF0.3"));
  expect_failure(t, ValidationRule::missing_send, 0, static_cast<int>(t.ops[0].size()));
}

TEST_CASE("Validator.Break.ForwardBeforeItsReceiveIsCommitted") {
  // Rank 1 starts "rF0.0 | F0.0": run the forward before the commit.
  Trace t = dualpipe_4x8();
  REQUIRE(tokens(t, 1)[0] == "rF0.0");
  REQUIRE(tokens(t, 1)[1] == "|");
  move_token(t, 1, 2, 1);
  expect_failure(t, ValidationRule::forward_before_receive, 1, 1);
  CHECK(contains(validate(t).message, "posted but not yet committed"));
}

TEST_CASE("Validator.Break.BackwardBeforeItsReceiveIsCommitted") {
  // Rank 1: "... rB1.0 | B1.0 ...": run the backward before the commit.
  Trace t = dualpipe_4x8();
  const int b = find(t, 1, "B1.0");
  REQUIRE(tokens(t, 1)[static_cast<std::size_t>(b - 1)] == "|");
  move_token(t, 1, b, b - 1);
  expect_failure(t, ValidationRule::backward_before_receive, 1, b - 1);
}

TEST_CASE("Validator.Break.SendBeforeCompute") {
  Trace t = dualpipe_4x8();
  REQUIRE(tokens(t, 0)[1] == "sF0.0");
  move_token(t, 0, 1, 0);
  expect_failure(t, ValidationRule::send_before_compute, 0, 0);
}

TEST_CASE("Validator.Break.DuplicatePost") {
  // Send and receive chunk 0 twice on both ends: pairing holds, the second post is the duplicate.
  Trace t = dualpipe_4x8();
  const int s = find(t, 0, "sF0.0");
  insert_at(t, 0, s + 1, "sF0.0");
  insert_at(t, 1, find(t, 1, "rF0.0") + 1, "rF0.0");
  expect_failure(t, ValidationRule::duplicate_post, 0, s + 1);
}

TEST_CASE("Validator.Break.UncommittedPost") {
  // Rank 0 ends "rB0.3 | B0.3w W"; drop that last commit.
  Trace t = dualpipe_4x8();
  const int bar = static_cast<int>(t.ops[0].size()) - 3;
  REQUIRE(tokens(t, 0)[static_cast<std::size_t>(bar)] == "|");
  erase_at(t, 0, bar);
  expect_failure(t, ValidationRule::uncommitted_post, 0, bar - 1);
}

TEST_CASE("Validator.Break.OutOfRange") {
  Trace t = dualpipe_4x8();
  replace_at(t, 0, 0, "F0.4");  // module 0 has chunks 0..3
  expect_failure(t, ValidationRule::op_out_of_range, 0, 0);
  Trace u = dualpipe_4x8();
  replace_at(u, 2, 3, "F2.0");
  expect_failure(u, ValidationRule::op_out_of_range, 2, 3);
}

TEST_CASE("Validator.Break.BackwardInForwardMode") {
  Trace t = make_trace(ScheduleKind::dualpipe, 4, 8, Mode::forward);
  REQUIRE(validate(t).ok);
  const int f = find(t, 3, "F0.0");
  insert_at(t, 3, f + 1, "B0.0");
  expect_failure(t, ValidationRule::not_in_forward_mode, 3, f + 1);
}

TEST_CASE("Validator.Break.MissingForward") {
  Trace t = make_trace(ScheduleKind::dualpipev, 1, 2, Mode::forward);  // no communication at all
  REQUIRE(validate(t).ok);
  auto toks = tokens(t, 0);
  REQUIRE(toks.back() == "F1.1");
  toks.pop_back();
  set_tokens(t, 0, toks);
  expect_failure(t, ValidationRule::missing_forward, 0, static_cast<int>(toks.size()));
}

TEST_CASE("Validator.Break.LocalHandOffOrder") {
  // DualPipeV's last rank turns chunks locally: module 1's F of chunk c needs module 0's F of c first,
  // and module 0's backward of c needs module 1's backward of c first.
  {
    Trace t = make_trace(ScheduleKind::dualpipev, 2, 4);
    const int f0 = find(t, 1, "F0.0"), f1 = find(t, 1, "F1.0");
    REQUIRE(f0 < f1);
    replace_at(t, 1, f0, "F1.0");
    replace_at(t, 1, f1, "F0.0");
    expect_failure(t, ValidationRule::local_handoff_order, 1, f0);
  }
  {
    Trace t = make_trace(ScheduleKind::dualpipev, 2, 4);
    const int b1 = find(t, 1, "B1.0"), fb = find(t, 1, "FB1.2/0.0");
    REQUIRE(b1 + 1 == fb);
    move_token(t, 1, b1, fb);  // the FB's backward half (B0.0) now runs before B1.0
    expect_failure(t, ValidationRule::local_handoff_order, 1, b1);
  }
}

TEST_CASE("Validator.Break.DeadlockByReorderedCommits") {
  // Both ranks of DualPipe 2x4 start "F<m>.0 sF<m>.0 rF<m'>.0 |". Launch the receive first and the send
  // in a later commit on both: each rank's first commit waits for a send the other only launches in its
  // second.
  Trace t = make_trace(ScheduleKind::dualpipe, 2, 4);
  REQUIRE(validate(t).ok);
  for (int r = 0; r < 2; ++r) {
    auto toks = tokens(t, r);
    const std::string send = toks[1];
    REQUIRE(send == "sF" + std::to_string(r) + ".0");
    REQUIRE(toks[3] == "|");
    toks.erase(toks.begin() + 1);                // F rF |
    toks.insert(toks.begin() + 3, {send, "|"});  // F rF | sF |
    set_tokens(t, r, toks);
  }
  expect_failure(t, ValidationRule::deadlock, 0, 2);
  const ValidationResult r = validate(t);
  REQUIRE(r.stuck.size() == 2);
  CHECK(r.stuck[0] == OpRef{0, 2});
  CHECK(r.stuck[1] == OpRef{1, 2});
  CHECK(contains(r.message, "rank 0 is stuck at op 2"));
  CHECK(contains(r.message, "rank 1 is stuck at op 2"));
  CHECK(contains(r.message, "waiting for rF1.0's peer sF1.0 (rank 1, op 3)"));
  // Only the ordering of commits changed: undoing it on one rank is enough to make the step complete.
  Trace fixed = t;
  fixed.ops[1] = make_trace(ScheduleKind::dualpipe, 2, 4).ops[1];
  CHECK(validate(fixed).ok);
}

TEST_CASE("Validator.CheckValidThrows") {
  Trace t = dualpipe_4x8();
  move_token(t, 1, 2, 1);
  try {
    check_valid(t, ScheduleKind::dualpipe);
    FAIL("check_valid did not throw");
  } catch (const ValidationError& e) {
    CHECK(e.rule() == ValidationRule::forward_before_receive);
    CHECK(e.rank() == 1);
    CHECK(e.index() == 1);
    const std::string what = e.what();
    CHECK(contains(what, "rank 1, op 1 (F0.0)"));
    // The grid: a header naming every rank, rows by op index, the faulty op marked.
    CHECK(contains(what, "op | rank 0"));
    CHECK(contains(what, "| rank 3"));
    CHECK(contains(what, "\n1  | sF0.0  | >>F0.0<<"));
  }
  CHECK_THROWS_AS(check_valid(t), Error);  // a ValidationError is a dualpipe::Error
}

TEST_CASE("Validator.MalformedTrace") {
  Trace t = dualpipe_4x8();
  t.ranks = 5;
  const ValidationResult r = validate(t, placement_of(ScheduleKind::dualpipe, 4, 8), 2);
  CHECK_FALSE(r.ok);
  CHECK(r.rule == ValidationRule::malformed_trace);
}

TEST_CASE("Validator.ExplicitPlacement") {
  // A two-stage, one-module pipeline (GPipe-like), written by hand with its own placement.
  auto place = [](int rank, int) { return two_stage_placement(rank, 2); };
  Trace t{"handmade", 2, 2, Mode::train, {}};
  t.ops.resize(2);
  set_tokens(t, 0, {"F0.0", "sF0.0", "|", "F0.1", "sF0.1", "rB0.0", "rB0.1", "|", "B0.0", "B0.1"});
  set_tokens(t, 1, {"rF0.0", "rF0.1", "|", "F0.0", "F0.1", "B0.0", "B0.1", "sB0.0", "sB0.1", "|"});
  const ValidationResult ok = validate(t, place, 1);
  INFO(ok.message);
  CHECK(ok.ok);
  // The same trace with a two-module placement has chunks of module 1 that never run.
  auto two = [&](int rank, int module) { return place(rank, module); };
  const ValidationResult missing = validate(t, two, 2);
  CHECK(missing.rule == ValidationRule::missing_forward);
  // A placement whose ends disagree is a configuration error, not a trace error.
  auto lopsided = [&](int rank, int module) {
    ModulePlacement p = place(rank, module);
    if (rank == 1) p.prev_rank = -1;
    return p;
  };
  CHECK_THROWS_AS((void)validate(t, lopsided, 1), ConfigError);
  CHECK_THROWS_AS((void)validate(t, place, 0), ConfigError);
}

TEST_CASE("Validator.UnknownScheduleIsAConfigError") {
  Trace t = dualpipe_4x8();
  t.schedule = "nope";
  CHECK_THROWS_AS((void)validate(t), ConfigError);
}

TEST_CASE("Validator.Break.OverlapOfOneChunk") {
  // Rank 0 of DualPipeV 1x2 runs "FB1.1/0.0"; make both halves chunk 1 of module 1.
  Trace t = make_trace<DualPipeV>(1, 2);
  const int i = find(t, 0, "FB1.1/0.0");
  replace_at(t, 0, i, "FB1.1/1.1");
  expect_failure(t, ValidationRule::overlap_of_one_chunk, 0, i);
}
