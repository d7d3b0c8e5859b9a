// dualpipe/analysis/validation_result.hpp: the validator's vocabulary: the rules a trace can break, what
// validate() returns (ValidationResult), what check_valid() and the simulator throw (ValidationError), and
// how a caller says where modules sit (PlacementFn).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/analysis/op_grid.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/schedule/placement.hpp"

namespace dualpipe {

/// The rule a trace broke.
enum class ValidationRule : std::uint8_t {
  none,                           ///< No rule broken.
  malformed_trace,                ///< The trace's rank count disagrees with its op lists.
  op_out_of_range,                ///< A module or chunk index outside what the placement allows.
  not_in_forward_mode,            ///< B, Bw, FB, W, sB or rB in a forward-only trace.
  post_without_peer,              ///< A send or receive towards a rank the placement says is not there.
  uncommitted_post,               ///< A post with no commit after it.
  pair_mismatch,                  ///< The k-th send and the peer's k-th receive name different chunks.
  send_without_receive,           ///< A send the peer never receives (the peer posts fewer receives).
  receive_without_send,           ///< A receive the peer never sends.
  duplicate_forward,              ///< A (module, chunk) forwarded twice.
  duplicate_backward,             ///< A (module, chunk) backwarded twice.
  duplicate_post,                 ///< The same send or receive of one (module, chunk) posted twice.
  backward_before_forward,        ///< A backward of a chunk the rank has not forwarded yet.
  weight_without_deferred_group,  ///< A W when no deferred weight group is stored.
  send_before_compute,            ///< sF before its F, or sB before its backward.
  forward_before_receive,         ///< F of a module with a remote producer before its rF was committed.
  backward_before_receive,        ///< Backward of a module with a remote consumer before its rB was committed.
  local_handoff_order,            ///< A local hand-off (the V's turn) consumed before it was produced.
  missing_forward,                ///< A (module, chunk) never forwarded.
  missing_backward,               ///< A (module, chunk) never backwarded (train mode).
  leftover_deferred_group,        ///< Deferred weight groups still stored at the end.
  missing_send,                   ///< A chunk with a remote consumer (producer) never sent (its gradient).
  deadlock,                       ///< No rank can progress under the commit-rendezvous model.
  overlap_of_one_chunk,           ///< An FB whose forward and backward halves are the same (module, chunk).
};

/// The rule's name, e.g. "forward_before_receive".
[[nodiscard]] constexpr std::string_view to_string(ValidationRule r) noexcept {
  switch (r) {
    case ValidationRule::none: return "none";
    case ValidationRule::overlap_of_one_chunk: return "overlap_of_one_chunk";
    case ValidationRule::malformed_trace: return "malformed_trace";
    case ValidationRule::op_out_of_range: return "op_out_of_range";
    case ValidationRule::not_in_forward_mode: return "not_in_forward_mode";
    case ValidationRule::post_without_peer: return "post_without_peer";
    case ValidationRule::uncommitted_post: return "uncommitted_post";
    case ValidationRule::pair_mismatch: return "pair_mismatch";
    case ValidationRule::send_without_receive: return "send_without_receive";
    case ValidationRule::receive_without_send: return "receive_without_send";
    case ValidationRule::duplicate_forward: return "duplicate_forward";
    case ValidationRule::duplicate_backward: return "duplicate_backward";
    case ValidationRule::duplicate_post: return "duplicate_post";
    case ValidationRule::backward_before_forward: return "backward_before_forward";
    case ValidationRule::weight_without_deferred_group: return "weight_without_deferred_group";
    case ValidationRule::send_before_compute: return "send_before_compute";
    case ValidationRule::forward_before_receive: return "forward_before_receive";
    case ValidationRule::backward_before_receive: return "backward_before_receive";
    case ValidationRule::local_handoff_order: return "local_handoff_order";
    case ValidationRule::missing_forward: return "missing_forward";
    case ValidationRule::missing_backward: return "missing_backward";
    case ValidationRule::leftover_deferred_group: return "leftover_deferred_group";
    case ValidationRule::missing_send: return "missing_send";
    case ValidationRule::deadlock: return "deadlock";
  }
  return "unknown";
}

/// The outcome of validate(). When `ok` is false, (rank, index) is the faulty op (index == the rank's
/// op count means "at the end of its list"), `rule` the rule broken and `message` says why, followed
/// by a grid of the ops around it with the faulty one marked `>>tok<<`.
struct ValidationResult {
  bool ok = true;                              ///< True when the trace is a correct step.
  int rank = -1;                               ///< Rank of the faulty op; -1 when ok.
  int index = -1;                              ///< Index of the faulty op in that rank's list; -1 when ok.
  ValidationRule rule = ValidationRule::none;  ///< The rule broken.
  std::string message;                         ///< Explanation and op grid; empty when ok.
  std::vector<OpRef> stuck;                    ///< Deadlock only: every stuck rank and the commit it waits in.

  /// Same as ok.
  [[nodiscard]] explicit operator bool() const noexcept { return ok; }
};

/// Thrown by check_valid() (and the simulator) when a trace breaks a rule; carries the ValidationResult.
class ValidationError : public Error {
public:
  explicit ValidationError(ValidationResult result) : Error(result.message), _result(std::move(result)) {}

  /// Rank of the faulty op.
  [[nodiscard]] int rank() const noexcept { return _result.rank; }
  /// Index of the faulty op in its rank's list (== the list's size: at its end).
  [[nodiscard]] int index() const noexcept { return _result.index; }
  /// The rule broken.
  [[nodiscard]] ValidationRule rule() const noexcept { return _result.rule; }
  /// The whole result (deadlocks list every stuck rank).
  [[nodiscard]] const ValidationResult& result() const noexcept { return _result; }

private:
  ValidationResult _result;
};

/// Where module `module` of rank `rank` sits. Called ranks x modules_per_rank times per validation.
using PlacementFn = std::function<ModulePlacement(int rank, int module)>;

}  // namespace dualpipe
