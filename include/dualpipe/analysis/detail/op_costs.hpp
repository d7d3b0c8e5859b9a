// dualpipe/analysis/detail/op_costs.hpp: the compute time of every op of a trace, from costs that are the
// same for every stage (Costs) or differ per stage (StageCosts). Both simulator models read this table, so
// they agree on what each op costs.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "dualpipe/analysis/costs.hpp"
#include "dualpipe/analysis/detail/trace_index.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/trace.hpp"

namespace dualpipe::detail {

/// The compute time of every op: a table per op kind when every stage costs the same (no per-op storage or
/// lookups), else one entry per flat op index.
struct OpCostTable {
  std::array<double, 16> by_kind{};  ///< Used when per_op is empty.
  std::vector<double> per_op;        ///< [flat op]: its compute time (0 for posts and commits).

  [[nodiscard]] double of(std::size_t flat, OpKind kind) const noexcept {
    return per_op.empty() ? by_kind[static_cast<std::size_t>(kind)] : per_op[flat];
  }
};

/// The cost table of `t` under `costs`. Throws ConfigError if the placement has a stage that `costs` does not
/// cover.
[[nodiscard]] inline OpCostTable op_costs(const Trace& t, const TraceIndex& ix, const StageCosts& costs) {
  OpCostTable table;
  if (costs.same_for_every_stage()) {
    for (int k = 0; k <= static_cast<int>(OpKind::commit); ++k)
      table.by_kind[static_cast<std::size_t>(k)] = costs.stage(0).of(static_cast<OpKind>(k));
    return table;
  }
  int needed = 0;
  for (const ModulePlacement& p : ix.placement) needed = std::max(needed, p.stage + 1);
  if (costs.num_stages() < needed)
    throw ConfigError("StageCosts has " + std::to_string(costs.num_stages()) + " stages but the schedule places " +
                      std::to_string(needed) + " (give one Costs per stage)");
  std::vector<double>& out = table.per_op;
  out.assign(ix.total_ops(), 0.0);
  for (int r = 0; r < ix.ranks; ++r) {
    const auto ru = static_cast<std::size_t>(r);
    std::deque<int> deferred;  // stages of this rank's Bw ops whose W has not run yet, oldest first
    for (std::size_t i = 0; i < t.ops[ru].size(); ++i) {
      const Op& op = t.ops[ru][i];
      const auto g = static_cast<std::size_t>(ix.op_base[ru]) + i;
      auto stage_of = [&](int module) { return costs.stage(ix.at(r, module).stage); };
      switch (op.kind) {
        case OpKind::forward:
        case OpKind::backward: out[g] = stage_of(op.module).of(op.kind); break;
        case OpKind::backward_input:
          out[g] = stage_of(op.module).of(op.kind);
          deferred.push_back(ix.at(r, op.module).stage);
          break;
        case OpKind::weight:
          // The validator has checked that every W has a deferred backward before it.
          if (!deferred.empty()) {
            out[g] = costs.stage(deferred.front()).weight;
            deferred.pop_front();
          }
          break;
        case OpKind::forward_backward: {
          const Costs& f = stage_of(op.module);
          const Costs& b = stage_of(op.backward_module());
          const double saving =
              std::min(f.forward + f.backward - f.forward_backward, b.forward + b.backward - b.forward_backward);
          out[g] = std::max(0.0, f.forward + b.backward - saving);
          break;
        }
        default: break;  // posts and commits take no compute time
      }
    }
  }
  return table;
}

}  // namespace dualpipe::detail
