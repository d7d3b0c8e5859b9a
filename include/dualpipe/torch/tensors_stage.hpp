// dualpipe/torch/tensors_stage.hpp: TorchTensorsStage, a libtorch stage that takes and returns several tensors,
// each with its dtype and a shape whose one dimension (the sequence, say) may change from chunk to chunk
// (runtime/tensors.hpp, docs/activations.md). It models StageWithTensorLists and StageWithFusedBackward.
//
//   forward(ctx, in, out)        each received tensor becomes a fresh tensor of its chunk's shape (the
//                                variable dimension is the chunk's rows), requiring grad when it carries a
//                                gradient (floating, needs_grad, not the first stage); the user's forward
//                                maps the list to the output list, which is copied into the send buffers.
//   loss(ctx, out, labels)       last stage: the criterion on the kept outputs and the chunk's labels (whose
//                                variable dimension follows tensor 0's rows, as the pipeline splits them).
//   backward_input(ctx, g, g_in) autograd::grad from the outputs that carry a gradient (or the loss) to the
//                                inputs that do, graph retained; a tensor without one gets no gradient.
//   backward_weight(ctx)         autograd::grad to the parameters, added into .grad; the chunk's graph freed.
//   backward(ctx, g, g_in)       both in one pass.
// A tensor's "rows" in the step's size table are the size of its variable dimension (1 for a tensor without
// one). Errors that libtorch throws inside a call become dualpipe::Error naming the call, stage and chunk.
#pragma once

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/module.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/runtime/tensors.hpp"
#include "dualpipe/torch/stage.hpp"

namespace dualpipe {

/// One tensor of a TorchTensorsStage's input or output.
struct TorchTensor {
  std::vector<std::int64_t> shape;  ///< At its largest (the variable dimension at its maximum).
  torch::ScalarType dtype = torch::kFloat32;
  int variable_dim = -1;   ///< The dimension whose size may change per chunk; -1: none.
  bool needs_grad = true;  ///< Whether a gradient flows back (never for an integral dtype).
};

/// What a TorchTensorsStage exchanges.
struct TorchTensorsOptions {
  std::vector<TorchTensor> inputs;   ///< The input tensors, in order.
  std::vector<TorchTensor> outputs;  ///< The output tensors (the next stage's inputs).
  TorchTensor labels;                ///< Last stage: one chunk's labels; its variable dimension follows tensor 0.
};

/// The module's forward over tensor lists.
using TorchTensorsForward = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;
/// Loss of one chunk at the last stage, from its outputs and labels: a tensor with one element.
using TorchTensorsCriterion =
    std::function<torch::Tensor(const std::vector<torch::Tensor>& outputs, const torch::Tensor& labels)>;

/// One module of one rank whose boundary is several tensors of per-chunk sizes.
class TorchTensorsStage {
  // Runs f; a libtorch error becomes a dualpipe::Error naming the call, stage and chunk. (First: the members
  // below deduce their return types from it.)
  template <class F>
  decltype(auto) guarded(const StageContext& ctx, const char* call, F&& f) {
    try {
      return std::forward<F>(f)();
    } catch (const c10::Error& e) {
      fail(ctx, call, std::string("libtorch: ") + e.what_without_backtrace());
    }
  }
  [[noreturn]] void fail(const StageContext& ctx, const char* call, const std::string& what) const {
    throw Error("TorchTensorsStage::" + std::string(call) + " (stage " + std::to_string(ctx.stage) + ", chunk " +
                std::to_string(ctx.chunk) + "): " + what);
  }

public:
  /// `module` owns the parameters (the ones that require grad at construction are the weight pass's);
  /// `forward` computes with it. Throws ConfigError for an empty module, no tensors, a bad shape or
  /// variable dimension, or more than max_boundary_tensors tensors.
  TorchTensorsStage(std::shared_ptr<torch::nn::Module> module, TorchTensorsForward forward, TorchTensorsOptions options,
                    TorchTensorsCriterion criterion = {})
      : _module(std::move(module)), _forward(std::move(forward)), _options(std::move(options)),
        _criterion(std::move(criterion)) {
    if (!_module) throw ConfigError("TorchTensorsStage: the module is empty");
    if (_options.inputs.empty() || _options.outputs.empty())
      throw ConfigError("TorchTensorsStage: inputs and outputs need at least one tensor each");
    for (const TorchTensor& t : _options.inputs) _input_specs.push_back(spec_of("input", t));
    for (const TorchTensor& t : _options.outputs) _output_specs.push_back(spec_of("output", t));
    if (_options.labels.shape.empty()) _options.labels = _options.outputs[0];
    _label_spec = spec_of("label", _options.labels);
    if (_input_specs.size() > max_boundary_tensors || _output_specs.size() > max_boundary_tensors)
      throw ConfigError("TorchTensorsStage: at most " + std::to_string(max_boundary_tensors) + " tensors");
    for (const torch::Tensor& p : _module->parameters())
      if (p.requires_grad()) _parameters.push_back(p);
  }

