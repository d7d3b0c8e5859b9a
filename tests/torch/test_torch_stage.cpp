// TorchStage, called directly (no pipeline): the buffers it reads and writes, the errors it raises, and its
// autograd split of the backward against libtorch's own plain backward on an identical copy of the module.
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/functional.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <cstring>
#include <string>
#include <vector>

#include "dualpipe/torch.hpp"
#include "support/messages.hpp"
#include "torch_options.hpp"

// Last: glog (through libtorch) defines its own CHECK, which would otherwise replace doctest's.
#include <doctest/doctest.h>

using namespace dualpipe;
using namespace torch_test;
using namespace dualpipe::testing;

namespace {

ConstBytes bytes_of(const torch::Tensor& t) {
  REQUIRE(t.is_contiguous());
  return {static_cast<const std::byte*>(t.data_ptr()), t.nbytes()};
}
MutableBytes bytes_of(std::vector<std::byte>& v) { return {v.data(), v.size()}; }
bool same_bytes(const std::vector<std::byte>& a, const std::vector<std::byte>& b) { return a == b; }

/// A tensor that owns a copy of `bytes`, for comparing what the stage wrote.
torch::Tensor tensor_of(const std::vector<std::byte>& bytes, std::vector<std::int64_t> shape,
                        torch::ScalarType dtype = torch::kDouble) {
  torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  REQUIRE(t.nbytes() == bytes.size());
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

/// The example's stage: Linear(h, 4h) -> GELU -> Linear(4h, h), no bias.
struct MlpImpl : torch::nn::Module {
  explicit MlpImpl(int h)
      : l1(register_module("l1", torch::nn::Linear(torch::nn::LinearOptions(h, 4 * h).bias(false)))),
        l2(register_module("l2", torch::nn::Linear(torch::nn::LinearOptions(4 * h, h).bias(false)))) {}
  torch::Tensor forward(torch::Tensor x) { return l2(torch::gelu(l1(x))); }
  torch::nn::Linear l1, l2;
};
TORCH_MODULE(Mlp);

/// Two modules with the same weights (double), so that one runs the plain backward and one the adapter.
std::pair<Mlp, Mlp> twin_mlps(int h, std::uint64_t seed) {
  torch::manual_seed(seed);
  Mlp a(h), b(h);
  a->to(torch::kDouble);
  b->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < a->parameters().size(); ++i) b->parameters()[i].copy_(a->parameters()[i]);
  return {a, b};
}

/// A parameter-free module from a function (views, casts, identity).
torch::nn::Functional fn(std::function<torch::Tensor(torch::Tensor)> f) { return torch::nn::Functional(std::move(f)); }

StageContext middle_ctx(int chunk, Mode mode = Mode::train) {
  StageContext ctx;
  ctx.stage = 1;
  ctx.num_stages = 3;
  ctx.chunk = chunk;
  ctx.mode = mode;
  return ctx;
}

TorchCriterion mse() {
  return [](const torch::Tensor& y, const torch::Tensor& l) { return torch::mse_loss(y, l); };
}

}  // namespace

TEST_CASE("Torch.Stage.Sizes") {
  TorchStageOptions o = double_options();
  o.label_shape = {3};
  o.label_dtype = torch::kLong;
  TorchStage s(Mlp(H), o);
  CHECK(s.input_bytes() == 3 * 5 * H * sizeof(double));
  CHECK(s.output_bytes() == 3 * 5 * H * sizeof(double));
  CHECK(s.label_bytes() == 3 * sizeof(std::int64_t));
  CHECK(s.parameters().size() == 2);

  TorchStageOptions bad = double_options();
  bad.activation_shape = {3, 0, H};
  CHECK_THROWS_AS(TorchStage(Mlp(H), bad), ConfigError);
  bad.activation_shape = {};
  CHECK_THROWS_AS(TorchStage(Mlp(H), bad), ConfigError);
}

