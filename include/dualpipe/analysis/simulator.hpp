// dualpipe/analysis/simulator.hpp: runs a trace under op costs and a communication model, and returns
// the per-rank Timeline (makespan, idle time, bubble) it implies.
//
// Both models run every rank's ops one after another on its compute lane, with the cost of Costs::of
// (F, B, B-W for Bw, W for W, F&B for FB; posts and commits cost nothing) of the op's stage: one Costs
// for every stage, or StageCosts for stages that differ (costs.hpp says how W and F&B are charged). A
// transfer (an sF with its paired rF, or an sB with its rB, paired as the validator pairs them) takes
// Costs::transfer() = latency + bytes / bandwidth once both of its ends are launched. They differ in when
// posts launch and who waits:
//
//  - CommModel::rendezvous (docs/schedules.md, the model the published figures use): a post is launched
//    at the rank's next commit, together with every other post since the previous commit. A transfer
//    finishes at max(sender's launch, receiver's launch) + transfer(). A commit returns when all the
//    transfers it launched have finished; until then the rank does nothing. Spans: each post is a
//    transfer span from its launch to its transfer's end; a commit that blocked is a wait span.
//
//  - CommModel::async (what the runtime does, with a separate communication stream): a post is launched
//    when it is issued, i.e. at the time the rank's compute lane reaches it in issue order (the end of
//    the compute op before it, or 0). Commits cost nothing, block nothing and make no span. A transfer
//    finishes at max(send issued, receive issued) + transfer(); since an sF (sB) is issued after its F (backward),
//    the sender is ready only once the data exists. A compute op starts at max(end of the previous
//    compute op, end of the transfers it reads): an F (or FB's forward) of a module with a remote
//    producer reads its rF, a backward (B, Bw, FB's backward) of a module with a remote consumer reads
//    its rB; local hand-offs and W read nothing remote (issue order already serialises them). Transfers
//    do not contend with each other. Spans: each post is a transfer span from its issue to its
//    transfer's end; the time a compute op waited for data is a wait span whose op is that compute op.
//    By induction over the ops, every op starts no later than under rendezvous with the same costs, so
//    async is never slower.
//
// The trace is validated first (validator.hpp): an invalid trace throws ValidationError, as does a
// deadlock. Both models are linear in the number of ops.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "dualpipe/analysis/activations.hpp"
#include "dualpipe/analysis/costs.hpp"
#include "dualpipe/analysis/detail/op_costs.hpp"
#include "dualpipe/analysis/detail/rendezvous.hpp"
#include "dualpipe/analysis/detail/trace_checker.hpp"
#include "dualpipe/analysis/detail/trace_index.hpp"
#include "dualpipe/analysis/validation_result.hpp"
#include "dualpipe/analysis/validator.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/core/trace.hpp"

