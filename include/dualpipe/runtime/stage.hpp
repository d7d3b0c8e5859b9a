// dualpipe/runtime/stage.hpp: the Stage concept, the user's compute for one module of one rank.
//
// The library owns the buffers a stage reads and writes; a stage keeps whatever it needs between a
// chunk's forward and its backward (saved activations, an autograd graph) keyed by ctx.chunk.
//
//   forward(ctx, input, output)              input: activations from the previous stage (the batch chunk at
//                                            the first stage); output: this stage's activations (the model's
//                                            output at the last stage).
//   loss(ctx, output, labels) -> double      last stage only: the loss of this chunk (times ctx.loss_scale is
//                                            what backward starts from).
//   backward_input(ctx, output_grad, input_grad)
//                                            gradient w.r.t. the input (output_grad is empty at the last stage:
//                                            start from the loss; input_grad is empty at the first stage).
//   backward_weight(ctx)                     gradient w.r.t. the weights of chunk ctx.chunk, accumulated; runs
//                                            after backward_input of that chunk (maybe much later: zero bubble).
//   input_bytes(), output_bytes()            sizes of one chunk's input and output, in bytes.
// How long the spans stay valid (and unchanged), so that a stage may keep views instead of copies:
//   forward's input      train mode: until the end of this chunk's backward_input (or fused backward / the
//                        backward half of its FB) on this module: the library holds the received buffer for
//                        that long (chunk_buffers.hpp), so a stage may keep a view of it for its backward.
//                        At the first stage it is a slice of the step's `inputs`: valid for the whole step.
//                        Forward mode: only during the forward call (the buffer is reused right after).
//                        A deferred backward_weight (zero-bubble `B..w` then `W`) runs after the buffer
//                        was given back: keep what the weight gradient needs (e.g. a copy of the input)
//                        yourself. (A non-deferred one runs within the backward, while it is still held.)
//   forward's output     only during the call (and the loss of the same chunk, at the last stage); it is
//                        sent or handed on, then reused.
//   backward_input's     output_grad and input_grad: only during the call.
//   labels               (loss) valid for the whole step.
// Optional, detected at compile time:
//   backward(ctx, output_grad, input_grad)   a fused full backward (input and weight), used for `B` ops.
//   static forward_backward(fwd_stage, fctx, input, output, bwd_stage, bctx, output_grad, input_grad)
//                                            an overlapped forward of one chunk and backward of another (the
//                                            reference's overlapped_forward_backward), used for `FB` ops.
//   loss_to(ctx, output, labels, double* loss)
//                                            an asynchronous loss (a GPU stage): writes the chunk's loss to
//                                            *loss in the order of ctx.stream (e.g. cudaMemcpyAsync); read
//                                            only after the step's end. Used instead of loss() when present.
//   reset()                                  drop what the stage keeps between forward and backward; called
//                                            by Pipeline::reset() after a failed step (once per stage object).
//   label_bytes() const -> size_t            bytes of one chunk's labels: the pipeline then checks the labels'
//                                            size exactly (without it, only that they split into chunks).
//   on_grads_ready(ctx)                      called once per module per training step, right after the
//                                            module's last weight gradient of the step (ctx.chunk is that
//                                            chunk), on the rank's thread (on ctx.stream for a device): the
//                                            gradients are final for this step, so a reduction of them can
//                                            start during the pipeline's cool-down. ctx.accumulation_step
//                                            and ctx.last_accumulation_step() say whether an update follows.
// Several tensors per chunk, sizes per chunk (runtime/tensors.hpp):
//   input_tensors(), output_tensors() -> std::span<const TensorSpec>
//                                            instead of (or besides) input_bytes() and output_bytes(): the
//                                            boundary's tensors (bytes per row, most rows, whether a
//                                            gradient flows back). The buffers are sized at the maxima; a step
//                                            may then give every chunk its own rows (StepOptions::sizes).
//   Every compute member may then take lists instead of spans: forward(ctx, const ConstBytesList& input,
//   const MutableBytesList& output), loss(ctx, const ConstBytesList& output, ConstBytes labels),
//   backward_input / backward(ctx, const ConstBytesList& output_grad, const MutableBytesList& input_grad),
//   forward_backward and loss_to likewise (StageWithTensorLists). A stage with one tensor may keep the
//   span signatures: it is given the chunk's bytes (the actual size of that chunk, which may be below the
//   maximum). In a gradient list, a tensor that needs no gradient is an empty span; at the first stage
//   input_grad is an empty list, at the last stage output_grad is.
// Each optional member is a named refinement below (StageWithFusedBackward, StageWithOverlap,
// StageWithAsyncLoss, StageWithReset, StageWithLabelBytes, StageWithGradsReady); each requirement is written once, as a
// detail:: concept that both the concepts and check_stage() use.
#pragma once

