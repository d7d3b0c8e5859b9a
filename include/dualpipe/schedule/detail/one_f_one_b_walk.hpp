// dualpipe/schedule/detail/one_f_one_b_walk.hpp: the 1F1B training step, shared by OneFOneB and ZB1P.
//
// The walk is Megatron's non-interleaved 1F1B: rank r runs w = min(P-1-r, C) warm-up forwards, then
// C-w steady (forward, backward) pairs, then w cool-down backwards. Its transfers are grouped the way
// Megatron batches them, and that grouping is what makes the step deadlock-free under the
// commit-rendezvous model (docs/schedules.md):
//
//   warm-up   rF(i) | F(i) sF(i) |                   (recv_forward, send_forward)
//   steady    F(c) sF(c) rB(j) | B(j) sB(j) rF(c+1) | (send_forward_recv_backward,
//                                                     send_backward_recv_forward; the last has no rF)
//   cool-down rB(k) | B(k) sB(k) |                   (recv_backward, send_backward)
//
// Every group talks to one neighbour only, and each group on rank r has exactly one partner group on
// that neighbour holding the other ends of all its transfers: {sF(c), rB(j)} on r matches
// {sB(j), rF(c)} on r+1 because rank r+1 runs one warm-up forward fewer, so its steady iteration j
// receives exactly the chunk c = w_r + j that rank r sends in its iteration j. The partners come in the
// same order on both ranks, so a rank blocked at a commit waits for a neighbour that is blocked only
// further along the chain in one direction, ending at rank 0 or P-1, which cannot be blocked that way:
// no cycle, no deadlock.
//
// ZB1P (zero_bubble = true) runs the same walk with each backward split into its input part B(j)w and
// a deferred weight group W (ZB-H1 of Qi et al., 2023). Rank r lets its weight groups lag r chunks
// behind (the paper's steady triple is F(x), B(x-(P-1-r)), W(x-(P-1))): W(j-r) runs after B(j) once
// j >= r, one W follows each cool-down backward once k >= r, and the last r groups close the step,
// filling the cool-down bubble. Where the steady group also receives the next forward's input, the W
// runs before that commit: the commit would wait for the activation anyway, and its partner on rank
// r-1 cannot complete before that rank's forward ends. The last steady send and every cool-down send
// is committed first so that the neighbour's backward never waits for a W.
#pragma once

#include <algorithm>
#include <vector>

#include "dualpipe/core/op.hpp"
#include "dualpipe/schedule/detail/linear.hpp"

namespace dualpipe::detail {

/// Rank `rank`'s training step of 1F1B (zero_bubble = false) or ZB1P (zero_bubble = true).
[[nodiscard]] constexpr std::vector<Op> one_f_one_b_walk(int ranks, int chunks, int rank, bool zero_bubble) {
  LinearRecorder rec(ranks, chunks, rank);
  const int warmup = std::min(ranks - 1 - rank, chunks);
  const int steady = chunks - warmup;
  // ZB1P: weight group j - rank becomes due after backward j.
  auto weight_due = [&](int backward_chunk) { return zero_bubble && backward_chunk >= rank; };
  auto backward = [&](int chunk) {
    if (zero_bubble) rec.backward_input(chunk);
    else rec.backward(chunk);
  };

  for (int i = 0; i < warmup; ++i) {
    rec.recv_forward(i);
    rec.commit();
    rec.forward(i);
    rec.send_forward(i);
    rec.commit();
  }
  if (steady > 0) {
    rec.recv_forward(warmup);
    rec.commit();
  }
  for (int j = 0; j < steady; ++j) {
    const int c = warmup + j;
    const bool last = j == steady - 1;
    rec.forward(c);
    rec.send_forward(c);
    rec.recv_backward(j);
    rec.commit();
    backward(j);
    rec.send_backward(j);
    if (!last) {
      if (weight_due(j)) rec.weight();
      rec.recv_forward(c + 1);
      rec.commit();
    } else {
      rec.commit();
      if (weight_due(j)) rec.weight();
    }
  }
  for (int i = 0; i < warmup; ++i) {
    const int k = steady + i;
    rec.recv_backward(k);
    rec.commit();
    backward(k);
    rec.send_backward(k);
    rec.commit();
    if (weight_due(k)) rec.weight();
  }
  while (rec.deferred_weights() > 0) rec.weight();
  return rec.take();
}

}  // namespace dualpipe::detail