  // ---- StageWithTensorLists ----
  [[nodiscard]] std::span<const TensorSpec> input_tensors() const noexcept { return _input_specs; }
  [[nodiscard]] std::span<const TensorSpec> output_tensors() const noexcept { return _output_specs; }

  void forward(const StageContext& ctx, const ConstBytesList& in, const MutableBytesList& out) {
    guarded(ctx, "forward", [&] {
      check_count(ctx, "forward", in.size(), _options.inputs.size(), "input");
      check_count(ctx, "forward", out.size(), _options.outputs.size(), "output");
      const bool train = ctx.mode == Mode::train;
      std::vector<torch::Tensor> xs;
      for (std::size_t t = 0; t < in.size(); ++t) {
        const TorchTensor& spec = _options.inputs[t];
        // A copy: the library reuses the receive buffer, autograd keeps the input until the weight pass.
        torch::Tensor x = view(ctx, "forward", in[t], spec, _input_specs[t]).clone();
        if (train && !ctx.is_first_stage && carries_grad(spec)) x.requires_grad_(true);
        xs.push_back(std::move(x));
      }
      torch::AutoGradMode grad_mode(train);
      std::vector<torch::Tensor> ys = _forward(xs);
      check_count(ctx, "forward", ys.size(), out.size(), "module output");
      {
        torch::NoGradGuard no_grad;
        for (std::size_t t = 0; t < ys.size(); ++t) {
          torch::Tensor dst = view(ctx, "forward", out[t], _options.outputs[t], _output_specs[t]);
          if (!ys[t].defined() || ys[t].sizes() != dst.sizes() || ys[t].scalar_type() != dst.scalar_type() ||
              !ys[t].device().is_cpu())
            fail(ctx, "forward",
                 "output tensor " + std::to_string(t) + " has shape " +
                     (ys[t].defined() ? detail::shape_string(ys[t].sizes()) : std::string("(undefined)")) +
                     ", expected " + detail::shape_string(dst.sizes()) + " of " +
                     std::string(c10::toString(dst.scalar_type())) + " on the cpu (this chunk's sizes)");
          dst.copy_(ys[t]);
        }
      }
      if (train) {
        ChunkState& st = _chunks[ctx.chunk];
        st = ChunkState{};
        st.inputs = std::move(xs);
        st.outputs = std::move(ys);
      }
    });
  }

  [[nodiscard]] double loss(const StageContext& ctx, const ConstBytesList& out, ConstBytes labels) {
    if (!_criterion) fail(ctx, "loss", "this stage is the last one but it was given no criterion");
    return guarded(ctx, "loss", [&]() -> double {
      const std::size_t rows = _output_specs[0].row_bytes ? out[0].size() / _output_specs[0].row_bytes : 1;
      const torch::Tensor lab = view_rows(labels, _options.labels, _label_spec, rows, ctx, "loss").clone();
      torch::Tensor l;
      if (ctx.mode == Mode::train) {
        ChunkState& st = state_of(ctx, "loss");
        torch::AutoGradMode grad_mode(true);
        l = _criterion(st.outputs, lab);
        if (l.defined() && l.numel() == 1) st.loss = l;
      } else {
        torch::NoGradGuard no_grad;
        std::vector<torch::Tensor> ys;
        for (std::size_t t = 0; t < out.size(); ++t)
          ys.push_back(view(ctx, "loss", out[t], _options.outputs[t], _output_specs[t]));
        l = _criterion(ys, lab);
      }
      if (!l.defined() || l.numel() != 1) fail(ctx, "loss", "the criterion must return a tensor with one element");
      return l.item<double>();
    });
  }