TEST_CASE("Torch.Stage.ModuleKinds") {
  // A Sequential (whose templated forward AnyModule cannot hold), a shared_ptr to it, and an AnyModule.
  torch::nn::Sequential seq(torch::nn::Linear(torch::nn::LinearOptions(H, 2 * H).bias(false)),
                            fn([](torch::Tensor t) { return torch::gelu(t); }),
                            torch::nn::Linear(torch::nn::LinearOptions(2 * H, H).bias(false)));
  seq->to(torch::kDouble);
  Mlp mlp(H);
  mlp->to(torch::kDouble);
  TorchStage a(seq, double_options());
  TorchStage b(seq.ptr(), double_options());
  TorchStage c(torch::nn::AnyModule(mlp), double_options());
  CHECK(a.parameters().size() == 2);
  CHECK(&b.module() == seq.ptr().get());
  CHECK(&c.module() == mlp.ptr().get());
  CHECK(c.parameters().size() == 2);
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  std::vector<std::byte> oa(a.output_bytes()), ob(b.output_bytes()), oc(c.output_bytes());
  a.forward(middle_ctx(0, Mode::forward), bytes_of(x), bytes_of(oa));
  b.forward(middle_ctx(0, Mode::forward), bytes_of(x), bytes_of(ob));
  c.forward(middle_ctx(0, Mode::forward), bytes_of(x), bytes_of(oc));
  CHECK(torch::equal(tensor_of(oa, act_shape), seq->forward(x)));
  CHECK(same_bytes(oa, ob));
  CHECK(torch::equal(tensor_of(oc, act_shape), mlp(x)));
  CHECK_THROWS_AS(TorchStage(Mlp(nullptr), double_options()), ConfigError);
  CHECK_THROWS_AS(TorchStage(torch::nn::AnyModule(), double_options()), ConfigError);
}

TEST_CASE("Torch.Stage.OutputShapeMismatchNamesBoth") {
  TorchStage s(torch::nn::Linear(torch::nn::LinearOptions(H, H + 1).bias(false)), double_options());
  s.module().to(torch::kDouble);
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  std::vector<std::byte> out(s.output_bytes());
  std::string msg = error_message([&] { s.forward(middle_ctx(0), bytes_of(x), bytes_of(out)); });
  CHECK(contains(msg, "shape [3, 5, 9]"));
  CHECK(contains(msg, "expected shape [3, 5, 8]"));
  CHECK(contains(msg, "stage 1, chunk 0"));
  CHECK(s.chunks_in_flight() == 0);
}

TEST_CASE("Torch.Stage.OutputDtypeMismatchNamesBoth") {
  // Same bytes per element would not save it: float32 output where float64 is configured is refused.
  TorchStage s(fn([](torch::Tensor x) { return x.to(torch::kFloat); }), double_options());
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  std::vector<std::byte> out(s.output_bytes());
  std::string msg = error_message([&] { s.forward(middle_ctx(2), bytes_of(x), bytes_of(out)); });
  CHECK(contains(msg, "dtype Float"));
  CHECK(contains(msg, "dtype Double"));

  // Same element count but another shape (a flattening) is not reinterpreted either.
  TorchStage flat(fn([](torch::Tensor x) { return x.reshape({15, H}); }), double_options());
  msg = error_message([&] { flat.forward(middle_ctx(0), bytes_of(x), bytes_of(out)); });
  CHECK(contains(msg, "shape [15, 8]"));
  CHECK(contains(msg, "expected shape [3, 5, 8]"));
}

TEST_CASE("Torch.Stage.BufferSizeMismatch") {
  TorchStage s(Mlp(H), double_options());
  s.module().to(torch::kDouble);
  torch::Tensor x = torch::randn({3, 5, H}, torch::kFloat);  // half the bytes
  std::vector<std::byte> out(s.output_bytes());
  std::string msg = error_message([&] { s.forward(middle_ctx(0), bytes_of(x), bytes_of(out)); });
  CHECK(contains(msg, "input buffer has 480 bytes, expected 960"));
}

TEST_CASE("Torch.Stage.LibtorchErrorsNameTheCall") {
  // A module whose weights are float32 fed float64 activations: libtorch's own error, with our context.
  TorchStage s(Mlp(H), double_options());
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  std::vector<std::byte> out(s.output_bytes());
  std::string msg = error_message([&] { s.forward(middle_ctx(4), bytes_of(x), bytes_of(out)); });
  CHECK(contains(msg, "TorchStage::forward (stage 1, chunk 4): libtorch:"));
}

