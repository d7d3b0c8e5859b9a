// dualpipe/torch/stage.hpp: a libtorch stage adapter (opt-in; CMake target dualpipe::torch).
//
// TorchStage turns one torch::nn module of a rank into a dualpipe Stage (runtime/stage.hpp), so that a
// Pipeline can run it. For a plain module, the zero-bubble split of the backward is done by autograd itself:
//
//   forward(ctx, input, output)     copies the received bytes into a fresh tensor (requiring grad, except at
//                                   the first stage), runs the module and keeps the chunk's graph: its input,
//                                   its output and, at the last stage, its loss.
//   loss(ctx, output, labels)       last stage: the user's criterion on the kept output; the backward starts
//                                   from loss * ctx.loss_scale.
//   backward_input(ctx, g, g_in)    torch::autograd::grad(output, {input}, g, retain_graph = true): only the
//                                   input's gradient; the graph stays for the weight pass.
//   backward_weight(ctx)            torch::autograd::grad(output, parameters, g) with the graph released, the
//                                   gradients added into each parameter's .grad, the chunk's state dropped.
//   backward(ctx, g, g_in)          fused input + weight pass in one autograd call (used for `B` ops).
//
// What autograd's split costs: the weight pass walks the graph again from the chunk's output, so it
// recomputes the activation gradients inside the module that lead to the parameters (all but the input's own
// gradient). A B+W pair therefore does more work than one fused backward; the fused backward is offered so
// that `B` ops pay nothing extra.
//
// A module with layers that defer their weight work (DeferredLinear, torch/deferred_linear.hpp, or any
// submodule marked DefersWeightGrads) avoids the second walk:
//
//   backward_input(ctx, g, g_in)    one autograd pass, as the fused backward, with the chunk's
//                                   DeferredWeightGrads store active: the deferring layers compute their
//                                   input gradients and put their weight products aside; other parameters
//                                   get their gradients in this pass. The graph is released.
//   backward_weight(ctx)            runs the chunk's store: the weight products, added into .grad.
//   backward(ctx, g, g_in)          the input pass with its store run at once: each deferring layer adds its
//                                   weight product into .grad with one GEMM (C += A B) instead of handing
//                                   autograd a new tensor that is then added (no temporary, no extra pass).
//
// Data crossing the communicators are contiguous buffers of the shapes and dtypes the options name (the
// reference's set_p2p_tensor_shapes / set_p2p_tensor_dtype). A module output of another shape or dtype, or
// not on the CPU, is an Error naming the expected and the actual; nothing is reinterpreted. Non-contiguous
// outputs and views (a transpose, a slice, the input itself) are accepted: they are copied element by element
// into the contiguous send buffer, which is what `.contiguous()` would do, without an extra tensor.
//
// One tensor in, one tensor out, on the CPU. Errors that libtorch throws inside a call are rethrown as
// dualpipe::Error naming the call, the stage and the chunk (libtorch's message without its backtrace).
#pragma once

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/torch/deferred_weight_grads.hpp"

