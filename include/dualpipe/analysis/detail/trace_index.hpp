// dualpipe/analysis/detail/trace_index.hpp: flat look-up tables over one trace, built once by the
// validator and read by the simulators. Every op of every rank has a *flat* index (op_base[r] + i);
// every (rank, module, chunk) has a *slot* (slot_base[r * modules + m] + chunk). No maps: the hot
// loops only index vectors.
#pragma once

#include <cstdint>
#include <vector>

#include "dualpipe/analysis/op_grid.hpp"
#include "dualpipe/schedule/placement.hpp"

namespace dualpipe::detail {

struct TraceIndex {
  int ranks = 0;                              ///< P (number of op lists).
  int modules = 0;                            ///< Modules per rank.
  std::vector<ModulePlacement> placement;     ///< [r * modules + m].
  std::vector<std::int32_t> slot_base;        ///< [r * modules + m]: first slot; one extra entry at the end.
  std::vector<std::int32_t> op_base;          ///< [r]: first flat op index; one extra entry at the end.
  std::vector<std::int32_t> op_rank;          ///< [flat op]: its rank.
  std::vector<std::int32_t> partner;          ///< [flat op]: flat index of the paired post; -1 if not a post.
  std::vector<std::int32_t> recv_activation;  ///< [slot]: flat index of the rF of that chunk; -1 if none.
  std::vector<std::int32_t> recv_gradient;    ///< [slot]: flat index of the rB of that chunk; -1 if none.

  [[nodiscard]] const ModulePlacement& at(int rank, int module) const noexcept {
    return placement[static_cast<std::size_t>(rank * modules + module)];
  }
  [[nodiscard]] std::int32_t slot(int rank, int module, int chunk) const noexcept {
    return slot_base[static_cast<std::size_t>(rank * modules + module)] + chunk;
  }
  [[nodiscard]] std::size_t total_ops() const noexcept {
    return op_base.empty() ? 0 : static_cast<std::size_t>(op_base.back());
  }
  /// The (rank, index) of a flat op index.
  [[nodiscard]] OpRef ref(std::int32_t flat) const noexcept {
    const int r = op_rank[static_cast<std::size_t>(flat)];
    return {r, flat - op_base[static_cast<std::size_t>(r)]};
  }
};

}  // namespace dualpipe::detail
