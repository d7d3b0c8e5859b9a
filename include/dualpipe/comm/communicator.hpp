// dualpipe/comm/communicator.hpp: the Communicator concept and its optional refinements.
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
// Optional, detected at compile time (each a named refinement below):
//   barrier(timeout)                CommunicatorWithBarrier: meet every rank at the end of a step.
//   reset(timeout)                  CommunicatorWithCollectiveReset: after a failed step, every rank calls it.
//   reset()                         CommunicatorWithReset: after a failed step, this rank alone.
//   all_gather(mine, all, timeout)  CommunicatorWithAllGather: every rank's small host buffer to every rank
//                                   (the executor's size exchange, runtime/tensors.hpp; without it, the
//                                   exchange is point-to-point messages from host memory).
//   group.ready()                   CommunicatorWithPolling: whether the group is done, without blocking
//                                   (what lets the executor fill a wait with deferred weight work).
// Each requirement is written once, as a detail:: concept that both the concepts and check_communicator()
// use.
#pragma once

#include <chrono>
#include <concepts>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/core/message_tag.hpp"

namespace dualpipe {

/// The handle a commit returns.
template <class G>
concept CommitGroup = requires(G& g, std::chrono::milliseconds timeout) {
  g.wait(timeout);
};

namespace detail {
template <class C>
concept comm_has_rank_and_size = requires(const C& c) {
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
};
template <class C>
concept comm_has_post_send = requires(C& c, int peer, MessageTag tag, ConstBytes src) {
  c.post_send(peer, tag, src);
};
template <class C>
concept comm_has_post_recv = requires(C& c, int peer, MessageTag tag, MutableBytes dst) {
  c.post_recv(peer, tag, dst);
};
template <class C>
concept comm_has_commit = requires(C& c) {
  { c.commit() } -> CommitGroup;
};
template <class C>
concept comm_has_abort = requires(C& c, const FailureOrigin& origin) {
  c.abort(origin);
};
template <class C>
concept comm_has_barrier = requires(C& c, std::chrono::milliseconds timeout) {
  c.barrier(timeout);
};
template <class C>
concept comm_has_collective_reset = requires(C& c, std::chrono::milliseconds timeout) {
  c.reset(timeout);
};
template <class C>
concept comm_has_reset = requires(C& c) {
  c.reset();
};
template <class C>
concept comm_has_all_gather = requires(C& c, ConstBytes mine, MutableBytes all, std::chrono::milliseconds timeout) {
  c.all_gather(mine, all, timeout);
};
}  // namespace detail

/// A type that can carry pipeline messages between ranks.
template <class C>
concept Communicator = detail::comm_has_rank_and_size<C> && detail::comm_has_post_send<C> &&
    detail::comm_has_post_recv<C> && detail::comm_has_commit<C> && detail::comm_has_abort<C>;

/// A communicator that can also meet every rank at the end of a step: `barrier(timeout)` returns when every
/// rank arrived and throws CommAborted if the communicator was aborted. With it, a failure on one rank ends
/// every rank's step with an error, even ranks that had already issued their last op.
template <class C>
concept CommunicatorWithBarrier = Communicator<C> && detail::comm_has_barrier<C>;

/// A communicator whose reset after a failed step is collective: every rank calls `reset(timeout)`, which
/// throws TimeoutError when not every rank arrives in time. Pipeline::reset() prefers it to a plain reset().
template <class C>
concept CommunicatorWithCollectiveReset = Communicator<C> && detail::comm_has_collective_reset<C>;

/// A communicator with `reset()`, this rank's alone: drops what a failed step left posted (and the abort,
/// where the communicator recovers from one); called by Pipeline::reset() when there is no collective reset.
template <class C>
concept CommunicatorWithReset = Communicator<C> && detail::comm_has_reset<C>;

/// A communicator with a collective of its own for small host buffers: every rank calls
/// `all_gather(mine, all, timeout)` with `mine` of the same size (a multiple of 8 bytes), and gets every
/// rank's in `all` (rank r's at r * mine.size(), by communicator rank). Throws as a group's wait does. A
/// device communicator that sends only from device memory (NCCL) stages the bytes itself.
template <class C>
concept CommunicatorWithAllGather = Communicator<C> && detail::comm_has_all_gather<C>;

/// A commit group that can say, without blocking, whether waiting on it would return at once: `ready()` is
/// true once every op of the group is done, and also when it failed or the communicator was aborted (so
/// that the caller goes on to wait(), which throws).
template <class G>
concept PollableCommitGroup = CommitGroup<G> && requires(const G& g) {
  { g.ready() } -> std::convertible_to<bool>;
};

/// A communicator whose commit groups can be polled (PollableCommitGroup): PipelineOptions::
/// weight_fill_depth runs deferred weight gradients while a commit's group is not ready.
template <class C>
concept CommunicatorWithPolling = Communicator<C> && requires(C& c) {
  { c.commit() } -> PollableCommitGroup;
};

/// A commit group one of whose receives can be waited for alone: `wait_receive(tag, timeout)` returns once
/// the group's receive of `tag` is done (the rest of the group may still be in flight; wait() still ends it),
/// throws what wait() throws (TimeoutError naming that receive after `timeout`), and Error for a tag the
/// group does not receive.
template <class G>
concept CommitGroupWithReceiveWait = CommitGroup<G> && requires(G& g, MessageTag tag, std::chrono::milliseconds t) {
  g.wait_receive(tag, t);
};

/// A communicator that can start what was posted before the commit and wait for one receive of a group:
/// `launch()` starts the ops posted since the last commit (or launch) now, as part of the group the next
/// commit() returns (the previous group must have been waited on), and that group has wait_receive().
/// PipelineOptions::eager_transfers sends an output as soon as it is computed and waits, before an FB, only
/// for its forward half's input.
template <class C>
concept CommunicatorWithEagerLaunch = Communicator<C> && requires(C& c) {
  c.launch();
  { c.commit() } -> CommitGroupWithReceiveWait;
};

/// Compile-time check with messages in plain words: `static_assert(check_communicator<MyComm>())`.
template <class C>
consteval bool check_communicator() {
  static_assert(detail::comm_has_rank_and_size<C>, "Communicator needs: int rank() const and int size() const");
  static_assert(detail::comm_has_post_send<C>,
                "Communicator needs: post_send(int peer, dualpipe::MessageTag, dualpipe::ConstBytes)");
  static_assert(detail::comm_has_post_recv<C>,
                "Communicator needs: post_recv(int peer, dualpipe::MessageTag, dualpipe::MutableBytes)");
  static_assert(detail::comm_has_commit<C>,
                "Communicator needs: commit() returning a group with wait(std::chrono::milliseconds)");
  static_assert(detail::comm_has_abort<C>,
                "Communicator needs: abort(const dualpipe::FailureOrigin&) that wakes every waiting rank");
  return Communicator<C>;
}

}  // namespace dualpipe
