// dualpipe/schedule/detail/linear.hpp: what the single-direction baselines (1F1B, GPipe, ZB1P) share:
// one module per rank, stage r of P, activations flowing from rank r to r+1 and gradients back.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "dualpipe/core/op.hpp"
#include "dualpipe/schedule/placement.hpp"

namespace dualpipe::detail {

/// Records one rank's op list of a linear pipeline (module 0 only). Posts with no peer are skipped
/// (no rF / sB on the first rank, no sF / rB on the last), and a commit is recorded only when something
/// was posted since the previous one, as in the trace grammar.
class LinearRecorder {
public:
  constexpr LinearRecorder(int ranks, int chunks, int rank) : _first(rank == 0), _last(rank == ranks - 1) {
    _ops.reserve(static_cast<std::size_t>(chunks) * 10 + 4);
  }

  constexpr void recv_forward(int chunk) { post(!_first, Op::rF(0, chunk)); }
  constexpr void send_forward(int chunk) { post(!_last, Op::sF(0, chunk)); }
  constexpr void recv_backward(int chunk) { post(!_last, Op::rB(0, chunk)); }
  constexpr void send_backward(int chunk) { post(!_first, Op::sB(0, chunk)); }

  /// Launches what was posted (records `|`); nothing when nothing was posted.
  constexpr void commit() {
    if (!_posted) return;
    _ops.push_back(Op::commit_op());
    _posted = false;
  }

  constexpr void forward(int chunk) { _ops.push_back(Op::F(0, chunk)); }
  constexpr void backward(int chunk) { _ops.push_back(Op::B(0, chunk)); }
  constexpr void backward_input(int chunk) {
    _ops.push_back(Op::Bw(0, chunk));
    ++_deferred;
  }
  constexpr void weight() {
    _ops.push_back(Op::W());
    --_deferred;
  }

  /// Weight groups deferred by backward_input and not yet run.
  [[nodiscard]] constexpr int deferred_weights() const noexcept { return _deferred; }

  /// The recorded list; the recorder is spent afterwards.
  [[nodiscard]] constexpr std::vector<Op> take() { return std::move(_ops); }

private:
  constexpr void post(bool has_peer, Op op) {
    if (!has_peer) return;
    _ops.push_back(op);
    _posted = true;
  }

  bool _first;
  bool _last;
  bool _posted = false;
  int _deferred = 0;
  std::vector<Op> _ops;
};

/// Forward-only step of any linear baseline: every chunk is received, computed and sent on, each
/// transfer committed on its own (Megatron's recv_forward / send_forward), so rank r computes chunk c
/// at time (r + c) F with free communication.
[[nodiscard]] constexpr std::vector<Op> linear_forward_only(int ranks, int chunks, int rank) {
  LinearRecorder rec(ranks, chunks, rank);
  for (int c = 0; c < chunks; ++c) {
    rec.recv_forward(c);
    rec.commit();
    rec.forward(c);
    rec.send_forward(c);
    rec.commit();
  }
  return rec.take();
}

/// Module 0 of rank r in a linear pipeline: stage r of P, fed by r-1, feeding r+1, all C chunks.
[[nodiscard]] constexpr ModulePlacement linear_placement(int ranks, int chunks, int rank) {
  ModulePlacement p;
  p.stage = rank;
  p.num_stages = ranks;
  p.chunk_offset = 0;
  p.num_chunks = chunks;
  p.prev_rank = rank > 0 ? rank - 1 : -1;
  p.next_rank = rank < ranks - 1 ? rank + 1 : -1;
  return p;
}

}  // namespace dualpipe::detail