namespace dualpipe {

namespace detail {

/// The async model (see the header comment); same contract as run_rendezvous: fills start/end per flat
/// op (posts: issue and transfer end; commits: zero-length) and returns the ranks that could not finish.
/// `cost` gives every op's compute time (op_costs.hpp).
inline std::vector<OpRef> run_async(const Trace& t, const TraceIndex& ix, const OpCostTable& cost, double transfer,
                                    std::vector<double>& start, std::vector<double>& end) {
  const int ranks = ix.ranks;
  start.assign(ix.total_ops(), -1.0);
  end.assign(ix.total_ops(), -1.0);
  std::vector<std::int32_t> pc(static_cast<std::size_t>(ranks), 0);
  std::vector<std::int32_t> waiting_on(static_cast<std::size_t>(ranks), -1);  // flat index of a receive
  std::vector<double> clock(static_cast<std::size_t>(ranks), 0.0);
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
    for (; i < n; ++i) {
      const Op& op = ops[static_cast<std::size_t>(i)];
      const auto g = static_cast<std::size_t>(base + i);
      if (is_post(op.kind)) {
        start[g] = now;
        const auto q = static_cast<std::size_t>(ix.partner[g]);
        if (start[q] >= 0) {
          const double done = std::max(now, start[q]) + transfer;
          end[g] = end[q] = done;
          const std::size_t recv = is_send(op.kind) ? q : g;
          const auto rr = static_cast<std::size_t>(ix.op_rank[recv]);
          if (waiting_on[rr] == static_cast<std::int32_t>(recv)) {
            waiting_on[rr] = -1;
            ready.push_back(static_cast<int>(rr));
          }
        }
        continue;
      }
      if (op.kind == OpKind::commit) {
        start[g] = end[g] = now;
        continue;
      }
      // A compute op: wait for the remote data it reads.
      double at = now;
      std::int32_t missing = -1;
      if (op.has_forward() && ix.at(r, op.module).prev_rank >= 0) {
        const std::int32_t v = ix.recv_activation[static_cast<std::size_t>(ix.slot(r, op.module, op.chunk))];
        if (end[static_cast<std::size_t>(v)] < 0) missing = v;
        else at = std::max(at, end[static_cast<std::size_t>(v)]);
      }
      if (missing < 0 && op.has_backward() && ix.at(r, op.backward_module()).next_rank >= 0) {
        const std::int32_t v =
            ix.recv_gradient[static_cast<std::size_t>(ix.slot(r, op.backward_module(), op.backward_chunk()))];
        if (end[static_cast<std::size_t>(v)] < 0) missing = v;
        else at = std::max(at, end[static_cast<std::size_t>(v)]);
      }
      if (missing >= 0) {
        waiting_on[ru] = missing;
        break;
      }
      start[g] = at;
      now = at + cost.of(g, op.kind);
      end[g] = now;
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

/// Turns per-op times into the Timeline's spans (see the header comment for what each span means).
inline Timeline make_timeline(const Trace& t, const TraceIndex& ix, CommModel model, const std::vector<double>& start,
                              const std::vector<double>& end) {
  Timeline tl;
  tl.schedule = t.schedule;
  tl.ranks = t.ranks;
  tl.chunks = t.chunks;
  tl.mode = t.mode;
  tl.time_unit = "units";
  tl.spans.resize(t.ops.size());
  for (std::size_t r = 0; r < t.ops.size(); ++r) {
    const std::vector<Op>& ops = t.ops[r];
    std::vector<Span>& spans = tl.spans[r];
    spans.reserve(ops.size() + ops.size() / 4);
    const std::int32_t base = ix.op_base[r];
    double last_compute = 0;
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      const auto g = static_cast<std::size_t>(base) + i;
      const int index = static_cast<int>(i);
      if (is_compute(op.kind)) {
        if (model == CommModel::async && start[g] > last_compute)
          spans.push_back(Span{op, last_compute, start[g], Span::Lane::wait, index});
        spans.push_back(Span{op, start[g], end[g], Span::Lane::compute, index});
        last_compute = end[g];
      } else if (is_post(op.kind)) {
        spans.push_back(Span{op, start[g], end[g], Span::Lane::transfer, index});
      } else if (model == CommModel::rendezvous && end[g] > start[g]) {
        spans.push_back(Span{op, start[g], end[g], Span::Lane::wait, index});
      }
    }
  }
  return tl;
}

}  // namespace detail

/// Simulates `t` with an explicit placement and costs that may differ per stage. Throws ValidationError if
/// the trace is not a correct step (or deadlocks), ConfigError if the placement is inconsistent or has a
/// stage `costs` does not cover.
[[nodiscard]] inline Timeline simulate(const Trace& t, const PlacementFn& placement, int modules_per_rank,
                                       const StageCosts& costs, CommModel model = CommModel::rendezvous) {
  detail::TraceIndex ix;
  detail::TraceChecker checker(t, placement, modules_per_rank, ix);
  // The rendezvous run below is itself the progress check, so the zero-cost one is skipped for it.
  ValidationResult valid = checker.run(model == CommModel::async);
  if (!valid.ok) throw ValidationError(std::move(valid));
  const detail::OpCostTable op_cost = detail::op_costs(t, ix, costs);
  std::vector<double> start, end;
  const std::vector<OpRef> stuck = model == CommModel::rendezvous
                                       ? detail::run_rendezvous(t, ix, op_cost, costs.transfer(), start, end)
                                       : detail::run_async(t, ix, op_cost, costs.transfer(), start, end);
  if (!stuck.empty()) throw ValidationError(checker.deadlock_result(stuck, start));
  return detail::make_timeline(t, ix, model, start, end);
}

/// Simulates `t` with an explicit placement, every stage costing `costs`. Throws ValidationError if the trace
/// is not a correct step (or deadlocks), ConfigError if `costs` are invalid (check_costs) or the placement is
/// inconsistent.
[[nodiscard]] inline Timeline simulate(const Trace& t, const PlacementFn& placement, int modules_per_rank,
                                       const Costs& costs = {}, CommModel model = CommModel::rendezvous) {
  check_costs(costs);
  return simulate(t, placement, modules_per_rank, StageCosts(costs), model);
}

/// Simulates `t` as a trace of schedule `kind`.
[[nodiscard]] inline Timeline simulate(const Trace& t, ScheduleKind kind, const Costs& costs = {},
                                       CommModel model = CommModel::rendezvous) {
  return simulate(t, placement_of(kind, t.ranks, t.chunks), modules_per_rank(kind), costs, model);
}

/// Simulates `t` as a trace of schedule `kind`, with per-stage costs (one per stage of its placement).
[[nodiscard]] inline Timeline simulate(const Trace& t, ScheduleKind kind, const StageCosts& costs,
                                       CommModel model = CommModel::rendezvous) {
  return simulate(t, placement_of(kind, t.ranks, t.chunks), modules_per_rank(kind), costs, model);
}

/// Simulates `t` as a trace of the schedule its header names.
[[nodiscard]] inline Timeline simulate(const Trace& t, const Costs& costs = {},
                                       CommModel model = CommModel::rendezvous) {
  return simulate(t, parse_schedule_kind(t.schedule), costs, model);
}

/// The figures of one step: what the spec's table reports, per rank.
struct Summary {
  std::string schedule;               ///< Schedule name.
  int ranks = 0;                      ///< P.
  int chunks = 0;                     ///< C.
  double makespan = 0;                ///< Time from the step's start to its last span's end.
  std::vector<double> idle;           ///< Per rank: makespan - busy (compute) time.
  double bubble_ratio = 0;            ///< Sum of idle / (ranks x makespan).
  std::vector<int> peak_activations;  ///< Per rank: peak chunks held (see peak_activations()).

  /// The worst rank's idle time (the spec's "bubble").
  [[nodiscard]] double max_idle() const noexcept {
    return idle.empty() ? 0.0 : *std::max_element(idle.begin(), idle.end());
  }
};

/// Summarises a timeline (simulated or measured) of trace `t`. Linear in the number of spans.
[[nodiscard]] inline Summary summarize(const Timeline& tl, const Trace& t) {
  Summary s;
  s.schedule = tl.schedule;
  s.ranks = tl.ranks;
  s.chunks = tl.chunks;
  s.makespan = tl.makespan();
  s.idle.reserve(tl.spans.size());
  double total_idle = 0;
  for (const auto& spans : tl.spans) {
    double busy = 0;
    for (const Span& sp : spans)
      if (sp.lane == Span::Lane::compute) busy += sp.duration();
    s.idle.push_back(s.makespan - busy);
    total_idle += s.idle.back();
  }
  s.bubble_ratio =
      s.makespan > 0 && !tl.spans.empty() ? total_idle / (static_cast<double>(tl.spans.size()) * s.makespan) : 0.0;
  s.peak_activations = peak_activations(t);
  return s;
}

}  // namespace dualpipe
