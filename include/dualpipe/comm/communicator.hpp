// dualpipe/comm/communicator.hpp: the Communicator concept, and the failure types every model shares.
//
// A communicator moves chunk buffers between pipeline ranks. The executor posts sends and receives as the
// op list says, then commits: everything posted since the last commit is launched as one group, and the
// group is waited on with a timeout. Models: InProcessCommunicator (threads of one process, the default),
// MpiCommunicator (dualpipe/mpi.hpp), NcclCommunicator (dualpipe/nccl.hpp).
//
//   rank(), size()                  this rank and the number of ranks of the communicator.
//   post_send(peer, tag, bytes)     queue a send; `bytes` stays valid and unchanged until the group is done.
//   post_recv(peer, tag, bytes)     queue a receive into `bytes`; a message of another size is an error.
//   commit() -> group               launch everything queued as one group (an empty group if nothing was).
//   group.wait(timeout)             block until the group is done; throws TimeoutError after `timeout`,
//                                   CommAborted if any rank aborted, Error on a size mismatch.
//   abort(origin)                   fail every rank's current and future waits with CommAborted(origin),
//                                   until the communicator is reset.
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <string>

#include "dualpipe/core/error.hpp"
#include "dualpipe/runtime/stage.hpp"

namespace dualpipe {

/// Which of a chunk's two messages: the forward activations, or the backward gradients.
enum class Payload : std::uint8_t { activation, gradient };

/// Keeps the messages of different modules, chunks and directions apart.
struct MessageTag {
  int module = 0;
  int chunk = 0;
  Payload payload = Payload::activation;
  friend constexpr bool operator==(const MessageTag&, const MessageTag&) = default;
};

/// "(module 0, chunk 3, activation)": a tag in words, for messages.
[[nodiscard]] inline std::string describe(const MessageTag& t) {
  return "(module " + std::to_string(t.module) + ", chunk " + std::to_string(t.chunk) + ", " +
         (t.payload == Payload::activation ? "activation" : "gradient") + ")";
}

/// Where a failed step started: the rank, module, chunk and op (its trace token), and what went wrong.
struct FailureOrigin {
  int rank = -1;
  int module = -1;
  int chunk = -1;
  std::string op;    ///< Trace token of the op, e.g. "FB1.2/0.0" or "|".
  std::string what;  ///< The original error message.

  [[nodiscard]] std::string describe() const {
    return "rank " + std::to_string(rank) + ", module " + std::to_string(module) + ", chunk " +
           std::to_string(chunk) + ", op " + op + ": " + what;
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

/// The handle a commit returns.
template <class G>
concept CommitGroup = requires(G& g, std::chrono::milliseconds timeout) { g.wait(timeout); };

/// A type that can carry pipeline messages between ranks.
template <class C>
concept Communicator = requires(C& c, const C& cc, int peer, MessageTag tag, ConstBytes src, MutableBytes dst,
                                const FailureOrigin& origin) {
  { cc.rank() } -> std::convertible_to<int>;
  { cc.size() } -> std::convertible_to<int>;
  c.post_send(peer, tag, src);
  c.post_recv(peer, tag, dst);
  { c.commit() } -> CommitGroup;
  c.abort(origin);
};

/// Compile-time check with messages in plain words: `static_assert(check_communicator<MyComm>())`.
template <class C>
consteval bool check_communicator() {
  static_assert(requires(const C& c) { { c.rank() } -> std::convertible_to<int>; { c.size() } -> std::convertible_to<int>; },
                "Communicator needs: int rank() const and int size() const");
  static_assert(requires(C& c, int p, MessageTag t, ConstBytes b) { c.post_send(p, t, b); },
                "Communicator needs: post_send(int peer, dualpipe::MessageTag, dualpipe::ConstBytes)");
  static_assert(requires(C& c, int p, MessageTag t, MutableBytes b) { c.post_recv(p, t, b); },
                "Communicator needs: post_recv(int peer, dualpipe::MessageTag, dualpipe::MutableBytes)");
  static_assert(requires(C& c) { { c.commit() } -> CommitGroup; },
                "Communicator needs: commit() returning a group with wait(std::chrono::milliseconds)");
  static_assert(requires(C& c, const FailureOrigin& o) { c.abort(o); },
                "Communicator needs: abort(const dualpipe::FailureOrigin&) that wakes every waiting rank");
  return Communicator<C>;
}

}  // namespace dualpipe