namespace dualpipe {

/// Loss of one chunk at the last stage: a tensor with one element, from the stage's output and the chunk's
/// labels (both CPU tensors of the configured shapes and dtypes).
using TorchCriterion = std::function<torch::Tensor(const torch::Tensor& output, const torch::Tensor& labels)>;

namespace detail {
/// The module behind a holder (torch::nn::Linear, ...) or a shared_ptr, with its type; null for an empty holder.
template <class M>
  requires(requires(const M& m) { m.ptr(); } || std::convertible_to<const M&, std::shared_ptr<torch::nn::Module>>)
auto typed_module_pointer(const M& m) {
  if constexpr (requires { m.ptr(); }) {
    return m.is_empty() ? std::remove_cvref_t<decltype(m.ptr())>() : m.ptr();
  } else {
    return m;
  }
}
}  // namespace detail

/// The shapes and dtypes of what a TorchStage exchanges, for one chunk (micro-batch).
struct TorchStageOptions {
  /// Shape of one chunk's activations, input and output (the reference's set_p2p_tensor_shapes).
  std::vector<std::int64_t> activation_shape;
  /// Dtype of the activations and their gradients (the reference's set_p2p_tensor_dtype).
  torch::ScalarType dtype = torch::kFloat32;
  /// This stage's input shape when it differs from activation_shape (e.g. a first stage reading tokens).
  std::vector<std::int64_t> input_shape;
  /// This stage's input dtype when it differs from dtype; an integral input gets no gradient.
  std::optional<torch::ScalarType> input_dtype;
  /// This stage's output shape when it differs from activation_shape (e.g. the last stage's logits).
  std::vector<std::int64_t> output_shape;
  /// Shape of one chunk's labels (last stage); empty: the output shape.
  std::vector<std::int64_t> label_shape;
  /// Dtype of the labels; empty: dtype.
  std::optional<torch::ScalarType> label_dtype;
};

/// One module of one rank, computed by libtorch. Models dualpipe::Stage and StageWithFusedBackward.
/// Used by one thread at a time (the rank's); different TorchStages may run on different threads.
class TorchStage {
public:
  /// `module` is a torch::nn module holder (torch::nn::Linear, torch::nn::Sequential, a TORCH_MODULE type) or
  /// a std::shared_ptr to a module, whose forward takes one tensor and returns one; it is shared, not copied.
  /// `criterion` is needed where this module is the last stage. The parameters that require grad at
  /// construction are the ones the weight pass computes.
  /// Throws ConfigError for an empty module, or an empty or non-positive shape.
  template <class M>
    requires requires(const M& m, torch::Tensor x) {
      { detail::typed_module_pointer(m)->forward(x) } -> std::convertible_to<torch::Tensor>;
    }
  TorchStage(const M& module, TorchStageOptions options, TorchCriterion criterion = {})
      : TorchStage(
            detail::typed_module_pointer(module),
            [impl = detail::typed_module_pointer(module).get()](const torch::Tensor& x) -> torch::Tensor {
              return impl->forward(x);  // alive as long as _module
            },
            std::move(options), std::move(criterion)) {}
  /// The same from a type-erased torch::nn::AnyModule.
  TorchStage(const torch::nn::AnyModule& module, TorchStageOptions options, TorchCriterion criterion = {})
      : TorchStage(
            module.is_empty() ? nullptr : module.ptr(),
            [any = module](const torch::Tensor& x) mutable -> torch::Tensor { return any.forward(x); },
            std::move(options), std::move(criterion)) {}

  // ---- The Stage concept (runtime/stage.hpp) ----
  /// Runs the module on chunk ctx.chunk; in Mode::train keeps the graph until its weight pass.
  void forward(const StageContext& ctx, ConstBytes input, MutableBytes output);
  /// Last stage: the criterion on chunk ctx.chunk's output and `labels`; returns its value.
  [[nodiscard]] double loss(const StageContext& ctx, ConstBytes output, ConstBytes labels);
  /// Gradient w.r.t. the chunk's input into `input_grad` (empty at the first stage), graph retained.
  void backward_input(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad);
  /// Gradients w.r.t. the parameters, added into their .grad; releases the chunk's graph.
  void backward_weight(const StageContext& ctx);
  /// Fused backward_input + backward_weight in one autograd pass.
  void backward(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad);
  /// Bytes of one chunk's input.
  [[nodiscard]] std::size_t input_bytes() const noexcept { return _input_bytes; }
  /// Bytes of one chunk's output.
  [[nodiscard]] std::size_t output_bytes() const noexcept { return _output_bytes; }

