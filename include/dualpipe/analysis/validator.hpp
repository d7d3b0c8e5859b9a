// dualpipe/analysis/validator.hpp: proves that a trace is a correct pipeline step.
//
// Given every rank's op list and where each module sits (ModulePlacement), the validator checks, in
// this order, and reports the first rule broken (rank, op index, rule, and a grid of the ops around it):
//  1. structure: modules and chunks in range; forward mode has no B, Bw, FB, W, sB or rB; no post towards
//     a rank the placement says is not there; every post is followed by a commit;
//  2. pairing: the k-th sF of module m on rank r is the k-th rF of module m on placement.next_rank, with
//     the same chunk (sB/rB likewise towards prev_rank); counts match;
//  3. semantics, rank by rank in issue order: every (module, chunk) is forwarded exactly once and, in
//     train mode, backwarded exactly once (B, or Bw plus the later W that runs its group: W runs the
//     oldest deferred group); a backward follows its forward; F needs its rF committed (a `|` between
//     the post and the F) when the module has a remote producer, and a backward its rB when it has a
//     remote consumer; a local hand-off (placement.local_next_module) needs the producer's F of the chunk
//     before the consumer's F, and the consumer's backward before the producer's; sF follows its F and
//     sB its backward; nothing is posted twice; at the end no deferred group is left and every chunk
//     with a remote consumer (producer) was sent (its gradient sent). FB counts as its forward, then
//     its backward;
//  4. progress: the commit-rendezvous model of docs/schedules.md with zero costs completes. A commit
//     returns only when every transfer it launched has its peer's matching post launched too (the peer
//     reached its own commit). If no rank can move, that is a deadlock, reported with every stuck rank.
// An empty commit (a `|` with nothing posted since the previous one) is allowed and does nothing.
// Every pass is linear in the number of ops.
#pragma once

#include <utility>

#include "dualpipe/analysis/detail/trace_checker.hpp"
#include "dualpipe/analysis/detail/trace_index.hpp"
#include "dualpipe/analysis/validation_result.hpp"
#include "dualpipe/core/trace.hpp"
#include "dualpipe/schedule/registry.hpp"

namespace dualpipe {

/// The placement of schedule `kind` for a trace of `ranks` x `chunks`.
[[nodiscard]] inline PlacementFn placement_of(ScheduleKind kind, int ranks, int chunks) {
  return [=](int rank, int module) { return schedule_placement(kind, ranks, chunks, rank, module); };
}

/// Validates `t` against an explicit placement with `modules_per_rank` modules per rank. Never throws
/// for a bad trace (the result says what is wrong); throws ConfigError for an inconsistent placement.
[[nodiscard]] inline ValidationResult validate(const Trace& t, const PlacementFn& placement, int modules_per_rank) {
  detail::TraceIndex ix;
  return detail::TraceChecker(t, placement, modules_per_rank, ix).run(true);
}

/// Validates `t` as a trace of schedule `kind` (its placement and modules per rank). Throws ConfigError
/// if (t.ranks, t.chunks) is not a valid configuration of `kind`.
[[nodiscard]] inline ValidationResult validate(const Trace& t, ScheduleKind kind) {
  return validate(t, placement_of(kind, t.ranks, t.chunks), modules_per_rank(kind));
}

/// Validates `t` as a trace of the schedule its header names. Throws ConfigError for an unknown name.
[[nodiscard]] inline ValidationResult validate(const Trace& t) { return validate(t, parse_schedule_kind(t.schedule)); }

/// Like validate(), but throws ValidationError when the trace breaks a rule.
inline void check_valid(const Trace& t, const PlacementFn& placement, int modules_per_rank) {
  ValidationResult r = validate(t, placement, modules_per_rank);
  if (!r.ok) throw ValidationError(std::move(r));
}
/// Like validate(t, kind), but throws ValidationError when the trace breaks a rule.
inline void check_valid(const Trace& t, ScheduleKind kind) {
  check_valid(t, placement_of(kind, t.ranks, t.chunks), modules_per_rank(kind));
}
/// Like validate(t), but throws ValidationError when the trace breaks a rule.
inline void check_valid(const Trace& t) { check_valid(t, parse_schedule_kind(t.schedule)); }

}  // namespace dualpipe
