// dualpipe/schedule/placement.hpp: where each module of a rank sits in the model and who its
// neighbours are. The runtime uses it to route data; the analysis to pair sends with receives.
#pragma once

namespace dualpipe {

/// One module of one rank: which model stage it computes and where its data comes from and goes to.
/// Activations flow prev -> this -> next; gradients flow the other way. A module index is kept across
/// ranks: module m's output goes to module m of `next_rank`, except for a *local* hand-off (DualPipeV's
/// turn on the last rank), where it goes to module `local_next_module` of the same rank, without
/// communication.
struct ModulePlacement {
  int stage = 0;               ///< Index of the model stage this module computes, 0-based.
  int num_stages = 1;          ///< Stages in the model (P for DualPipe and the baselines, 2P for DualPipeV).
  int chunk_offset = 0;        ///< Batch chunk index = chunk_offset + the module's own chunk index.
  int num_chunks = 0;          ///< Chunks this module processes in one step.
  int prev_rank = -1;          ///< Rank that sends this module its input activations; -1 if none.
  int next_rank = -1;          ///< Rank this module sends its output activations to; -1 if none.
  int local_prev_module = -1;  ///< Module of the same rank whose output is this module's input; -1 if none.
  int local_next_module = -1;  ///< Module of the same rank that takes this module's output; -1 if none.

  /// The first stage reads the batch: it has no producer.
  [[nodiscard]] constexpr bool is_first_stage() const noexcept { return prev_rank < 0 && local_prev_module < 0; }
  /// The last stage computes the loss: it has no consumer.
  [[nodiscard]] constexpr bool is_last_stage() const noexcept { return next_rank < 0 && local_next_module < 0; }

  friend constexpr bool operator==(const ModulePlacement&, const ModulePlacement&) = default;
};

}  // namespace dualpipe
