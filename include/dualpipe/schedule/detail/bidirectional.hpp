// dualpipe/schedule/detail/bidirectional.hpp: the eight-step walk shared by DualPipe and DualPipeV.
//
// Both schedules issue the same sequence of primitives (docs/schedules.md, "The eight steps"); they
// differ only in how a phase maps to a module, which ranks sit at a direction's ends, and the
// constants H, h, K. This walker mirrors the reference control flow primitive by primitive, so the
// op list it records is the reference's own issue order, token for token.
#pragma once

#include <array>
#include <vector>

#include "dualpipe/core/op.hpp"

namespace dualpipe::detail {

class BidirectionalWalker {
public:
  /// `v_shape`: DualPipeV (both directions' ends on rank 0; the turn on the last rank).
  constexpr BidirectionalWalker(bool v_shape, int ranks, int chunks, int rank, Mode mode)
      : _v(v_shape), _forward_only(mode == Mode::forward), _first(rank == 0), _last(rank == ranks - 1),
        _second_half(!v_shape && rank >= ranks / 2) {
    // The spec's constants: H, h, K and the 'middle' rank, with DualPipeV's substitutions.
    _H = v_shape ? ranks : ranks / 2;
    _h = v_shape ? rank : (rank < ranks - 1 - rank ? rank : ranks - 1 - rank);
    _K = v_shape ? chunks : chunks / 2;
    _middle = v_shape ? _last : (rank == ranks / 2 - 1 || rank == ranks / 2);
  }

  /// Runs the whole step and returns the ops it issued.
  constexpr std::vector<Op> run() {
    // Written by index into a buffer sized for the whole step and trimmed at the end: a push_back per op
    // (not inlined by GCC here) cost three quarters of the generation time.
    _ops.resize(static_cast<std::size_t>(_K) * (_forward_only ? 6 : 14) + 16);
    const int H = _H, h = _h, K = _K;
    const bool middle = _middle;

    // 1: nF0
    for (int i = 0; i < (H - h - 1) * 2; ++i) forward_chunk(0);

    // 2: nF0F1
    const int n2 = h + 1;
    recv_forward(0);
    for (int i = 0; i < n2; ++i) {
      forward_chunk(0, false, middle);
      recv_forward(0);
      forward_chunk(1, true, !middle || i < n2 - 1);
      if (!middle) send_forward(0);
    }

    // 3: nB1W1F1 (zero bubble)
    for (int i = 0; i < H - h - 1; ++i) {
      backward_chunk(1, true);
      recv_forward(1);
      weight_chunk();
      forward_chunk(1, false);
    }

    // 4: nF0B1F1B0 (main step)
    const int n4 = K - 2 * H + h + 1;
    for (int i = 0; i < n4; ++i) {
      if (i == 0) {
        if (middle) {
          // Not overlapped, to shorten the bubble (as the reference does).
          forward_chunk(0, false, false);
          send_forward(1);
          backward_chunk(1, false, true, false);
          send_forward(0);
          send_backward(1);
        } else {
          forward_backward_chunk(0, 1, false);
        }
      } else {
        forward_backward_chunk(0, 1);
      }
      forward_backward_chunk(1, 0);
    }

    // 5: nB1F1B0
    for (int i = 0; i < H - h - 1; ++i) {
      backward_chunk(1);
      forward_backward_chunk(1, 0);
    }

    // 6: nB1B0, zero bubble from half way
    const int n6 = h + 1;
    bool zb = false;
    for (int i = 0; i < n6; ++i) {
      if (i == n6 / 2 && h % 2 == 1) zb = true;
      backward_chunk(1, zb);
      if (i == n6 / 2 && h % 2 == 0) zb = true;
      backward_chunk(0, zb);
    }

    // 7: nWB0 (zero bubble)
    for (int i = 0; i < H - h - 1; ++i) {
      weight_chunk();
      backward_chunk(0, true);
    }

    // 8: nW
    for (int i = 0; i < h + 1; ++i) weight_chunk();
    commit();
    _ops.resize(_n);
    return std::move(_ops);
  }

  /// Weight groups stored and not yet run when the walk ended (0 for a correct walk).
  [[nodiscard]] constexpr int pending_weight_groups() const noexcept { return _pending_weights; }

private:
  // Phase -> module. DualPipe's second half swaps them; DualPipeV never does.
  [[nodiscard]] constexpr int module_of(int phase) const noexcept { return phase ^ (_second_half ? 1 : 0); }