  // ---- Queries and housekeeping ----
  /// Bytes of one chunk's labels (what the last stage's loss reads).
  [[nodiscard]] std::size_t label_bytes() const noexcept { return _label_bytes; }
  /// The module.
  [[nodiscard]] torch::nn::Module& module() const noexcept { return *_module; }
  /// The parameters the weight pass computes (those that required grad at construction).
  [[nodiscard]] const std::vector<torch::Tensor>& parameters() const noexcept { return _parameters; }
  /// Chunks whose graph is kept: forwarded in Mode::train and not yet through their weight pass.
  [[nodiscard]] std::size_t chunks_in_flight() const noexcept { return _chunks.size(); }
  /// Whether the split backward defers the weight work of the module's deferring layers (one autograd pass
  /// and the kept products) rather than walking the graph twice: the module has a DefersWeightGrads submodule.
  [[nodiscard]] bool defers_weight_grads() const noexcept { return _defers_weight_grads; }
  /// Drops every kept graph: after a failed step, Pipeline::reset() calls it. (A later forward of a chunk
  /// would also replace that chunk's state, but chunks not forwarded again would keep theirs.)
  void reset() noexcept { _chunks.clear(); }

private:
  using ForwardFn = std::function<torch::Tensor(const torch::Tensor&)>;
  TorchStage(std::shared_ptr<torch::nn::Module> module, ForwardFn forward, TorchStageOptions options,
             TorchCriterion criterion);

  struct ChunkState {
    torch::Tensor input;           // the chunk's input (requires grad, except at the first stage)
    torch::Tensor output;          // the module's output, graph attached
    torch::Tensor loss;            // last stage: the criterion's value
    torch::Tensor root;            // where the backward starts: output, or loss at the last stage
    torch::Tensor root_grad;       // its gradient: the received output gradient, or loss_scale
    bool input_done = false;       // the backward started (root and root_grad are set)
    DeferredWeightGrads deferred;  // deferring split: the weight work its input pass put aside
  };

  ChunkState& state_of(const StageContext& ctx, const char* call);
  void start_backward(const StageContext& ctx, const char* call, ChunkState& st, ConstBytes output_grad);
  // One autograd pass for the input's and the parameters' gradients (what deferring layers leave undefined
  // goes to the active store, if any).
  void one_pass_backward(const StageContext& ctx, const char* call, ChunkState& st, MutableBytes input_grad);
  void check_input_grad(const StageContext& ctx, const char* call, const ChunkState& st, MutableBytes input_grad) const;
  void write_input_grad(const torch::Tensor& grad, MutableBytes input_grad) const;
  void accumulate(const std::vector<torch::Tensor>& grads, std::size_t first);
  [[nodiscard]] torch::Tensor view_of(ConstBytes bytes, const std::vector<std::int64_t>& shape,
                                      torch::ScalarType dtype) const;
  // Runs f; a libtorch error becomes a dualpipe::Error naming the call, stage and chunk.
  template <class F>
  decltype(auto) guarded(const StageContext& ctx, const char* call, F&& f) {
    try {
      return std::forward<F>(f)();
    } catch (const c10::Error& e) {
      fail(ctx, call, std::string("libtorch: ") + e.what_without_backtrace());
    }
  }
  [[noreturn]] void fail(const StageContext& ctx, const char* call, const std::string& what) const;
  void check_size(const StageContext& ctx, const char* call, const char* what, std::size_t got,
                  std::size_t expected) const;

  std::shared_ptr<torch::nn::Module> _module;
  ForwardFn _forward;
  TorchStageOptions _options;
  TorchCriterion _criterion;
  std::vector<std::int64_t> _input_shape, _output_shape, _label_shape;
  torch::ScalarType _input_dtype, _label_dtype;
  std::size_t _input_bytes = 0, _output_bytes = 0, _label_bytes = 0;
  std::vector<torch::Tensor> _parameters;
  bool _defers_weight_grads = false;
  std::unordered_map<int, ChunkState> _chunks;
};

// ------------------------------------------------------------------------------------------------------
// Implementation
// ------------------------------------------------------------------------------------------------------

namespace detail {

inline std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream os;
  os << shape;
  return os.str();
}

inline std::size_t checked_bytes(const char* what, const std::vector<std::int64_t>& shape, torch::ScalarType dtype) {
  if (shape.empty())
    throw ConfigError(std::string("TorchStage: ") + what +
                      " shape must not be empty (a scalar chunk is not an "
                      "activation); set TorchStageOptions::activation_shape");
  std::size_t n = 1;
  for (std::int64_t d : shape) {
    if (d <= 0)
      throw ConfigError(std::string("TorchStage: every dimension of the ") + what + " shape must be positive (got " +
                        shape_string(shape) + ")");
    n *= static_cast<std::size_t>(d);
  }
  return n * c10::elementSize(dtype);
}

}  // namespace detail