#include <concepts>
#include <cstddef>
#include <span>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/runtime/tensors.hpp"

namespace dualpipe {

/// What a stage is told about the chunk it is asked to compute.
struct StageContext {
  int rank = 0;                 ///< Pipeline rank.
  int module = 0;               ///< Module of that rank (0 or 1 for the bidirectional schedules; 0 otherwise).
  int stage = 0;                ///< Model stage this module computes.
  int num_stages = 1;           ///< Stages in the model.
  int chunk = 0;                ///< The module's own chunk index (as in the trace).
  int batch_chunk = 0;          ///< Index of this chunk within the step's batch.
  int num_batch_chunks = 1;     ///< Chunks in the step's batch.
  bool is_first_stage = false;  ///< Reads the batch.
  bool is_last_stage = false;   ///< Computes the loss.
  Mode mode = Mode::train;      ///< forward: no backward will follow (a stage need not keep state).
  double loss_scale = 1.0;      ///< Factor the last stage applies to the loss gradient (1/chunks when asked).
  void* stream = nullptr;       ///< Device handle of the device policy (a cudaStream_t for CUDA); null on host.
  int accumulation_step = 0;    ///< This step's index among the K steps whose gradients add up before an update.
  int accumulation_steps = 1;   ///< K (PipelineOptions::accumulation_steps).

