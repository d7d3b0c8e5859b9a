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
// Each optional member is a named refinement below (StageWithFusedBackward, StageWithOverlap,
// StageWithAsyncLoss, StageWithReset, StageWithLabelBytes, StageWithGradsReady); each requirement is written once, as a
// detail:: concept that both the concepts and check_stage() use.
#pragma once

#include <concepts>
#include <cstddef>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/op.hpp"

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
concept stage_has_forward = requires(S& s, const StageContext& ctx, ConstBytes in, MutableBytes out) {
  s.forward(ctx, in, out);
};
template <class S>
concept stage_has_loss = requires(S& s, const StageContext& ctx, ConstBytes out, ConstBytes labels) {
  { s.loss(ctx, out, labels) } -> std::convertible_to<double>;
};
template <class S>
concept stage_has_backward_input = requires(S& s, const StageContext& ctx, ConstBytes grad, MutableBytes in_grad) {
  s.backward_input(ctx, grad, in_grad);
};
template <class S>
concept stage_has_backward_weight = requires(S& s, const StageContext& ctx) {
  s.backward_weight(ctx);
};
template <class S>
concept stage_has_sizes = requires(const S& s) {
  { s.input_bytes() } -> std::convertible_to<std::size_t>;
  { s.output_bytes() } -> std::convertible_to<std::size_t>;
};
template <class S>
concept stage_has_fused_backward = requires(S& s, const StageContext& ctx, ConstBytes grad, MutableBytes in_grad) {
  s.backward(ctx, grad, in_grad);
};
template <class S>
concept stage_has_forward_backward = requires(S& f, S& b, const StageContext& ctx, ConstBytes in, MutableBytes out) {
  S::forward_backward(f, ctx, in, out, b, ctx, in, out);
};
template <class S>
concept stage_has_loss_to = requires(S& s, const StageContext& ctx, ConstBytes out, ConstBytes labels, double* loss) {
  s.loss_to(ctx, out, labels, loss);
};
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
                "Stage needs: std::size_t input_bytes() const and std::size_t output_bytes() const (one chunk)");
  return Stage<S>;
}

}  // namespace dualpipe
