// dualpipe/core/failure.hpp: the failure types every layer shares: where a failed step started, a wait
// that timed out, an aborted communicator, a failed step, and the saturated deadline every wait uses.
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/message_tag.hpp"

namespace dualpipe {

/// Where a failed step started: the rank, module, chunk and op (its trace token), and what went wrong.
struct FailureOrigin {
  int rank = -1;
  int module = -1;
  int chunk = -1;
  std::string op;    ///< Trace token of the op, e.g. "FB1.2/0.0" or "|".
  std::string what;  ///< The original error message.

  [[nodiscard]] std::string describe() const {
    return "rank " + std::to_string(rank) + ", module " + std::to_string(module) + ", chunk " + std::to_string(chunk) +
           ", op " + op + ": " + what;
  }
};

/// A wait that did not finish in time: a peer never arrived. A communicator that knows which transfer never
/// came says so: its tag and peer (the first unfinished receive's, else the first unfinished send's).
class TimeoutError : public Error {
public:
  using Error::Error;
  /// A timeout waiting for the message `tag` from (or to) communicator rank `peer`.
  TimeoutError(const std::string& what, MessageTag tag, int peer) : Error(what), _tag(tag), _peer(peer) {}
  /// Whether tag() and peer() name the transfer that never came.
  [[nodiscard]] bool has_transfer() const noexcept { return _peer >= 0; }
  /// The tag of the transfer that never came (meaningful when has_transfer()).
  [[nodiscard]] const MessageTag& tag() const noexcept { return _tag; }
  /// The communicator rank it was to come from or go to; -1 when not known.
  [[nodiscard]] int peer() const noexcept { return _peer; }

private:
  MessageTag _tag{-1, -1, Payload::activation};
  int _peer = -1;
};

/// `now + timeout`, saturated: any timeout (std::chrono::milliseconds::max() included) gives a deadline
/// at most about a year away, instead of overflowing the clock's representation into the past.
[[nodiscard]] inline std::chrono::steady_clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  constexpr std::chrono::milliseconds longest = std::chrono::hours(24 * 365);
  return std::chrono::steady_clock::now() + std::min(timeout, longest);
}

/// Another rank (or this one) aborted the communicator; carries where the failure started.
class CommAborted : public Error {
public:
  explicit CommAborted(FailureOrigin origin)
      : Error("communication aborted: failure on " + origin.describe()), _origin(std::move(origin)) {}
  [[nodiscard]] const FailureOrigin& origin() const noexcept { return _origin; }

private:
  FailureOrigin _origin;
};

/// A step that failed on some rank. Every rank's step ends with one, naming where the failure started.
class StepError : public Error {
public:
  explicit StepError(FailureOrigin origin, int reporting_rank = -1)
      : Error("dualpipe step failed on " + origin.describe() +
              (reporting_rank >= 0 && reporting_rank != origin.rank
                   ? " (reported by rank " + std::to_string(reporting_rank) + ")"
                   : std::string())),
        _origin(std::move(origin)) {}
  [[nodiscard]] const FailureOrigin& origin() const noexcept { return _origin; }

private:
  FailureOrigin _origin;
};

}  // namespace dualpipe