  // Where posts are skipped (no peer). DualPipe: a direction ends at rank 0 or P-1 for either module.
  // DualPipeV: module 0 starts and module 1 ends on rank 0; the turn on the last rank is local.
  [[nodiscard]] constexpr bool no_activation_recv(int m) const noexcept {
    return (_first && m == 0) || (_last && m == 1);
  }
  [[nodiscard]] constexpr bool no_activation_send(int m) const noexcept {
    return (_first && m == 1) || (_last && m == 0);
  }
  // Gradients travel the reverse way, so the rules swap.
  [[nodiscard]] constexpr bool no_gradient_recv(int m) const noexcept { return no_activation_send(m); }
  [[nodiscard]] constexpr bool no_gradient_send(int m) const noexcept { return no_activation_recv(m); }

  constexpr void push(const Op& op) {
    if (_n == _ops.size()) _ops.resize(2 * _n);  // never for the schedules' own sizes; kept for safety
    _ops[_n++] = op;
  }

  constexpr void recv_forward(int phase) {
    const int m = module_of(phase);
    if (no_activation_recv(m)) return;
    push(Op::rF(m, _recv_f[m]++));
    _posted = true;
  }
  constexpr void send_forward(int phase) {
    const int m = module_of(phase);
    if (no_activation_send(m)) return;
    push(Op::sF(m, _send_f[m]++));
    _posted = true;
  }
  constexpr void recv_backward(int phase) {
    if (_forward_only) return;
    const int m = module_of(phase);
    if (no_gradient_recv(m)) return;
    push(Op::rB(m, _recv_b[m]++));
    _posted = true;
  }
  constexpr void send_backward(int phase) {
    if (_forward_only) return;
    const int m = module_of(phase);
    if (no_gradient_send(m)) return;
    push(Op::sB(m, _send_b[m]++));
    _posted = true;
  }
  constexpr void commit() {
    if (!_posted) return;
    push(Op::commit_op());
    _posted = false;
  }

  constexpr void forward_compute(int phase) {
    const int m = module_of(phase);
    push(Op::F(m, _f[m]++));
  }
  constexpr void backward_compute(int phase, bool zb) {
    if (_forward_only) return;
    const int m = module_of(phase);
    push(zb ? Op::Bw(m, _b[m]) : Op::B(m, _b[m]));
    ++_b[m];
    if (zb) ++_pending_weights;
  }
  constexpr void forward_backward_compute(int phase0, int phase1) {
    if (_forward_only) {
      forward_compute(phase0);
      return;
    }
    const int m0 = module_of(phase0), m1 = module_of(phase1);
    push(Op::FB(m0, _f[m0], m1, _b[m1]));
    ++_f[m0];
    ++_b[m1];
  }

  constexpr void forward_chunk(int phase, bool recv = true, bool send = true) {
    if (recv) recv_forward(phase);
    commit();
    forward_compute(phase);
    if (send) send_forward(phase);
  }
  constexpr void backward_chunk(int phase, bool zb = false, bool recv = true, bool send = true) {
    if (recv) recv_backward(phase);
    commit();  // even in forward-only mode, as the reference does
    backward_compute(phase, zb);
    if (send) send_backward(phase);
  }
  constexpr void forward_backward_chunk(int phase0, int phase1, bool recv0 = true) {
    if (recv0) recv_forward(phase0);
    recv_backward(phase1);
    commit();
    forward_backward_compute(phase0, phase1);
    send_forward(phase0);
    send_backward(phase1);
  }
  constexpr void weight_chunk() {
    if (_forward_only) return;  // no commit either: the reference returns first
    commit();
    push(Op::W());
    --_pending_weights;
  }

  bool _v;
  bool _forward_only;
  bool _first;
  bool _last;
  bool _second_half;
  bool _middle = false;
  bool _posted = false;
  int _H = 0, _h = 0, _K = 0;
  int _pending_weights = 0;
  std::array<int, 2> _f{}, _b{}, _send_f{}, _recv_f{}, _send_b{}, _recv_b{};
  std::vector<Op> _ops;
  std::size_t _n = 0;  // ops written so far
};

}  // namespace dualpipe::detail