inline TorchStage::TorchStage(std::shared_ptr<torch::nn::Module> module, ForwardFn forward, TorchStageOptions options,
                              TorchCriterion criterion)
    : _module(std::move(module)), _forward(std::move(forward)), _options(std::move(options)),
      _criterion(std::move(criterion)) {
  if (!_module) throw ConfigError("TorchStage: the module is empty (a null holder or pointer)");
  _input_shape = _options.input_shape.empty() ? _options.activation_shape : _options.input_shape;
  _output_shape = _options.output_shape.empty() ? _options.activation_shape : _options.output_shape;
  _label_shape = _options.label_shape.empty() ? _output_shape : _options.label_shape;
  _input_dtype = _options.input_dtype.value_or(_options.dtype);
  _label_dtype = _options.label_dtype.value_or(_options.dtype);
  _input_bytes = detail::checked_bytes("input", _input_shape, _input_dtype);
  _output_bytes = detail::checked_bytes("output", _output_shape, _options.dtype);
  _label_bytes = detail::checked_bytes("label", _label_shape, _label_dtype);
  for (const torch::Tensor& p : _module->parameters())
    if (p.requires_grad()) _parameters.push_back(p);
  for (const std::shared_ptr<torch::nn::Module>& m : _module->modules(/*include_self=*/true))
    if (dynamic_cast<const DefersWeightGrads*>(m.get()) != nullptr) _defers_weight_grads = true;
}

inline void TorchStage::forward(const StageContext& ctx, ConstBytes input, MutableBytes output) {
  check_size(ctx, "forward", "input", input.size(), _input_bytes);
  check_size(ctx, "forward", "output", output.size(), _output_bytes);
  guarded(ctx, "forward", [&] {
    const bool train = ctx.mode == Mode::train;
    // A copy: the library may reuse the receive buffer, while autograd keeps the input until the weight pass.
    torch::Tensor x = view_of(input, _input_shape, _input_dtype).clone();
    torch::AutoGradMode grad_mode(train);
    if (train && !ctx.is_first_stage && at::isFloatingType(_input_dtype)) x.requires_grad_(true);
    torch::Tensor y = _forward(x);
    if (!y.defined()) fail(ctx, "forward", "the module returned an undefined tensor");
    if (y.scalar_type() != _options.dtype || y.sizes() != at::IntArrayRef(_output_shape) || !y.device().is_cpu())
      fail(ctx, "forward",
           "the module's output has shape " + detail::shape_string(y.sizes()) + ", dtype " +
               std::string(c10::toString(y.scalar_type())) + ", device " + y.device().str() + "; expected shape " +
               detail::shape_string(_output_shape) + ", dtype " + std::string(c10::toString(_options.dtype)) +
               ", device cpu (TorchStageOptions)");
    {
      // Element-wise copy into the contiguous send buffer: handles any strides, records no graph.
      torch::NoGradGuard no_grad;
      view_of(output, _output_shape, _options.dtype).copy_(y);
    }
    if (train) {
      ChunkState& st = _chunks[ctx.chunk];
      st = ChunkState{};
      st.input = std::move(x);
      st.output = std::move(y);
    }
  });
}