  void backward_input(const StageContext& ctx, const ConstBytesList& grad, const MutableBytesList& in_grad) {
    guarded(ctx, "backward_input", [&] {
      ChunkState& st = state_of(ctx, "backward_input");
      start_backward(ctx, "backward_input", st, grad);
      std::vector<torch::Tensor> targets;
      std::vector<std::size_t> which;
      input_targets(st, in_grad, targets, which);
      std::vector<torch::Tensor> grads;
      if (!targets.empty() && !st.roots.empty())
        grads = torch::autograd::grad(st.roots, targets, st.root_grads, /*retain_graph=*/true,
                                      /*create_graph=*/false, /*allow_unused=*/true);
      write_input_grads(ctx, in_grad, grads, which);
    });
  }

  void backward_weight(const StageContext& ctx) {
    guarded(ctx, "backward_weight", [&] {
      ChunkState& st = state_of(ctx, "backward_weight");
      if (!st.input_done) fail(ctx, "backward_weight", "called before backward_input of this chunk");
      if (!_parameters.empty() && !st.roots.empty())
        accumulate(torch::autograd::grad(st.roots, _parameters, st.root_grads, /*retain_graph=*/false,
                                         /*create_graph=*/false, /*allow_unused=*/true),
                   0);
      _chunks.erase(ctx.chunk);
    });
  }

  void backward(const StageContext& ctx, const ConstBytesList& grad, const MutableBytesList& in_grad) {
    guarded(ctx, "backward", [&] {
      ChunkState& st = state_of(ctx, "backward");
      start_backward(ctx, "backward", st, grad);
      std::vector<torch::Tensor> targets;
      std::vector<std::size_t> which;
      input_targets(st, in_grad, targets, which);
      const std::size_t n_inputs = targets.size();
      targets.insert(targets.end(), _parameters.begin(), _parameters.end());
      std::vector<torch::Tensor> grads;
      if (!targets.empty() && !st.roots.empty())
        grads = torch::autograd::grad(st.roots, targets, st.root_grads, /*retain_graph=*/false,
                                      /*create_graph=*/false, /*allow_unused=*/true);
      write_input_grads(ctx, in_grad, grads, which);
      if (!grads.empty()) accumulate(grads, n_inputs);
      _chunks.erase(ctx.chunk);
    });
  }

  /// Drops every kept graph (Pipeline::reset() after a failed step).
  void reset() noexcept { _chunks.clear(); }
  /// Chunks whose graph is kept.
  [[nodiscard]] std::size_t chunks_in_flight() const noexcept { return _chunks.size(); }
  /// The parameters the weight pass computes.
  [[nodiscard]] const std::vector<torch::Tensor>& parameters() const noexcept { return _parameters; }
  /// The module.
  [[nodiscard]] torch::nn::Module& module() const noexcept { return *_module; }

private:
  struct ChunkState {
    std::vector<torch::Tensor> inputs, outputs;
    torch::Tensor loss;
    std::vector<torch::Tensor> roots, root_grads;  // where the backward starts, and its gradients
    bool input_done = false;
  };

  static bool carries_grad(const TorchTensor& t) { return t.needs_grad && at::isFloatingType(t.dtype); }