TEST_CASE("Torch.Stage.NonContiguousOutputsAreCopiedContiguous") {
  torch::manual_seed(1);
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  torch::Tensor g = torch::randn(act_shape, torch::kDouble);

  SUBCASE("a transpose of a square view") {
    // [3,5,8] -> view [3,8,5]... keep the output shape: transpose the two last dims of a [3,8,5] tensor.
    auto f = [](torch::Tensor t) { return (t * 2).reshape({3, H, 5}).transpose(1, 2); };
    TorchStage s(fn(f), double_options());
    std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
    s.forward(middle_ctx(0), bytes_of(x), bytes_of(out));
    torch::Tensor expected = f(x);
    CHECK_FALSE(expected.is_contiguous());
    CHECK(torch::equal(tensor_of(out, act_shape), expected));
    // Its gradient goes back through the same view.
    s.backward_input(middle_ctx(0), bytes_of(g), bytes_of(in_grad));
    s.backward_weight(middle_ctx(0));
    torch::Tensor xr = x.clone().requires_grad_(true);
    f(xr).backward(g);
    CHECK(torch::equal(tensor_of(in_grad, act_shape), xr.grad()));
  }
  SUBCASE("a slice of a wider layer's output") {
    torch::nn::Linear wide(torch::nn::LinearOptions(H, 2 * H).bias(false));
    wide->to(torch::kDouble);
    auto f = [wide](torch::Tensor t) mutable { return wide(t).narrow(2, 3, H); };
    TorchStage s(fn(f), double_options());
    std::vector<std::byte> out(s.output_bytes());
    s.forward(middle_ctx(0), bytes_of(x), bytes_of(out));
    torch::Tensor expected = f(x);
    CHECK_FALSE(expected.is_contiguous());
    CHECK(torch::equal(tensor_of(out, act_shape), expected));
  }
  SUBCASE("the input itself") {
    TorchStage s(fn([](torch::Tensor t) { return t; }), double_options());
    std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
    s.forward(middle_ctx(0), bytes_of(x), bytes_of(out));
    CHECK(torch::equal(tensor_of(out, act_shape), x));
    s.backward_input(middle_ctx(0), bytes_of(g), bytes_of(in_grad));
    CHECK(torch::equal(tensor_of(in_grad, act_shape), g));
    s.backward_weight(middle_ctx(0));  // no parameters: nothing to do, but the state ends
    CHECK(s.chunks_in_flight() == 0);
  }
}

TEST_CASE("Torch.Stage.SplitBackwardEqualsPlainBackward") {
  auto [plain, split] = twin_mlps(H, 7);
  torch::manual_seed(8);
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  torch::Tensor g = torch::randn(act_shape, torch::kDouble);

  // libtorch's plain backward.
  torch::Tensor xr = x.clone().requires_grad_(true);
  torch::Tensor yr = plain(xr);
  yr.backward(g);

  // The adapter: forward, input pass, weight pass, bitwise the same numbers.
  TorchStage s(split, double_options());
  std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
  s.forward(middle_ctx(3), bytes_of(x), bytes_of(out));
  CHECK(torch::equal(tensor_of(out, act_shape), yr.detach()));
  CHECK(s.chunks_in_flight() == 1);
  s.backward_input(middle_ctx(3), bytes_of(g), bytes_of(in_grad));
  CHECK(torch::equal(tensor_of(in_grad, act_shape), xr.grad()));
  for (const torch::Tensor& p : split->parameters()) CHECK_FALSE(p.grad().defined());  // weights deferred
  CHECK(s.chunks_in_flight() == 1);
  s.backward_weight(middle_ctx(3));
  CHECK(s.chunks_in_flight() == 0);
  for (std::size_t i = 0; i < plain->parameters().size(); ++i)
    CHECK(torch::equal(split->parameters()[i].grad(), plain->parameters()[i].grad()));

  // The fused backward: the same again.
  auto [plain2, fused] = twin_mlps(H, 7);
  (void)plain2;
  TorchStage f(fused, double_options());
  std::vector<std::byte> in_grad2(f.input_bytes());
  f.forward(middle_ctx(3), bytes_of(x), bytes_of(out));
  f.backward(middle_ctx(3), bytes_of(g), bytes_of(in_grad2));
  CHECK(f.chunks_in_flight() == 0);
  CHECK(torch::equal(tensor_of(in_grad2, act_shape), xr.grad()));
  for (std::size_t i = 0; i < plain->parameters().size(); ++i)
    CHECK(torch::equal(fused->parameters()[i].grad(), plain->parameters()[i].grad()));
}