  /// Whether this step is the last of the K: its gradients are the ones to reduce and apply.
  [[nodiscard]] constexpr bool last_accumulation_step() const noexcept {
    return accumulation_step + 1 >= accumulation_steps;
  }
};

namespace detail {
template <class S>
concept stage_has_span_forward = requires(S& s, const StageContext& ctx, ConstBytes in, MutableBytes out) {
  s.forward(ctx, in, out);
};
template <class S>
concept stage_has_list_forward = requires(S& s, const StageContext& ctx, const ConstBytesList& in,
                                          const MutableBytesList& out) {
  s.forward(ctx, in, out);
};
template <class S>
concept stage_has_forward = stage_has_span_forward<S> || stage_has_list_forward<S>;
template <class S>
concept stage_has_span_loss = requires(S& s, const StageContext& ctx, ConstBytes out, ConstBytes labels) {
  { s.loss(ctx, out, labels) } -> std::convertible_to<double>;
};
template <class S>
concept stage_has_list_loss = requires(S& s, const StageContext& ctx, const ConstBytesList& out, ConstBytes labels) {
  { s.loss(ctx, out, labels) } -> std::convertible_to<double>;
};
template <class S>
concept stage_has_loss = stage_has_span_loss<S> || stage_has_list_loss<S>;
template <class S>
concept stage_has_span_backward_input = requires(S& s, const StageContext& ctx, ConstBytes grad, MutableBytes in_grad) {
  s.backward_input(ctx, grad, in_grad);
};
template <class S>
concept stage_has_list_backward_input = requires(S& s, const StageContext& ctx, const ConstBytesList& grad,
                                                 const MutableBytesList& in_grad) {
  s.backward_input(ctx, grad, in_grad);
};
template <class S>
concept stage_has_backward_input = stage_has_span_backward_input<S> || stage_has_list_backward_input<S>;
template <class S>
concept stage_has_backward_weight = requires(S& s, const StageContext& ctx) {
  s.backward_weight(ctx);
};
template <class S>
concept stage_has_byte_sizes = requires(const S& s) {
  { s.input_bytes() } -> std::convertible_to<std::size_t>;
  { s.output_bytes() } -> std::convertible_to<std::size_t>;
};
template <class S>
concept stage_has_tensors = requires(const S& s) {
  { s.input_tensors() } -> std::convertible_to<std::span<const TensorSpec>>;
  { s.output_tensors() } -> std::convertible_to<std::span<const TensorSpec>>;
};
template <class S>
concept stage_has_sizes = stage_has_byte_sizes<S> || stage_has_tensors<S>;
template <class S>
concept stage_has_lists = stage_has_list_forward<S> || stage_has_list_loss<S> || stage_has_list_backward_input<S>;
template <class S>
concept stage_has_span_fused_backward = requires(S& s, const StageContext& ctx, ConstBytes grad, MutableBytes in_grad) {
  s.backward(ctx, grad, in_grad);
};
template <class S>
concept stage_has_list_fused_backward = requires(S& s, const StageContext& ctx, const ConstBytesList& grad,
                                                 const MutableBytesList& in_grad) {
  s.backward(ctx, grad, in_grad);
};
template <class S>
concept stage_has_fused_backward = stage_has_span_fused_backward<S> || stage_has_list_fused_backward<S>;
template <class S>
concept stage_has_span_forward_backward = requires(S& f, S& b, const StageContext& ctx, ConstBytes in,
                                                   MutableBytes out) {
  S::forward_backward(f, ctx, in, out, b, ctx, in, out);
};
template <class S>
concept stage_has_list_forward_backward = requires(S& f, S& b, const StageContext& ctx, const ConstBytesList& in,
                                                   const MutableBytesList& out) {
  S::forward_backward(f, ctx, in, out, b, ctx, in, out);
};
template <class S>
concept stage_has_forward_backward = stage_has_span_forward_backward<S> || stage_has_list_forward_backward<S>;
template <class S>
concept stage_has_span_loss_to = requires(S& s, const StageContext& ctx, ConstBytes out, ConstBytes labels,
                                          double* loss) {
  s.loss_to(ctx, out, labels, loss);
};
template <class S>
concept stage_has_list_loss_to = requires(S& s, const StageContext& ctx, const ConstBytesList& out, ConstBytes labels,
                                          double* loss) {
  s.loss_to(ctx, out, labels, loss);
};
template <class S>
concept stage_has_loss_to = stage_has_span_loss_to<S> || stage_has_list_loss_to<S>;
template <class S>
concept stage_has_reset = requires(S& s) {
  s.reset();
};
template <class S>
concept stage_has_label_bytes = requires(const S& s) {
  { s.label_bytes() } -> std::convertible_to<std::size_t>;
};
template <class S>
concept stage_has_on_grads_ready = requires(S& s, const StageContext& ctx) {
  s.on_grads_ready(ctx);
};
}  // namespace detail

/// A user type that can compute one module of one rank.
template <class S>
concept Stage = detail::stage_has_forward<S> && detail::stage_has_loss<S> && detail::stage_has_backward_input<S> &&
    detail::stage_has_backward_weight<S> && detail::stage_has_sizes<S>;

/// A Stage that also offers a fused full backward, used for `B` ops instead of input then weight.
template <class S>
concept StageWithFusedBackward = Stage<S> && detail::stage_has_fused_backward<S>;

/// A Stage whose type offers an overlapped forward+backward of two chunks, used for `FB` ops.
template <class S>
concept StageWithOverlap = Stage<S> && detail::stage_has_forward_backward<S>;

/// A Stage that writes its loss asynchronously (a device stage), used instead of loss() for the last stage:
/// `loss_to(ctx, output, labels, loss)` must have written *loss (host memory the device can write, e.g.
/// pinned) by the time the step's work on ctx.stream is done; the executor reads it at the end of the step.
template <class S>
concept StageWithAsyncLoss = Stage<S> && detail::stage_has_loss_to<S>;

/// A Stage that declares its boundary as tensors (input_tensors(), output_tensors(); runtime/tensors.hpp):
/// its chunks may change size from chunk to chunk (StepOptions::sizes).
template <class S>
concept StageWithTensors = Stage<S> && detail::stage_has_tensors<S>;

/// A StageWithTensors whose compute members take tensor lists (ConstBytesList, MutableBytesList).
template <class S>
concept StageWithTensorLists = StageWithTensors<S> && detail::stage_has_lists<S>;

/// A Stage with reset(), called by Pipeline::reset() after a failed step.
template <class S>
concept StageWithReset = Stage<S> && detail::stage_has_reset<S>;

/// A Stage that says how many label bytes one chunk has: the pipeline then checks labels exactly.
template <class S>
concept StageWithLabelBytes = Stage<S> && detail::stage_has_label_bytes<S>;

/// A Stage told when a module's gradients of the step are final (`on_grads_ready(ctx)`, see the contract above).
template <class S>
concept StageWithGradsReady = Stage<S> && detail::stage_has_on_grads_ready<S>;

/// Compile-time check with messages in plain words: `static_assert(check_stage<MyStage>())`.
template <class S>
consteval bool check_stage() {
  static_assert(detail::stage_has_forward<S>,
                "Stage needs: void forward(const dualpipe::StageContext&, dualpipe::ConstBytes input, "
                "dualpipe::MutableBytes output)");
  static_assert(detail::stage_has_loss<S>,
                "Stage needs: double loss(const dualpipe::StageContext&, dualpipe::ConstBytes output, "
                "dualpipe::ConstBytes labels) (called at the last stage only)");
  static_assert(detail::stage_has_backward_input<S>,
                "Stage needs: void backward_input(const dualpipe::StageContext&, dualpipe::ConstBytes output_grad, "
                "dualpipe::MutableBytes input_grad)");
  static_assert(detail::stage_has_backward_weight<S>,
                "Stage needs: void backward_weight(const dualpipe::StageContext&) (the deferred weight gradient)");
  static_assert(detail::stage_has_sizes<S>,
                "Stage needs: std::size_t input_bytes() const and std::size_t output_bytes() const (one chunk), or "
                "input_tensors() const and output_tensors() const returning std::span<const dualpipe::TensorSpec>");
  static_assert(!detail::stage_has_lists<S> || detail::stage_has_tensors<S>,
                "A stage whose members take tensor lists (dualpipe::ConstBytesList) needs: input_tensors() const and "
                "output_tensors() const returning std::span<const dualpipe::TensorSpec>");
  return Stage<S>;
}

/// The input layout of a stage: its tensors, or one tensor of input_bytes() bytes (one row).
template <class S>
[[nodiscard]] TensorLayout input_layout(const S& s) {
  if constexpr (detail::stage_has_tensors<S>) return TensorLayout(std::span<const TensorSpec>(s.input_tensors()));
  else return TensorLayout(std::span<const TensorSpec>({TensorSpec{s.input_bytes(), 1, true}}));
}

/// The output layout of a stage: its tensors, or one tensor of output_bytes() bytes (one row).
template <class S>
[[nodiscard]] TensorLayout output_layout(const S& s) {
  if constexpr (detail::stage_has_tensors<S>) return TensorLayout(std::span<const TensorSpec>(s.output_tensors()));
  else return TensorLayout(std::span<const TensorSpec>({TensorSpec{s.output_bytes(), 1, true}}));
}

namespace detail {
// The executor's calls of a stage: lists to a stage that takes lists, the packed span to one that takes spans.
template <class S>
void call_forward(S& s, const StageContext& ctx, const ConstBytesList& in, const MutableBytesList& out) {
  if constexpr (stage_has_list_forward<S>) s.forward(ctx, in, out);
  else s.forward(ctx, in.packed(), out.packed());
}
template <class S>
double call_loss(S& s, const StageContext& ctx, const ConstBytesList& out, ConstBytes labels) {
  if constexpr (stage_has_list_loss<S>) return static_cast<double>(s.loss(ctx, out, labels));
  else return static_cast<double>(s.loss(ctx, out.packed(), labels));
}
template <class S>
void call_loss_to(S& s, const StageContext& ctx, const ConstBytesList& out, ConstBytes labels, double* loss) {
  if constexpr (stage_has_list_loss_to<S>) s.loss_to(ctx, out, labels, loss);
  else s.loss_to(ctx, out.packed(), labels, loss);
}
template <class S>
void call_backward_input(S& s, const StageContext& ctx, const ConstBytesList& grad, const MutableBytesList& in_grad) {
  if constexpr (stage_has_list_backward_input<S>) s.backward_input(ctx, grad, in_grad);
  else s.backward_input(ctx, grad.packed(), in_grad.packed());
}
template <class S>
void call_backward(S& s, const StageContext& ctx, const ConstBytesList& grad, const MutableBytesList& in_grad) {
  if constexpr (stage_has_list_fused_backward<S>) s.backward(ctx, grad, in_grad);
  else s.backward(ctx, grad.packed(), in_grad.packed());
}
template <class S>
void call_forward_backward(S& f, const StageContext& fctx, const ConstBytesList& in, const MutableBytesList& out, S& b,
                           const StageContext& bctx, const ConstBytesList& grad, const MutableBytesList& in_grad) {
  if constexpr (stage_has_list_forward_backward<S>) S::forward_backward(f, fctx, in, out, b, bctx, grad, in_grad);
  else S::forward_backward(f, fctx, in.packed(), out.packed(), b, bctx, grad.packed(), in_grad.packed());
}
}  // namespace detail

}  // namespace dualpipe
