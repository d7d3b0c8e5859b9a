// dualpipe/core/op.hpp: the operation IR. A rank's step is a list of Ops; schedules produce
// such lists, the analysis reads them and the runtime executes them. Each Op prints as exactly
// one token of the trace grammar (docs/schedules.md).
#pragma once

#include <compare>
#include <cstdint>
#include <string_view>

namespace dualpipe {

/// What one operation of a rank does.
enum class OpKind : std::uint8_t {
  forward,           ///< `F<m>.<c>`: forward of module m, chunk c.
  backward,          ///< `B<m>.<c>`: full backward (input and weight gradients).
  backward_input,    ///< `B<m>.<c>w`: backward whose weight-gradient work is deferred to the FIFO.
  forward_backward,  ///< `FB<m0>.<c0>/<m1>.<c1>`: overlapped forward (m0,c0) and backward (m1,c1).
  weight,            ///< `W`: run the oldest deferred weight-gradient group.
  send_activation,   ///< `sF<m>.<c>`: post the send of module m's output for chunk c.
  recv_activation,   ///< `rF<m>.<c>`: post the receive of module m's input for chunk c.
  send_gradient,     ///< `sB<m>.<c>`: post the send of module m's input gradient for chunk c.
  recv_gradient,     ///< `rB<m>.<c>`: post the receive of module m's output gradient for chunk c.
  commit,            ///< `|`: launch every post since the last commit as one group and wait.
};

/// True for the kinds that run user compute (F, B, Bw, FB, W).
[[nodiscard]] constexpr bool is_compute(OpKind k) noexcept {
  return k == OpKind::forward || k == OpKind::backward || k == OpKind::backward_input ||
         k == OpKind::forward_backward || k == OpKind::weight;
}

/// True for the four kinds of post (sF, rF, sB, rB).
[[nodiscard]] constexpr bool is_post(OpKind k) noexcept {
  return k == OpKind::send_activation || k == OpKind::recv_activation || k == OpKind::send_gradient ||
         k == OpKind::recv_gradient;
}

/// True for posts that send (sF, sB).
[[nodiscard]] constexpr bool is_send(OpKind k) noexcept {
  return k == OpKind::send_activation || k == OpKind::send_gradient;
}

/// True for posts that carry activations (sF, rF); the others carry gradients.
[[nodiscard]] constexpr bool carries_activation(OpKind k) noexcept {
  return k == OpKind::send_activation || k == OpKind::recv_activation;
}

/// One operation. `module`/`chunk` name the forward half of an FB; `module1`/`chunk1` are used by FB
/// alone (its backward half) and are -1 elsewhere. `W` and `|` carry no module or chunk (-1).
struct Op {
  OpKind kind = OpKind::commit;
  std::int16_t module = -1;
  std::int16_t module1 = -1;
  std::int32_t chunk = -1;
  std::int32_t chunk1 = -1;

  friend constexpr bool operator==(const Op&, const Op&) = default;

  // Named constructors, so that schedules read like the trace they produce.
  [[nodiscard]] static constexpr Op F(int m, int c) noexcept { return make(OpKind::forward, m, c); }
  [[nodiscard]] static constexpr Op B(int m, int c) noexcept { return make(OpKind::backward, m, c); }
  [[nodiscard]] static constexpr Op Bw(int m, int c) noexcept { return make(OpKind::backward_input, m, c); }
  [[nodiscard]] static constexpr Op FB(int m0, int c0, int m1, int c1) noexcept {
    Op op = make(OpKind::forward_backward, m0, c0);
    op.module1 = static_cast<std::int16_t>(m1);
    op.chunk1 = c1;
    return op;
  }
  [[nodiscard]] static constexpr Op W() noexcept { return Op{OpKind::weight}; }
  [[nodiscard]] static constexpr Op sF(int m, int c) noexcept { return make(OpKind::send_activation, m, c); }
  [[nodiscard]] static constexpr Op rF(int m, int c) noexcept { return make(OpKind::recv_activation, m, c); }
  [[nodiscard]] static constexpr Op sB(int m, int c) noexcept { return make(OpKind::send_gradient, m, c); }
  [[nodiscard]] static constexpr Op rB(int m, int c) noexcept { return make(OpKind::recv_gradient, m, c); }
  [[nodiscard]] static constexpr Op commit_op() noexcept { return Op{OpKind::commit}; }

  /// The forward half of this op, if it has one: (module, chunk) of F or of FB's forward part.
  [[nodiscard]] constexpr bool has_forward() const noexcept {
    return kind == OpKind::forward || kind == OpKind::forward_backward;
  }
  /// Whether this op runs a backward: B, Bw, or FB's backward half.
  [[nodiscard]] constexpr bool has_backward() const noexcept {
    return kind == OpKind::backward || kind == OpKind::backward_input || kind == OpKind::forward_backward;
  }
  /// Module of the backward part (FB: module1; B/Bw: module).
  [[nodiscard]] constexpr int backward_module() const noexcept {
    return kind == OpKind::forward_backward ? module1 : module;
  }
  /// Chunk of the backward part (FB: chunk1; B/Bw: chunk).
  [[nodiscard]] constexpr int backward_chunk() const noexcept {
    return kind == OpKind::forward_backward ? chunk1 : chunk;
  }

private:
  static constexpr Op make(OpKind k, int m, int c) noexcept {
    Op op;
    op.kind = k;
    op.module = static_cast<std::int16_t>(m);
    op.chunk = c;
    return op;
  }
};

/// Whether a step trains (forward, backward, weight) or only runs forwards (inference).
enum class Mode : std::uint8_t { train, forward };

[[nodiscard]] constexpr std::string_view to_string(Mode m) noexcept { return m == Mode::train ? "train" : "forward"; }

}  // namespace dualpipe
