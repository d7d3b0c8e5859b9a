// dualpipe/analysis/activations.hpp: peak in-flight activations per rank, from op order alone (so it
// applies to simulated and measured runs alike).
#pragma once

#include <algorithm>
#include <vector>

#include "dualpipe/core/trace.hpp"

namespace dualpipe {

/// When a chunk's stored activations count as freed.
enum class ActivationRelease {
  input_backward,  ///< At its backward's input part: B, Bw, or FB's backward half (the default).
  weight,          ///< At the end of its whole backward: B, FB's backward half, or the W that runs its Bw group.
};

/// Peak number of chunks each rank holds activations for: chunks forwarded and not yet freed, counted
/// over all modules of the rank. An FB counts its forward before its backward frees (both halves' tensors
/// are live while the pair runs). `release` says which op frees a chunk.
///
/// Both conventions give the spec's PP+1 on every rank of DualPipe and DualPipeV (9 for DualPipe with 8
/// ranks, 9 for DualPipeV with 4 ranks / 8 stages, 17 for DualPipe with 16 ranks; we checked every
/// P <= 16 and 2P <= C <= 4P+3): the peak is reached before the first deferred backward, in the steady
/// phase. What matters is the FB rule: letting FB's backward free before its forward counts gives PP
/// on some ranks. The default, input_backward, is the spec's "forwarded and not yet backwarded".
[[nodiscard]] inline std::vector<int> peak_activations(const Trace& t,
                                                       ActivationRelease release = ActivationRelease::input_backward) {
  std::vector<int> peaks;
  peaks.reserve(t.ops.size());
  const bool at_weight = release == ActivationRelease::weight;
  for (const auto& ops : t.ops) {
    int live = 0, peak = 0;
    for (const Op& op : ops) {
      if (op.has_forward()) peak = std::max(peak, ++live);
      // Bw's group is freed by the W that runs it; W runs groups oldest first, one chunk each.
      if (op.kind == OpKind::backward || op.kind == OpKind::forward_backward ||
          (op.kind == OpKind::backward_input && !at_weight) || (op.kind == OpKind::weight && at_weight))
        --live;
    }
    peaks.push_back(peak);
  }
  return peaks;
}

}  // namespace dualpipe
