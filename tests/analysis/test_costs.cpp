// Costs and communication models as given on command lines.
#include <doctest/doctest.h>

#include <string>

#include "dualpipe/analysis/costs.hpp"
#include "support/messages.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;

TEST_CASE("Costs.ParseAllKeys") {
  const Costs c = parse_costs("F=1.5,B=3,W=1.25,FB=4,latency=0.5,bytes=1024,bandwidth=256");
  CHECK(c.forward == 1.5);
  CHECK(c.backward == 3);
  CHECK(c.weight == 1.25);
  CHECK(c.forward_backward == 4);
  CHECK(c.latency == 0.5);
  CHECK(c.bytes == 1024);
  CHECK(c.bandwidth == 256);
  CHECK(c.transfer() == doctest::Approx(0.5 + 4));
  CHECK(c.of(OpKind::backward_input) == doctest::Approx(3 - 1.25));
  CHECK(c.of(OpKind::weight) == 1.25);
  CHECK(c.of(OpKind::forward_backward) == 4);
  CHECK(c.of(OpKind::send_activation) == 0);
  CHECK(c.of(OpKind::commit) == 0);
}

TEST_CASE("Costs.ParseSubsetKeepsDefaults") {
  const Costs c = parse_costs(" FB = 2.5 , latency=1e-1 ");
  CHECK(c.forward_backward == 2.5);
  CHECK(c.latency == doctest::Approx(0.1));
  CHECK(c.forward == 1);
  CHECK(c.backward == 2);
  CHECK(c.weight == 1);
  CHECK(c.bandwidth == 0);
  CHECK(parse_costs("") == Costs{});
  CHECK(parse_costs("forward=2,backward=4,weight=2,forward_backward=5") == Costs{2, 4, 2, 5, 0, 0, 0});
  // Infinite bandwidth (0): bytes cost nothing.
  CHECK(parse_costs("bytes=100,latency=2").transfer() == 2);
}

TEST_CASE("Costs.ParseErrorsNameTheKey") {
  const auto unknown = config_message([] { (void)parse_costs("F=1,X=2"); });
  CHECK(contains(unknown, "unknown cost key 'X'"));
  CHECK(contains(unknown, "FB"));  // lists the choices
  const auto bad = config_message([] { (void)parse_costs("B=two"); });
  CHECK(contains(bad, "'B'"));
  CHECK(contains(bad, "'two'"));
  CHECK(contains(config_message([] { (void)parse_costs("W=1x"); }), "'1x'"));
  CHECK(contains(config_message([] { (void)parse_costs("latency="); }), "'latency'"));
  CHECK(contains(config_message([] { (void)parse_costs("F"); }), "key=value"));
  const auto negative = config_message([] { (void)parse_costs("latency=-1"); });
  CHECK(contains(negative, "'latency'"));
  CHECK(contains(negative, ">= 0"));
  CHECK(contains(config_message([] { (void)parse_costs("W=3"); }), "W must not exceed B"));
  CHECK(contains(config_message([] { (void)parse_costs("F=inf"); }), "'F'"));
}

TEST_CASE("Costs.CommModel") {
  CHECK(parse_comm_model("rendezvous") == CommModel::rendezvous);
  CHECK(parse_comm_model("async") == CommModel::async);
  CHECK(to_string(CommModel::async) == "async");
  const auto bad = config_message([] { (void)parse_comm_model("eager"); });
  CHECK(contains(bad, "'eager'"));
  CHECK(contains(bad, "rendezvous, async"));
}

TEST_CASE("Costs.ParseStageCosts") {
  const Costs base = parse_costs("F=1,B=2,W=1,FB=3,latency=0.5");
  const StageCosts sc = parse_stage_costs(" 0:B=1.5,FB=2.5 ; 3:F=2", base, 4);
  CHECK(sc.num_stages() == 4);
  CHECK_FALSE(sc.same_for_every_stage());
  CHECK(sc.stage(0) == parse_costs("F=1,B=1.5,W=1,FB=2.5,latency=0.5"));
  CHECK(sc.stage(1) == base);
  CHECK(sc.stage(2) == base);
  CHECK(sc.stage(3) == parse_costs("F=2,B=2,W=1,FB=3,latency=0.5"));
  CHECK(sc.transfer() == 0.5);
  // Nothing named: every stage costs the base.
  const StageCosts none = parse_stage_costs("", base, 2);
  CHECK(none.stage(0) == base);
  CHECK(none.stage(1) == base);
  // One Costs for every stage, however many.
  const StageCosts every(base);
  CHECK(every.same_for_every_stage());
  CHECK(every.stage(41) == base);
}

TEST_CASE("Costs.ParseStageCostsErrors") {
  const Costs base;
  CHECK(contains(config_message([&] { (void)parse_stage_costs("4:F=1", base, 4); }),
                 "stage 4 but the model has stages 0 to 3"));
  CHECK(contains(config_message([&] { (void)parse_stage_costs("-1:F=1", base, 4); }), "stage -1"));
  CHECK(contains(config_message([&] { (void)parse_stage_costs("F=1", base, 4); }), "STAGE:KEY=V"));
  CHECK(contains(config_message([&] { (void)parse_stage_costs("x:F=1", base, 4); }), "STAGE:KEY=V"));
  CHECK(contains(config_message([&] { (void)parse_stage_costs("1:F=1;1:B=3", base, 4); }), "stage 1 twice"));
  CHECK(contains(config_message([&] { (void)parse_stage_costs("2:W=3", base, 4); }),
                 "stage 2: cost W must not exceed B"));
  CHECK(contains(config_message([&] { (void)parse_stage_costs("2:Q=3", base, 4); }), "stage 2: unknown cost key 'Q'"));
  CHECK(contains(config_message([&] { (void)parse_stage_costs("1:latency=2", base, 4); }), "same transfer"));
  CHECK(contains(config_message([&] { (void)parse_stage_costs("", base, 0); }), "at least one stage"));
}
