// dualpipe/comm/communicator.hpp: the Communicator concept.
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

#include <chrono>
#include <concepts>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/core/message_tag.hpp"

namespace dualpipe {

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