TEST_CASE("Torch.Stage.LastStageStartsFromScaledLoss") {
  auto [plain, split] = twin_mlps(H, 11);
  torch::manual_seed(12);
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  torch::Tensor labels = torch::randn(act_shape, torch::kDouble);
  const double scale = 0.25;

  torch::Tensor xr = x.clone().requires_grad_(true);
  torch::Tensor lr = torch::mse_loss(plain(xr), labels);
  (lr * scale).backward();

  TorchStage s(split, double_options(), mse());
  StageContext ctx = middle_ctx(0);
  ctx.stage = 2;
  ctx.is_last_stage = true;
  ctx.loss_scale = scale;
  std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
  s.forward(ctx, bytes_of(x), bytes_of(out));
  double l = s.loss(ctx, {out.data(), out.size()}, bytes_of(labels));
  CHECK(l == lr.item<double>());  // bitwise: the same ops on the same numbers
  CHECK(contains(error_message([&] { s.backward_input(ctx, bytes_of(x), bytes_of(in_grad)); }),
                 "got an output gradient"));
  s.backward_input(ctx, {}, bytes_of(in_grad));
  s.backward_weight(ctx);
  CHECK(torch::equal(tensor_of(in_grad, act_shape), xr.grad()));
  for (std::size_t i = 0; i < plain->parameters().size(); ++i)
    CHECK(torch::equal(split->parameters()[i].grad(), plain->parameters()[i].grad()));
}

TEST_CASE("Torch.Stage.FirstStageDefersEverythingToTheWeightPass") {
  auto [plain, split] = twin_mlps(H, 21);
  torch::manual_seed(22);
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  torch::Tensor g = torch::randn(act_shape, torch::kDouble);
  plain(x).backward(g);

  TorchStage s(split, double_options());
  StageContext ctx = middle_ctx(0);
  ctx.stage = 0;
  ctx.is_first_stage = true;
  std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
  s.forward(ctx, bytes_of(x), bytes_of(out));
  // The batch has no gradient: asking for one is an error, not zeros, in either backward.
  CHECK(contains(error_message([&] { s.backward_input(ctx, bytes_of(g), bytes_of(in_grad)); }),
                 "TorchStage::backward_input (stage 0, chunk 0): an input gradient was asked for"));
  s.reset();
  s.forward(ctx, bytes_of(x), bytes_of(out));
  CHECK(contains(error_message([&] { s.backward(ctx, bytes_of(g), bytes_of(in_grad)); }),
                 "TorchStage::backward (stage 0, chunk 0): an input gradient was asked for"));
  s.reset();
  s.forward(ctx, bytes_of(x), bytes_of(out));
  s.backward_input(ctx, bytes_of(g), {});
  s.backward_weight(ctx);
  for (std::size_t i = 0; i < plain->parameters().size(); ++i)
    CHECK(torch::equal(split->parameters()[i].grad(), plain->parameters()[i].grad()));
}

TEST_CASE("Torch.Stage.WeightGradsAccumulate") {
  auto [plain, split] = twin_mlps(H, 31);
  torch::manual_seed(32);
  std::vector<torch::Tensor> xs, gs;
  for (int c = 0; c < 3; ++c) {
    xs.push_back(torch::randn(act_shape, torch::kDouble));
    gs.push_back(torch::randn(act_shape, torch::kDouble));
  }
  // Plain: three backwards into the same .grad, after a gradient already there.
  for (const torch::Tensor& p : plain->parameters()) p.mutable_grad() = torch::full_like(p, 0.5);
  for (const torch::Tensor& p : split->parameters()) p.mutable_grad() = torch::full_like(p, 0.5);
  for (int c = 0; c < 3; ++c) plain(xs[c]).backward(gs[c]);

  // Adapter: all forwards, all input passes, then the weight passes in another order (zero bubble).
  TorchStage s(split, double_options());
  std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
  for (int c = 0; c < 3; ++c) s.forward(middle_ctx(c), bytes_of(xs[c]), bytes_of(out));
  CHECK(s.chunks_in_flight() == 3);
  for (int c = 0; c < 3; ++c) s.backward_input(middle_ctx(c), bytes_of(gs[c]), bytes_of(in_grad));
  for (int c : {2, 0, 1}) s.backward_weight(middle_ctx(c));
  CHECK(s.chunks_in_flight() == 0);
  for (std::size_t i = 0; i < plain->parameters().size(); ++i) {
    const torch::Tensor& a = split->parameters()[i].grad();
    const torch::Tensor& b = plain->parameters()[i].grad();
    // Another order of three additions: equal up to rounding, and far from any single chunk's gradient.
    CHECK(torch::allclose(a, b, 1e-12, 1e-12));
    CHECK((a - 0.5).abs().sum().item<double>() > 1.0);
  }
}