inline double TorchStage::loss(const StageContext& ctx, ConstBytes output, ConstBytes labels) {
  if (!_criterion) fail(ctx, "loss", "this stage is the last one but the TorchStage was given no criterion");
  check_size(ctx, "loss", "output", output.size(), _output_bytes);
  check_size(ctx, "loss", "labels", labels.size(), _label_bytes);
  return guarded(ctx, "loss", [&]() -> double {
    torch::Tensor l;
    if (ctx.mode == Mode::train) {
      ChunkState& st = state_of(ctx, "loss");
      torch::AutoGradMode grad_mode(true);
      // A copy: the criterion may save the labels for its backward, which runs after the buffer is reused.
      l = _criterion(st.output, view_of(labels, _label_shape, _label_dtype).clone());
      if (l.defined() && l.numel() == 1) st.loss = l;
    } else {
      torch::NoGradGuard no_grad;
      l = _criterion(view_of(output, _output_shape, _options.dtype), view_of(labels, _label_shape, _label_dtype));
    }
    if (!l.defined() || l.numel() != 1)
      fail(ctx, "loss",
           "the criterion must return a tensor with one element; it returned " +
               (l.defined() ? "shape " + detail::shape_string(l.sizes()) : std::string("an undefined tensor")));
    return l.item<double>();
  });
}

inline void TorchStage::backward_input(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad) {
  guarded(ctx, "backward_input", [&] {
    ChunkState& st = state_of(ctx, "backward_input");
    start_backward(ctx, "backward_input", st, output_grad);
    if (_defers_weight_grads) {
      // One pass over the graph, the deferring layers' weight products put aside for backward_weight.
      DeferWeightGradsInto defer(st.deferred);
      one_pass_backward(ctx, "backward_input", st, input_grad);
      // The graph is released; what the weight pass needs, the store's jobs hold.
      st.output = st.loss = st.root = st.root_grad = torch::Tensor();
      return;
    }
    if (!input_grad.empty()) {
      check_input_grad(ctx, "backward_input", st, input_grad);
      // Only the input: the engine runs just the nodes on the path to it; the graph stays for the weights.
      torch::Tensor g;
      if (st.root.requires_grad())
        g = torch::autograd::grad({st.root}, {st.input}, {st.root_grad}, /*retain_graph=*/true,
                                  /*create_graph=*/false, /*allow_unused=*/true)[0];
      write_input_grad(g, input_grad);
    }
  });
}

inline void TorchStage::backward_weight(const StageContext& ctx) {
  guarded(ctx, "backward_weight", [&] {
    ChunkState& st = state_of(ctx, "backward_weight");
    if (!st.input_done)
      fail(ctx, "backward_weight", "called before backward_input of this chunk (the weight pass comes second)");
    if (_defers_weight_grads) {
      st.deferred.run();
    } else if (!_parameters.empty() && st.root.requires_grad()) {
      // retain_graph = false: this is the graph's last use, autograd frees its saved tensors as it goes.
      accumulate(torch::autograd::grad({st.root}, _parameters, {st.root_grad}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true),
                 0);
    }
    _chunks.erase(ctx.chunk);
  });
}

inline void TorchStage::backward(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad) {
  guarded(ctx, "backward", [&] {
    ChunkState& st = state_of(ctx, "backward");
    start_backward(ctx, "backward", st, output_grad);
    if (_defers_weight_grads) {
      // The same pass as an input pass, its put-aside weight work run at once: each deferring layer then adds
      // its weight product straight into .grad (one GEMM, C += A B), where returning it through autograd would
      // make a product tensor and a second pass over .grad to add it (measured: 2-4% of the stage's step).
      {
        DeferWeightGradsInto defer(st.deferred);
        one_pass_backward(ctx, "backward", st, input_grad);
      }
      st.deferred.run();
    } else {
      one_pass_backward(ctx, "backward", st, input_grad);  // no store active: every layer does all its work
    }
    _chunks.erase(ctx.chunk);
  });
}

inline void TorchStage::one_pass_backward(const StageContext& ctx, const char* call, ChunkState& st,
                                          MutableBytes input_grad) {
  std::vector<torch::Tensor> inputs;
  inputs.reserve(_parameters.size() + 1);
  const bool want_input = !input_grad.empty();
  if (want_input) {
    check_input_grad(ctx, call, st, input_grad);
    inputs.push_back(st.input);
  }
  // Deferring layers' weights are asked for too, so that their nodes run; they answer undefined when deferred.
  inputs.insert(inputs.end(), _parameters.begin(), _parameters.end());
  if (!inputs.empty() && st.root.requires_grad()) {
    std::vector<torch::Tensor> grads = torch::autograd::grad({st.root}, inputs, {st.root_grad},
                                                             /*retain_graph=*/false, /*create_graph=*/false,
                                                             /*allow_unused=*/true);
    if (want_input) write_input_grad(grads[0], input_grad);
    accumulate(grads, want_input ? 1 : 0);
  } else if (want_input) {
    write_input_grad(torch::Tensor(), input_grad);
  }
}

