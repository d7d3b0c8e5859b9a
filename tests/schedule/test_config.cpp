// Bad configurations are refused with ConfigError naming the rule and the values.
#include <doctest/doctest.h>

#include <string>

#include "dualpipe/dualpipe.hpp"
#include "support/messages.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;

TEST_CASE("Config.DualPipeRules") {
  auto odd_ranks = config_message([] { (void)DualPipe::ops(3, 12, 0); });
  CHECK(contains(odd_ranks, "ranks must be even"));
  CHECK(contains(odd_ranks, "ranks=3"));
  auto odd_chunks = config_message([] { (void)DualPipe::ops(4, 9, 0); });
  CHECK(contains(odd_chunks, "chunks must be even"));
  CHECK(contains(odd_chunks, "chunks=9"));
  auto few_chunks = config_message([] { (void)DualPipe::ops(4, 6, 0); });
  CHECK(contains(few_chunks, "at least 2 * ranks"));
  CHECK(contains(few_chunks, "chunks=6"));
  CHECK(contains(few_chunks, "ranks=4"));
  CHECK(contains(config_message([] { (void)DualPipe::ops(0, 4, 0); }), "ranks must be at least 1 (got ranks=0)"));
  CHECK(contains(config_message([] { (void)DualPipe::ops(2, 0, 0); }), "chunks must be at least 1 (got chunks=0)"));
  auto bad_rank = config_message([] { (void)DualPipe::ops(4, 8, 4); });
  CHECK(contains(bad_rank, "rank must be in [0, ranks)"));
  CHECK(contains(bad_rank, "rank=4"));
  CHECK(contains(config_message([] { (void)DualPipe::ops(4, 8, -1); }), "rank=-1"));
  CHECK(contains(config_message([] { (void)DualPipe::placement(4, 8, 0, 2); }), "module=2"));
}

TEST_CASE("Config.DualPipeVRules") {
  auto few = config_message([] { (void)DualPipeV::ops(3, 5, 0); });
  CHECK(contains(few, "dualpipev"));
  CHECK(contains(few, "chunks=5"));
  CHECK(contains(few, "ranks=3"));
  CHECK_NOTHROW((void)DualPipeV::ops(3, 7, 2));  // odd P and odd C are fine
  CHECK(contains(config_message([] { (void)DualPipeV::ops(-1, 5, 0); }), "ranks=-1"));
}

TEST_CASE("Config.UnknownScheduleNamesTheChoices") {
  auto msg = config_message([] { (void)parse_schedule_kind("pipedream"); });
  CHECK(contains(msg, "unknown schedule 'pipedream'"));
  CHECK(contains(msg, "dualpipe"));
  CHECK(contains(msg, "dualpipev"));
}

TEST_CASE("Placement.DualPipeStagesAndNeighbours") {
  // Module 0 of rank r is stage r; module 1 is stage P-1-r and takes the second half of the batch.
  for (int r = 0; r < 4; ++r) {
    const auto m0 = DualPipe::placement(4, 8, r, 0);
    const auto m1 = DualPipe::placement(4, 8, r, 1);
    CHECK(m0.stage == r);
    CHECK(m1.stage == 3 - r);
    CHECK(m1.chunk_offset == 4);
    CHECK(m0.is_first_stage() == (r == 0));
    CHECK(m0.is_last_stage() == (r == 3));
    CHECK(m1.is_first_stage() == (r == 3));
    CHECK(m1.is_last_stage() == (r == 0));
  }
}

TEST_CASE("Placement.DualPipeVTurnsLocallyOnTheLastRank") {
  const auto m0 = DualPipeV::placement(3, 6, 2, 0);
  const auto m1 = DualPipeV::placement(3, 6, 2, 1);
  CHECK(m0.stage == 2);
  CHECK(m1.stage == 3);
  CHECK(m0.num_stages == 6);
  CHECK(m0.next_rank == -1);
  CHECK(m0.local_next_module == 1);
  CHECK(m1.local_prev_module == 0);
  CHECK_FALSE(m0.is_last_stage());
  CHECK_FALSE(m1.is_first_stage());
  CHECK(DualPipeV::placement(3, 6, 0, 1).is_last_stage());
  CHECK(DualPipeV::placement(1, 2, 0, 0).is_first_stage());
}

TEST_CASE("Config.HugeRankCountsDoNotOverflowTheRule") {
  // 2 * ranks would overflow int here and let the configuration through.
  CHECK(contains(config_message([] { DualPipe::check(2'000'000'000, 4); }), "at least 2 * ranks"));
  CHECK(contains(config_message([] { DualPipeV::check(1'500'000'000, 4); }), "at least 2 * ranks"));
  CHECK_NOTHROW(DualPipeV::check(3, 6));
  CHECK(contains(config_message([] { DualPipeV::check(3, 5); }), "chunks=5"));
}