  static TensorSpec spec_of(const char* what, const TorchTensor& t) {
    if (t.shape.empty()) throw ConfigError(std::string("TorchTensorsStage: a ") + what + " tensor has an empty shape");
    if (t.variable_dim < -1 || t.variable_dim >= static_cast<int>(t.shape.size()))
      throw ConfigError(std::string("TorchTensorsStage: a ") + what + " tensor's variable_dim " +
                        std::to_string(t.variable_dim) + " is outside its shape " + detail::shape_string(t.shape));
    std::size_t row = c10::elementSize(t.dtype);
    for (std::size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] <= 0)
        throw ConfigError(std::string("TorchTensorsStage: every dimension of a ") + what +
                          " tensor must be positive (got " + detail::shape_string(t.shape) + ")");
      if (static_cast<int>(d) != t.variable_dim) row *= static_cast<std::size_t>(t.shape[d]);
    }
    const std::size_t rows =
        t.variable_dim < 0 ? 1 : static_cast<std::size_t>(t.shape[static_cast<std::size_t>(t.variable_dim)]);
    return TensorSpec{row, rows, carries_grad(t)};
  }

  // The chunk's tensor over `bytes`: its variable dimension is bytes / row_bytes.
  torch::Tensor view(const StageContext& ctx, const char* call, ConstBytes bytes, const TorchTensor& t,
                     const TensorSpec& spec) const {
    if (spec.row_bytes == 0 || bytes.size() % spec.row_bytes != 0)
      fail(ctx, call,
           "a buffer of " + std::to_string(bytes.size()) + " bytes is not whole rows of " +
               std::to_string(spec.row_bytes));
    return view_rows(bytes, t, spec, bytes.size() / spec.row_bytes, ctx, call);
  }
  torch::Tensor view_rows(ConstBytes bytes, const TorchTensor& t, const TensorSpec& spec, std::size_t rows,
                          const StageContext& ctx, const char* call) const {
    std::vector<std::int64_t> shape = t.shape;
    if (t.variable_dim >= 0) shape[static_cast<std::size_t>(t.variable_dim)] = static_cast<std::int64_t>(rows);
    if (bytes.size() != spec.row_bytes * (t.variable_dim >= 0 ? rows : 1))
      fail(ctx, call,
           "a buffer of " + std::to_string(bytes.size()) + " bytes does not hold shape " + detail::shape_string(shape));
    return torch::from_blob(const_cast<std::byte*>(bytes.data()), shape, torch::TensorOptions().dtype(t.dtype));
  }

  ChunkState& state_of(const StageContext& ctx, const char* call) {
    auto it = _chunks.find(ctx.chunk);
    if (it == _chunks.end()) fail(ctx, call, "no forward of this chunk is kept");
    return it->second;
  }

  void start_backward(const StageContext& ctx, const char* call, ChunkState& st, const ConstBytesList& grad) {
    if (st.input_done) fail(ctx, call, "this chunk's backward already ran");
    if (ctx.is_last_stage) {
      if (!st.loss.defined()) fail(ctx, call, "the last stage's loss of this chunk was not computed");
      st.roots = {st.loss};
      st.root_grads = {torch::full_like(st.loss, ctx.loss_scale)};
    } else {
      check_count(ctx, call, grad.size(), st.outputs.size(), "output gradient");
      for (std::size_t t = 0; t < grad.size(); ++t) {
        if (!_output_specs[t].needs_grad || !st.outputs[t].requires_grad()) continue;
        st.roots.push_back(st.outputs[t]);
        // A copy: the weight pass needs it again, after the library has reused the buffer.
        st.root_grads.push_back(view(ctx, call, grad[t], _options.outputs[t], _output_specs[t]).clone());
      }
    }
    st.input_done = true;
  }

  void input_targets(const ChunkState& st, const MutableBytesList& in_grad, std::vector<torch::Tensor>& targets,
                     std::vector<std::size_t>& which) const {
    for (std::size_t t = 0; t < in_grad.size() && t < st.inputs.size(); ++t)
      if (_input_specs[t].needs_grad && st.inputs[t].requires_grad()) {
        targets.push_back(st.inputs[t]);
        which.push_back(t);
      }
  }

  void write_input_grads(const StageContext& ctx, const MutableBytesList& in_grad,
                         const std::vector<torch::Tensor>& grads, const std::vector<std::size_t>& which) const {
    torch::NoGradGuard no_grad;
    for (std::size_t t = 0; t < in_grad.size(); ++t) {
      if (!_input_specs[t].needs_grad) continue;
      torch::Tensor dst = view(ctx, "backward", in_grad[t], _options.inputs[t], _input_specs[t]);
      std::size_t k = 0;
      while (k < which.size() && which[k] != t) ++k;
      if (k < which.size() && k < grads.size() && grads[k].defined()) dst.copy_(grads[k]);
      else dst.zero_();  // the outputs do not depend on it
    }
  }

  void accumulate(const std::vector<torch::Tensor>& grads, std::size_t first) {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < _parameters.size() && first + i < grads.size(); ++i) {
      const torch::Tensor& g = grads[first + i];
      if (!g.defined()) continue;
      torch::Tensor& acc = _parameters[i].mutable_grad();
      if (acc.defined()) acc.add_(g);
      else acc = g;
    }
  }

  void check_count(const StageContext& ctx, const char* call, std::size_t got, std::size_t want,
                   const char* what) const {
    if (got != want) fail(ctx, call, std::to_string(got) + " " + what + " tensors, expected " + std::to_string(want));
  }

  std::shared_ptr<torch::nn::Module> _module;
  TorchTensorsForward _forward;
  TorchTensorsOptions _options;
  TorchTensorsCriterion _criterion;
  std::vector<TensorSpec> _input_specs, _output_specs;
  TensorSpec _label_spec;
  std::vector<torch::Tensor> _parameters;
  std::unordered_map<int, ChunkState> _chunks;
};

static_assert(check_stage<TorchTensorsStage>());
static_assert(StageWithTensorLists<TorchTensorsStage>);
static_assert(StageWithFusedBackward<TorchTensorsStage>);

}  // namespace dualpipe