inline TorchStage::ChunkState& TorchStage::state_of(const StageContext& ctx, const char* call) {
  auto it = _chunks.find(ctx.chunk);
  if (it == _chunks.end())
    fail(ctx, call,
         "no forward of this chunk is kept (forward in Mode::train must come first, and a chunk's "
         "state ends with its weight pass)");
  return it->second;
}

inline void TorchStage::start_backward(const StageContext& ctx, const char* call, ChunkState& st,
                                       ConstBytes output_grad) {
  if (st.input_done) fail(ctx, call, "this chunk's backward already ran");
  if (ctx.is_last_stage) {
    if (!st.loss.defined()) fail(ctx, call, "the last stage's loss of this chunk was not computed");
    if (!output_grad.empty()) fail(ctx, call, "the last stage got an output gradient (it starts from the loss)");
    st.root = st.loss;
    st.root_grad = torch::full_like(st.loss, ctx.loss_scale);
  } else {
    check_size(ctx, call, "output gradient", output_grad.size(), _output_bytes);
    st.root = st.output;
    // A copy: the weight pass needs it again, after the library has reused the buffer.
    st.root_grad = view_of(output_grad, _output_shape, _options.dtype).clone();
  }
  st.input_done = true;
}

inline void TorchStage::check_input_grad(const StageContext& ctx, const char* call, const ChunkState& st,
                                         MutableBytes input_grad) const {
  check_size(ctx, call, "input gradient", input_grad.size(), _input_bytes);
  if (!st.input.requires_grad())
    fail(ctx, call,
         "an input gradient was asked for, but this chunk's input has no gradient (first stage, or integral "
         "input dtype " +
             std::string(c10::toString(_input_dtype)) + ")");
}

inline void TorchStage::write_input_grad(const torch::Tensor& grad, MutableBytes input_grad) const {
  torch::NoGradGuard no_grad;
  torch::Tensor dst = view_of(input_grad, _input_shape, _input_dtype);
  if (grad.defined()) dst.copy_(grad);
  else dst.zero_();  // the output does not depend on the input
}

inline void TorchStage::accumulate(const std::vector<torch::Tensor>& grads, std::size_t first) {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < _parameters.size(); ++i) {
    const torch::Tensor& g = grads[first + i];
    if (!g.defined()) continue;  // parameter not on this chunk's path
    torch::Tensor& acc = _parameters[i].mutable_grad();
    if (acc.defined()) acc.add_(g);
    else acc = g;  // a fresh tensor from autograd::grad: keep it, as AccumulateGrad does
  }
}

inline torch::Tensor TorchStage::view_of(ConstBytes bytes, const std::vector<std::int64_t>& shape,
                                         torch::ScalarType dtype) const {
  // from_blob wants a mutable pointer; callers that must not write through it only read or clone.
  return torch::from_blob(const_cast<std::byte*>(bytes.data()), shape, torch::TensorOptions().dtype(dtype));
}

inline void TorchStage::fail(const StageContext& ctx, const char* call, const std::string& what) const {
  throw Error("TorchStage::" + std::string(call) + " (stage " + std::to_string(ctx.stage) + ", chunk " +
              std::to_string(ctx.chunk) + "): " + what);
}

inline void TorchStage::check_size(const StageContext& ctx, const char* call, const char* what, std::size_t got,
                                   std::size_t expected) const {
  if (got != expected)
    fail(ctx, call,
         std::string(what) + " buffer has " + std::to_string(got) + " bytes, expected " + std::to_string(expected) +
             " (TorchStageOptions)");
}

static_assert(check_stage<TorchStage>());
static_assert(StageWithFusedBackward<TorchStage>);

}  // namespace dualpipe