TEST_CASE("Torch.Stage.OrderErrors") {
  TorchStage s(Mlp(H), double_options(), mse());
  s.module().to(torch::kDouble);
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  std::vector<std::byte> out(s.output_bytes()), in_grad(s.input_bytes());
  CHECK(contains(error_message([&] { s.backward_input(middle_ctx(5), bytes_of(x), bytes_of(in_grad)); }),
                 "no forward of this chunk"));
  s.forward(middle_ctx(5), bytes_of(x), bytes_of(out));
  CHECK(contains(error_message([&] { s.backward_weight(middle_ctx(5)); }), "before backward_input"));
  s.backward_input(middle_ctx(5), bytes_of(x), bytes_of(in_grad));
  CHECK(
      contains(error_message([&] { s.backward_input(middle_ctx(5), bytes_of(x), bytes_of(in_grad)); }), "already ran"));
  s.backward_weight(middle_ctx(5));
  CHECK(contains(error_message([&] { s.backward_weight(middle_ctx(5)); }), "no forward of this chunk"));

  // Last stage: the backward needs the loss first; labels of the wrong size; a criterion that is not scalar.
  StageContext last = middle_ctx(0);
  last.is_last_stage = true;
  s.forward(last, bytes_of(x), bytes_of(out));
  CHECK(contains(error_message([&] { s.backward_input(last, {}, bytes_of(in_grad)); }), "loss of this chunk"));
  CHECK(contains(error_message([&] {
                   (void)s.loss(last, {out.data(), out.size()}, {});
                 }),
                 "labels buffer has 0 bytes"));
  TorchStage vec(Mlp(H), double_options(),
                 [](const torch::Tensor& y, const torch::Tensor& l) { return (y - l).sum(2); });
  vec.module().to(torch::kDouble);
  vec.forward(last, bytes_of(x), bytes_of(out));
  CHECK(contains(error_message([&] {
                   (void)vec.loss(last, {out.data(), out.size()}, bytes_of(x));
                 }),
                 "one element; it returned shape [3, 5]"));
  TorchStage none(Mlp(H), double_options());
  CHECK(contains(error_message([&] { (void)none.loss(last, {out.data(), out.size()}, bytes_of(x)); }), "no criterion"));
}

TEST_CASE("Torch.Stage.ForwardModeKeepsNothing") {
  auto [a, b] = twin_mlps(H, 41);
  torch::Tensor x = torch::randn(act_shape, torch::kDouble);
  torch::Tensor labels = torch::randn(act_shape, torch::kDouble);
  TorchStage train(a, double_options(), mse()), eval(b, double_options(), mse());
  StageContext ctx = middle_ctx(0), fctx = middle_ctx(0, Mode::forward);
  ctx.is_last_stage = fctx.is_last_stage = true;
  std::vector<std::byte> out_t(train.output_bytes()), out_f(eval.output_bytes());
  train.forward(ctx, bytes_of(x), bytes_of(out_t));
  eval.forward(fctx, bytes_of(x), bytes_of(out_f));
  CHECK(same_bytes(out_t, out_f));
  CHECK(eval.chunks_in_flight() == 0);
  CHECK(train.loss(ctx, {out_t.data(), out_t.size()}, bytes_of(labels)) ==
        eval.loss(fctx, {out_f.data(), out_f.size()}, bytes_of(labels)));
  CHECK(eval.chunks_in_flight() == 0);
}
