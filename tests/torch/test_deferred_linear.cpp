// DeferredLinear against torch::nn::Linear (initialisation, forward, backward), its store of weight work,
// and TorchStage's one-pass split with it: every gradient against libtorch's plain backward of a twin model
// built from torch::nn::Linear, bitwise where the same products run in the same order, otherwise within the
// reference's criterion 1 - 2<x,y>/(|x|^2+|y|^2) < 1e-13 (float64).
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/container/functional.h>
#include <torch/nn/modules/linear.h>

#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/dualpipe.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/runtime/run_ranks.hpp"
#include "dualpipe/torch.hpp"
#include "torch_options.hpp"

// Last: glog (through libtorch) defines its own CHECK, which would otherwise replace doctest's.
#include <doctest/doctest.h>

using namespace dualpipe;
using namespace torch_test;

namespace {

ConstBytes bytes_of(const torch::Tensor& t) {
  REQUIRE(t.is_contiguous());
  return {static_cast<const std::byte*>(t.data_ptr()), t.nbytes()};
}
MutableBytes bytes_of(std::vector<std::byte>& v) { return {v.data(), v.size()}; }

torch::Tensor tensor_of(const std::vector<std::byte>& bytes, std::vector<std::int64_t> shape) {
  torch::Tensor t = torch::empty(shape, torch::kDouble);
  REQUIRE(t.nbytes() == bytes.size());
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

/// The reference's criterion: 1 - 2<x,y>/(|x|^2+|y|^2).
double calc_diff(const torch::Tensor& x, const torch::Tensor& y) {
  const double xy = (x * y).sum().item<double>(), xx = (x * x).sum().item<double>(), yy = (y * y).sum().item<double>();
  return 1.0 - 2.0 * xy / (xx + yy);
}

/// The example's stage, Linear(h, 4h) -> GELU -> Linear(4h, h), with either linear layer.
template <class Linear>
struct MlpImpl : torch::nn::Module {
  MlpImpl(int h, bool bias)
      : l1(register_module("l1", Linear(torch::nn::LinearOptions(h, 4 * h).bias(bias)))),
        l2(register_module("l2", Linear(torch::nn::LinearOptions(4 * h, h).bias(bias)))) {}
  torch::Tensor forward(torch::Tensor x) { return l2(torch::gelu(l1(x))); }
  Linear l1, l2;
};
using PlainMlp = std::shared_ptr<MlpImpl<torch::nn::Linear>>;
using DeferredMlp = std::shared_ptr<MlpImpl<DeferredLinear>>;

/// Twins from the same random state: DeferredLinear must draw the same weights as Linear.
std::pair<PlainMlp, DeferredMlp> twins(int h, bool bias, std::uint64_t seed) {
  torch::manual_seed(seed);
  auto plain = std::make_shared<MlpImpl<torch::nn::Linear>>(h, bias);
  torch::manual_seed(seed);
  auto deferred = std::make_shared<MlpImpl<DeferredLinear>>(h, bias);
  plain->to(torch::kDouble);
  deferred->to(torch::kDouble);
  return {plain, deferred};
}

StageContext ctx_of(int stage, int chunk) {
  StageContext ctx;
  ctx.stage = stage;
  ctx.num_stages = 3;
  ctx.chunk = chunk;
  ctx.is_first_stage = stage == 0;
  ctx.is_last_stage = stage == 2;
  return ctx;
}

void check_grads_equal(const torch::nn::Module& got, const torch::nn::Module& want) {
  const auto g = got.named_parameters(), w = want.named_parameters();
  REQUIRE(g.size() == w.size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    INFO("parameter " << g[i].key());
    CHECK(g[i].key() == w[i].key());
    REQUIRE(g[i].value().grad().defined());
    CHECK(torch::equal(g[i].value().grad(), w[i].value().grad()));
  }
}

}  // namespace

TEST_CASE("Torch.DeferredLinear.SameParametersAsLinear") {
  for (bool bias : {true, false}) {
    torch::manual_seed(3);
    torch::nn::Linear plain(torch::nn::LinearOptions(5, 7).bias(bias));
    torch::manual_seed(3);
    DeferredLinear deferred(torch::nn::LinearOptions(5, 7).bias(bias));
    const auto p = plain->named_parameters(), d = deferred->named_parameters();
    REQUIRE(p.size() == (bias ? 2u : 1u));
    REQUIRE(d.size() == p.size());
    for (std::size_t i = 0; i < p.size(); ++i) {
      CHECK(d[i].key() == p[i].key());
      CHECK(torch::equal(d[i].value(), p[i].value()));
      CHECK(d[i].value().requires_grad());
    }
    // The initialisation drew from the generator: a later draw differs from the first one.
    torch::manual_seed(3);
    DeferredLinear again(5, 7);
    CHECK_FALSE(torch::equal(again->weight, DeferredLinear(5, 7)->weight));
  }
}

TEST_CASE("Torch.DeferredLinear.SameNumbersAsLinearWithoutAStore") {
  for (bool bias : {true, false}) {
    for (std::vector<std::int64_t> shape : {std::vector<std::int64_t>{4, 6, H}, std::vector<std::int64_t>{9, H}}) {
      INFO("bias " << bias << ", input " << shape.size() << "-d");
      auto [plain, deferred] = twins(H, bias, 17);
      torch::manual_seed(18);
      torch::Tensor x = torch::randn(shape, torch::kDouble), g = torch::randn(shape, torch::kDouble);
      torch::Tensor xp = x.clone().requires_grad_(true), xd = x.clone().requires_grad_(true);
      torch::Tensor yp = plain->forward(xp), yd = deferred->forward(xd);
      CHECK(torch::equal(yp, yd));
      REQUIRE(deferred_weight_grads_sink() == nullptr);
      yp.backward(g);
      yd.backward(g);  // no store active: everything at once, as Linear
      CHECK(torch::equal(xd.grad(), xp.grad()));
      check_grads_equal(*deferred, *plain);
    }
  }
}

TEST_CASE("Torch.DeferredLinear.AStoreTakesTheWeightWork") {
  auto [plain, deferred] = twins(H, true, 23);
  torch::manual_seed(24);
  torch::Tensor x = torch::randn(act_shape, torch::kDouble), g = torch::randn(act_shape, torch::kDouble);
  torch::Tensor xp = x.clone().requires_grad_(true), xd = x.clone().requires_grad_(true);
  plain->forward(xp).backward(g);
  torch::Tensor yd = deferred->forward(xd);
  DeferredWeightGrads store;
  {
    DeferWeightGradsInto scope(store);
    CHECK(deferred_weight_grads_sink() == &store);
    yd.backward(g);
  }
  CHECK(deferred_weight_grads_sink() == nullptr);
  CHECK(torch::equal(xd.grad(), xp.grad()));  // the input's gradient at once
  CHECK(store.size() == 2);                   // one job per layer
  for (const torch::Tensor& p : deferred->parameters()) CHECK_FALSE(p.grad().defined());
  store.run();
  CHECK(store.empty());
  check_grads_equal(*deferred, *plain);
  // A second backward into the same .grad adds, as autograd's accumulation does.
  plain->forward(xp).backward(g);
  {
    DeferWeightGradsInto scope(store);
    deferred->forward(xd).backward(g);
  }
  store.run();
  check_grads_equal(*deferred, *plain);
}

TEST_CASE("Torch.Stage.DeferringSplitEqualsPlainBackward") {
  // Middle, first (no input gradient) and last (from the scaled loss) stages.
  for (int stage : {1, 0, 2}) {
    INFO("stage " << stage);
    auto [plain, deferred] = twins(H, stage == 1, 31);
    torch::manual_seed(32);
    torch::Tensor x = torch::randn(act_shape, torch::kDouble), g = torch::randn(act_shape, torch::kDouble);
    torch::Tensor labels = torch::randn(act_shape, torch::kDouble);
    const StageContext ctx = [&] {
      StageContext c = ctx_of(stage, 4);
      c.loss_scale = 0.25;
      return c;
    }();

    torch::Tensor xp = x.clone().requires_grad_(stage != 0);
    torch::Tensor yp = plain->forward(xp);
    if (ctx.is_last_stage) (torch::mse_loss(yp, labels) * ctx.loss_scale).backward();
    else yp.backward(g);

    TorchStage s(deferred, double_options(),
                 [](const torch::Tensor& y, const torch::Tensor& l) { return torch::mse_loss(y, l); });
    CHECK(s.defers_weight_grads());
    std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
    s.forward(ctx, bytes_of(x), bytes_of(out));
    CHECK(torch::equal(tensor_of(out, act_shape), yp.detach()));
    if (ctx.is_last_stage) (void)s.loss(ctx, {out.data(), out.size()}, bytes_of(labels));
    const ConstBytes output_grad = ctx.is_last_stage ? ConstBytes{} : bytes_of(g);
    s.backward_input(ctx, output_grad, ctx.is_first_stage ? MutableBytes{} : bytes_of(in_grad));
    if (!ctx.is_first_stage) CHECK(torch::equal(tensor_of(in_grad, act_shape), xp.grad()));
    for (const torch::Tensor& p : deferred->parameters()) CHECK_FALSE(p.grad().defined());  // deferred
    CHECK(s.chunks_in_flight() == 1);
    s.backward_weight(ctx);
    CHECK(s.chunks_in_flight() == 0);
    check_grads_equal(*deferred, *plain);
  }
}

TEST_CASE("Torch.Stage.DeferringSplitOrderAndErrors") {
  auto [plain, deferred] = twins(H, false, 41);
  torch::manual_seed(42);
  std::vector<torch::Tensor> xs, gs;
  for (int c = 0; c < 3; ++c) {
    xs.push_back(torch::randn(act_shape, torch::kDouble));
    gs.push_back(torch::randn(act_shape, torch::kDouble));
  }
  for (int c = 0; c < 3; ++c) plain->forward(xs[c]).backward(gs[c]);

  TorchStage s(deferred, double_options());
  std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
  for (int c = 0; c < 3; ++c) s.forward(ctx_of(1, c), bytes_of(xs[c]), bytes_of(out));
  CHECK_THROWS_WITH_AS(s.backward_weight(ctx_of(1, 0)), doctest::Contains("called before backward_input of this chunk"),
                       Error);
  for (int c = 0; c < 3; ++c) s.backward_input(ctx_of(1, c), bytes_of(gs[c]), bytes_of(in_grad));
  for (int c : {2, 0, 1}) s.backward_weight(ctx_of(1, c));  // zero bubble: weight passes in another order
  CHECK(s.chunks_in_flight() == 0);
  const auto p = plain->parameters(), d = deferred->parameters();
  for (std::size_t i = 0; i < p.size(); ++i) {
    CHECK(calc_diff(d[i].grad(), p[i].grad()) < 1e-13);  // another order of three additions
    CHECK(torch::allclose(d[i].grad(), p[i].grad(), 1e-12, 1e-12));
  }
  // A chunk dropped by reset() leaves its put-aside work behind: a new step starts clean.
  s.forward(ctx_of(1, 0), bytes_of(xs[0]), bytes_of(out));
  s.backward_input(ctx_of(1, 0), bytes_of(gs[0]), bytes_of(in_grad));
  s.reset();
  CHECK(s.chunks_in_flight() == 0);
  CHECK_THROWS_WITH_AS(s.backward_weight(ctx_of(1, 0)), doctest::Contains("no forward of this chunk is kept"), Error);
}

TEST_CASE("Torch.Stage.DeferringFusedBackwardAddsIntoGrad") {
  // The fused backward of a deferring module runs its weight work at once, each layer adding its product
  // into .grad with one GEMM: three chunks must give the plain backward's gradients, accumulated in place.
  for (int stage : {1, 0, 2}) {
    INFO("stage " << stage);
    auto [plain, deferred] = twins(H, stage != 0, 51);
    torch::manual_seed(52);
    TorchStage s(deferred, double_options(),
                 [](const torch::Tensor& y, const torch::Tensor& l) { return torch::mse_loss(y, l); });
    std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
    std::vector<const void*> grad_storage;
    for (int c = 0; c < 3; ++c) {
      torch::Tensor x = torch::randn(act_shape, torch::kDouble), g = torch::randn(act_shape, torch::kDouble);
      torch::Tensor labels = torch::randn(act_shape, torch::kDouble);
      const StageContext ctx = ctx_of(stage, c);
      torch::Tensor xp = x.clone().requires_grad_(stage != 0);
      torch::Tensor yp = plain->forward(xp);
      if (ctx.is_last_stage) torch::mse_loss(yp, labels).backward();
      else yp.backward(g);

      s.forward(ctx, bytes_of(x), bytes_of(out));
      if (ctx.is_last_stage) (void)s.loss(ctx, {out.data(), out.size()}, bytes_of(labels));
      s.backward(ctx, ctx.is_last_stage ? ConstBytes{} : bytes_of(g),
                 ctx.is_first_stage ? MutableBytes{} : bytes_of(in_grad));
      CHECK(s.chunks_in_flight() == 0);  // nothing left for a weight pass
      if (!ctx.is_first_stage) CHECK(torch::equal(tensor_of(in_grad, act_shape), xp.grad()));
      for (const torch::Tensor& p : deferred->parameters()) {
        REQUIRE(p.grad().defined());
        if (c == 0) grad_storage.push_back(p.grad().data_ptr());
      }
    }
    const auto p = plain->parameters(), d = deferred->parameters();
    for (std::size_t i = 0; i < p.size(); ++i) {
      INFO("parameter " << i);
      CHECK(d[i].grad().data_ptr() == grad_storage[i]);  // added in place, as autograd's accumulation does
      CHECK(calc_diff(d[i].grad(), p[i].grad()) < 1e-13);
      CHECK(torch::allclose(d[i].grad(), p[i].grad(), 1e-12, 1e-12));
    }
  }
}

TEST_CASE("Torch.Stage.PlainModulesKeepTheTwoPassSplit") {
  auto [plain, deferred] = twins(H, false, 5);
  (void)deferred;
  TorchStage s(plain, double_options());
  CHECK_FALSE(s.defers_weight_grads());
  // A deferring layer anywhere below the module turns the one-pass split on.
  TorchStage nested(torch::nn::Functional([](torch::Tensor x) { return x; }), double_options());
  CHECK_FALSE(nested.defers_weight_grads());
  struct Wrapper : torch::nn::Module {
    Wrapper() : mlp(register_module("mlp", std::make_shared<MlpImpl<DeferredLinear>>(H, false))) {}
    torch::Tensor forward(torch::Tensor x) { return mlp->forward(x); }
    std::shared_ptr<MlpImpl<DeferredLinear>> mlp;
  };
  auto wrapper = std::make_shared<Wrapper>();
  wrapper->to(torch::kDouble);
  CHECK(TorchStage(wrapper, double_options()).defers_weight_grads());
}

TEST_CASE("Torch.Pipeline.DeferredLinearModelMatchesSequential" * doctest::timeout(120)) {
  // DualPipeV on 2 ranks (4 stages, zero-bubble W ops) and ZB1P on 2 ranks, against plain libtorch.
  constexpr int P = 2, C = 4;
  torch::manual_seed(61);
  torch::Tensor x = torch::randn({C * act_shape[0], act_shape[1], H}, torch::kDouble);
  torch::Tensor l = torch::randn({C * act_shape[0], act_shape[1], H}, torch::kDouble);
  auto run = [&]<class Schedule>(Schedule) {
    const int stages = Schedule::placement(P, C, 0, 0).num_stages;
    std::vector<PlainMlp> plain;
    std::vector<DeferredMlp> deferred;
    for (int s = 0; s < stages; ++s) {
      auto [p, d] = twins(H, s % 2 == 0, 70 + s);
      plain.push_back(p);
      deferred.push_back(d);
    }
    // Sequential: chunk after chunk through every stage, loss.backward().
    std::vector<double> want_losses;
    auto xs = x.chunk(C), ls = l.chunk(C);
    for (int c = 0; c < C; ++c) {
      torch::Tensor y = xs[c];
      for (auto& m : plain) y = m->forward(y);
      torch::Tensor loss = torch::mse_loss(y, ls[c]);
      loss.backward();
      want_losses.push_back(loss.item<double>());
    }
    // The pipeline: each rank's modules compute deferred twins. A stage held by two ranks (DualPipe's two
    // directions) gets a copy per rank, as the reference keeps two: ranks never share a .grad; the copies'
    // gradients are summed below.
    TorchStageOptions options = double_options();
    auto mse = [](const torch::Tensor& y, const torch::Tensor& t) { return torch::mse_loss(y, t); };
    std::vector<std::vector<std::unique_ptr<TorchStage>>> ts(P);
    std::vector<std::vector<DeferredMlp>> copies(static_cast<std::size_t>(stages));
    for (int r = 0; r < P; ++r)
      for (int m = 0; m < Schedule::modules_per_rank; ++m) {
        const int s = Schedule::placement(P, C, r, m).stage;
        DeferredMlp module = copies[s].empty() ? deferred[s] : twins(H, s % 2 == 0, 70 + s).second;
        copies[s].push_back(module);
        ts[r].push_back(std::make_unique<TorchStage>(module, options, mse));
      }
    InProcessWorld world(P);
    using Pipe = Pipeline<Schedule, InProcessCommunicator, TorchStage>;
    std::vector<std::unique_ptr<Pipe>> pipes;
    for (int r = 0; r < P; ++r) {
      std::array<TorchStage*, Schedule::modules_per_rank> ptrs{};
      for (int m = 0; m < Schedule::modules_per_rank; ++m) ptrs[m] = ts[r][m].get();
      pipes.push_back(std::make_unique<Pipe>(world.communicator(r), ptrs));
    }
    std::vector<StepResult> results(P);
    run_ranks(P, [&](int r) { results[r] = pipes[r]->step(C, bytes_of(x), bytes_of(l)); });
    std::vector<double> got_losses(C, 0.0);
    for (const StepResult& res : results)
      for (int c = 0; c < C && c < static_cast<int>(res.losses.size()); ++c)
        if (!std::isnan(res.losses[c])) got_losses[c] = res.losses[c];
    for (int c = 0; c < C; ++c) CHECK(got_losses[c] == want_losses[c]);  // same forward ops: bitwise
    for (int s = 0; s < stages; ++s) {
      const auto p = plain[s]->parameters();
      for (std::size_t i = 0; i < p.size(); ++i) {
        INFO("stage " << s << ", parameter " << i);
        torch::Tensor sum = torch::zeros_like(p[i]);
        for (const DeferredMlp& copy : copies[s]) {
          const torch::Tensor g = copy->parameters()[i].grad();
          REQUIRE(g.defined());
          sum += g;
        }
        CHECK(calc_diff(sum, p[i].grad()) < 1e-13);
      }
    }
    for (const auto& rank : ts)
      for (const auto& stage : rank) CHECK(stage->chunks_in_flight() == 0);
  };
  SUBCASE("dualpipe") { run(DualPipe{}); }  // F&B ops: fused backwards between forwards
  SUBCASE("dualpipev") { run(DualPipeV{}); }
  SUBCASE("zb1p") { run(ZB1P{}); }
}
