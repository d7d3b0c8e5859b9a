// dualpipe/analysis/detail/rendezvous.hpp: the commit-rendezvous model of docs/schedules.md, run over
// a whole trace. With zero costs it is the validator's deadlock check; with real costs it is the
// simulator's rendezvous model. Each rank runs until a commit must wait for a peer that has not yet
// launched its side; the launch of that side wakes it. The times it computes depend only on the
// trace (max-plus over a dependency graph), not on the order in which ranks are advanced.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "dualpipe/analysis/detail/op_costs.hpp"
#include "dualpipe/analysis/detail/trace_index.hpp"
#include "dualpipe/core/trace.hpp"

namespace dualpipe::detail {

/// Runs the rendezvous model. On return, for every flat op index g:
///  - compute ops: [start, end] is when it ran;
///  - posts: start = launch (the rank's next commit), end = completion of the transfer;
///  - commits: start = launch of the group, end = when the commit returned.
/// Ops never reached keep -1. Returns the ranks that could not finish (deadlock), each with the op
/// index of the commit it is stuck at; empty when every rank completed.
/// `cost` gives every op's compute time (op_costs.hpp; a default table: every op costs 0).
inline std::vector<OpRef> run_rendezvous(const Trace& t, const TraceIndex& ix, const OpCostTable& cost, double transfer,
                                         std::vector<double>& start, std::vector<double>& end) {
  const int ranks = ix.ranks;
  start.assign(ix.total_ops(), -1.0);
  end.assign(ix.total_ops(), -1.0);

  std::vector<std::int32_t> pc(static_cast<std::size_t>(ranks), 0);
  std::vector<std::int32_t> group_begin(static_cast<std::size_t>(ranks), 0);  // first op after the last commit
  std::vector<std::int32_t> pending(static_cast<std::size_t>(ranks), 0);      // transfers of the open group not done
  std::vector<double> clock(static_cast<std::size_t>(ranks), 0.0);
  std::vector<double> group_end(static_cast<std::size_t>(ranks), 0.0);  // latest finished transfer so far
  std::vector<char> blocked(static_cast<std::size_t>(ranks), 0);
  std::vector<int> ready;
  ready.reserve(static_cast<std::size_t>(ranks));
  for (int r = ranks - 1; r >= 0; --r) ready.push_back(r);

  while (!ready.empty()) {
    const int r = ready.back();
    ready.pop_back();
    const auto ru = static_cast<std::size_t>(r);
    const std::vector<Op>& ops = t.ops[ru];
    const std::int32_t base = ix.op_base[ru];
    const auto n = static_cast<std::int32_t>(ops.size());
    std::int32_t i = pc[ru];
    double now = clock[ru];
    auto finish_commit = [&] {
      now = std::max(now, group_end[ru]);
      end[static_cast<std::size_t>(base + i)] = now;
      ++i;
      group_begin[ru] = i;
    };
    if (blocked[ru]) {
      blocked[ru] = 0;
      finish_commit();
    }
    for (; i < n; ++i) {
      const OpKind kind = ops[static_cast<std::size_t>(i)].kind;
      const auto g = static_cast<std::size_t>(base + i);
      if (kind == OpKind::commit) {
        start[g] = now;
        group_end[ru] = now;
        for (std::int32_t j = group_begin[ru]; j < i; ++j) {
          if (!is_post(ops[static_cast<std::size_t>(j)].kind)) continue;
          const auto p = static_cast<std::size_t>(base + j);
          start[p] = now;
          const auto q = static_cast<std::size_t>(ix.partner[p]);
          if (start[q] < 0) {
            ++pending[ru];  // the peer has not launched its side yet; it will count us down
            continue;
          }
          const double done = std::max(now, start[q]) + transfer;
          end[p] = end[q] = done;
          group_end[ru] = std::max(group_end[ru], done);
          // q was launched and had not completed, so its rank is waiting in the commit that launched it.
          const auto rq = static_cast<std::size_t>(ix.op_rank[q]);
          group_end[rq] = std::max(group_end[rq], done);
          if (--pending[rq] == 0 && blocked[rq]) ready.push_back(static_cast<int>(rq));
        }
        if (pending[ru] > 0) {
          blocked[ru] = 1;
          break;
        }
        finish_commit();
        --i;  // finish_commit advanced past the commit already
      } else if (is_compute(kind)) {
        start[g] = now;
        now += cost.of(g, kind);
        end[g] = now;
      }
      // posts: launched at the next commit
    }
    pc[ru] = i;
    clock[ru] = now;
  }

  std::vector<OpRef> stuck;
  for (int r = 0; r < ranks; ++r)
    if (pc[static_cast<std::size_t>(r)] < static_cast<std::int32_t>(t.ops[static_cast<std::size_t>(r)].size()))
      stuck.push_back({r, pc[static_cast<std::size_t>(r)]});
  return stuck;
}

}  // namespace dualpipe::detail
