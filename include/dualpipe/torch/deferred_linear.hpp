// dualpipe/torch/deferred_linear.hpp: a linear layer whose backward can leave its weight gradient for later.
//
// DeferredLinear is a drop-in for torch::nn::Linear: the same options, parameters ("weight", "bias"), the
// same initialisation from the same random state, and the same numbers forward and backward (the forward is
// at::linear itself; the backward does the products that autograd does for it). Its backward always
// computes the input's gradient at once; the weight's and bias's are computed at once too, unless a
// DeferredWeightGrads store is active on the thread (TorchStage's input pass), which then gets a job that
// computes them later from the kept output gradient and input: grad_weight = grad_output^T x input,
// grad_bias = the sum of grad_output over rows, both added into .grad (the weight's with one GEMM that
// accumulates into .grad, C += A B, rather than a product tensor and an addition).
//
// So a TorchStage whose module uses DeferredLinear splits a backward into an input pass (one autograd pass,
// less the weight products) and a weight pass (just those products), instead of walking the graph twice.
// The price is memory: each chunk keeps its layers' inputs and output gradients until its weight pass.
// The backward is not itself differentiable (no double backward through a deferred layer).
#pragma once

#include <torch/autograd.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>
#include <torch/nn/options/linear.h>
#include <torch/nn/pimpl.h>

#include <cmath>
#include <cstdint>
#include <ostream>
#include <tuple>

#include "dualpipe/torch/deferred_weight_grads.hpp"

namespace dualpipe {

namespace detail {

/// Adds a freshly computed gradient into a parameter's .grad, as autograd's accumulation does.
inline void add_into_grad(const torch::Tensor& parameter, torch::Tensor grad) {
  torch::NoGradGuard no_grad;
  torch::Tensor& acc = const_cast<torch::Tensor&>(parameter).mutable_grad();
  if (acc.defined()) acc.add_(grad);
  else acc = std::move(grad);  // a new tensor nobody else holds: keep it rather than copy it
}

/// Adds the product a b into a parameter's .grad with one GEMM (C += a b): no product tensor and no second
/// pass over .grad to add it. The first gradient is the product itself. (The sum is the same; its rounding
/// may differ in the last bits from computing a b and adding it, as a GEMM may add C in blocks.)
inline void add_product_into_grad(const torch::Tensor& parameter, const torch::Tensor& a, const torch::Tensor& b) {
  torch::NoGradGuard no_grad;
  torch::Tensor& acc = const_cast<torch::Tensor&>(parameter).mutable_grad();
  if (acc.defined()) acc.addmm_(a, b);
  else acc = a.mm(b);
}

/// grad_output as rows (..., out) -> (n, out); input likewise (n, in).
inline torch::Tensor as_rows(const torch::Tensor& t) { return t.reshape({-1, t.size(-1)}); }

}  // namespace detail

/// The autograd function behind DeferredLinear: y = x W^T + b, weight work deferrable.
struct DeferredLinearFunction : torch::autograd::Function<DeferredLinearFunction> {
  /// `bias` is optional rather than an undefined tensor: autograd's apply takes only defined tensors.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias) {
    const torch::Tensor b = bias.value_or(torch::Tensor());
    ctx->save_for_backward({input, weight, b});
    return torch::nn::functional::linear(input, weight, b);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &input = saved[0], &weight = saved[1], &bias = saved[2];
    const torch::Tensor grad_rows = detail::as_rows(grad_outputs[0]);
    torch::Tensor grad_input, grad_weight, grad_bias;
    // The products autograd does for at::linear's matmul (mm backward): dX = dY W, dW = dY^T X.
    if (ctx->needs_input_grad(0)) grad_input = grad_rows.mm(weight).view(input.sizes());
    const bool want_weight = ctx->needs_input_grad(1);
    const bool want_bias = bias.defined() && ctx->needs_input_grad(2);
    if (!want_weight && !want_bias) return {grad_input, grad_weight, grad_bias};
    if (DeferredWeightGrads* store = deferred_weight_grads_sink()) {
      // Keeps the output gradient and input (views of tensors autograd already holds: no copy).
      store->defer([grad_rows, input, weight = want_weight ? weight : torch::Tensor(),
                    bias = want_bias ? bias : torch::Tensor()] {
        torch::NoGradGuard no_grad;
        if (weight.defined()) detail::add_product_into_grad(weight, grad_rows.t(), detail::as_rows(input));
        if (bias.defined()) detail::add_into_grad(bias, grad_rows.sum(0));
      });
    } else {
      if (want_weight) grad_weight = grad_rows.t().mm(detail::as_rows(input));
      if (want_bias) grad_bias = grad_rows.sum(0);
    }
    return {grad_input, grad_weight, grad_bias};
  }
};

/// torch::nn::Linear with a deferrable weight gradient (see the top of this file). Use it where Linear goes.
class DeferredLinearImpl : public torch::nn::Cloneable<DeferredLinearImpl>, public DefersWeightGrads {
public:
  DeferredLinearImpl(std::int64_t in_features, std::int64_t out_features)
      : DeferredLinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}
  explicit DeferredLinearImpl(const torch::nn::LinearOptions& options_) : options(options_) { reset(); }

  /// Registers "weight" and "bias" (an undefined bias without options.bias()), then initialises them.
  void reset() override {
    weight = register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
    bias = options.bias() ? register_parameter("bias", torch::empty(options.out_features()))
                          : register_parameter("bias", {}, /*requires_grad=*/false);
    reset_parameters();
  }
  /// Linear's initialisation, drawing the same numbers in the same order: weight ~ kaiming_uniform(a = sqrt 5),
  /// bias ~ U(-1/sqrt(in), 1/sqrt(in)).
  void reset_parameters() {
    torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
    if (bias.defined()) {
      const auto [fan_in, fan_out] = torch::nn::init::_calculate_fan_in_and_fan_out(weight);
      (void)fan_out;
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
      torch::nn::init::uniform_(bias, -bound, bound);
    }
  }

  void pretty_print(std::ostream& stream) const override {
    stream << "dualpipe::DeferredLinear(in_features=" << options.in_features()
           << ", out_features=" << options.out_features() << ", bias=" << std::boolalpha << options.bias() << ")";
  }

  torch::Tensor forward(const torch::Tensor& input) {
    return DeferredLinearFunction::apply(input, weight,
                                         bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt);
  }

  torch::nn::LinearOptions options;
  torch::Tensor weight;
  torch::Tensor bias;
};
TORCH_MODULE(DeferredLinear);

}  // namespace dualpipe
