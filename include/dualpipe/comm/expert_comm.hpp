// dualpipe/comm/expert_comm.hpp: the ExpertComm concept, the expert-parallel group's all-to-all.
//
// An MoE stage sends each token to the ranks that hold its experts (dispatch) and brings the results back
// (combine): an all-to-all with per-peer byte counts among the ranks of one expert-parallel group (the
// grid's ep dimension). The executor starts one between two compute phases and runs the other chunk's
// compute while it is in flight, so the call must not block:
//
//   rank(), size()                          this rank and the ranks of the expert group.
//   start_all_to_all(tag, buffers) -> h     start the exchange; returns at once. Every rank of the group
//                                           starts the same tags in the same order (the schedule's).
//   h.wait(timeout)                         block until this rank's part is done: `buffers.recv` is filled and
//                                           `buffers.send` may be reused. Throws TimeoutError after
//                                           `timeout`, CommAborted if any rank of the group aborted, Error on
//                                           a count that disagrees with the peer's.
//   abort(origin)                           fail every rank's current and future waits with
//                                           CommAborted(origin), like the pipeline's communicator.
// The buffers (and the count spans) stay valid and unchanged until the handle was waited on.
// What the executor relies on (runtime/phases.hpp runs the exchanges of a stage with phases):
//   - several exchanges of different tags may be in flight on one rank at once (an FB's forward chunk and
//     backward chunk each have one), and the ranks of the group may start them in different orders: a model
//     matches them by tag (the in-process one does), or, for an ordered collective (MPI_Ialltoallv, NCCL),
//     relies on every rank running the same deterministic interleaving (the executor's is);
//   - the same tag comes again in the next step: a model must keep the generations apart;
//   - the handle is movable; dropping it unwaited (a failed step) must leave the buffers alone afterwards;
//   - abort() may be called several times, from any thread (every stage of a rank, every failing path): the
//     first origin stays;
//   - a device model gets the lane's stream in AllToAllBuffers::after_stream (the exchange starts after the
//     work issued on it so far) and its wait() may return at once after ordering that same stream after the
//     exchange (no host wait): the executor calls nothing else between start and wait but the other chunk's
//     phases. A Device policy with phase_begin/phase_end (DeviceWithPhaseHooks) is also told around each.
// Models: InProcessExpertComm (comm/inprocess_expert.hpp, threads), LinkedExpertComm (comm/expert_link.hpp,
// any model on a modelled link), MpiExpertComm (mpi/expert_comm.hpp, MPI_Ialltoallv on the ep communicator).
//
// This concept is also the seam for another dispatch/combine library (DeepEP, say): a type that starts
// that library's dispatch or combine in start_all_to_all and waits on it in wait() is an ExpertComm.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/failure.hpp"

namespace dualpipe {

/// Which all-to-all of a step: the module, chunk, layer and phase (the stage's index of the communication
/// phase in its forward or backward) it belongs to. Keeps the exchanges of two chunks apart when an FB op
/// interleaves them, and names the phase when one fails.
struct ExpertTag {
  int module = 0;
  int chunk = 0;
  int layer = 0;
  int phase = 0;
  bool backward = false;  ///< Part of the chunk's backward (else its forward).
  friend constexpr bool operator==(const ExpertTag&, const ExpertTag&) = default;
};

/// "(module 0, chunk 3, layer 1, forward phase 2)": a tag in words, for messages.
[[nodiscard]] inline std::string describe(const ExpertTag& t) {
  return "(module " + std::to_string(t.module) + ", chunk " + std::to_string(t.chunk) + ", layer " +
         std::to_string(t.layer) + ", " + (t.backward ? "backward" : "forward") + " phase " + std::to_string(t.phase) +
         ")";
}

/// One all-to-all's data. `send` holds size() segments back to back, segment p (`send_counts[p]` bytes) for
/// peer p (this rank's own segment included: it is copied locally); `recv` gets peer p's segment for this
/// rank (`recv_counts[p]` bytes), back to back in peer order. Both count spans have size() entries.
struct AllToAllBuffers {
  ConstBytes send;
  std::span<const std::size_t> send_counts;
  MutableBytes recv;
  std::span<const std::size_t> recv_counts;
  /// A device model only: the stream whose work so far wrote `send` (the exchange starts after it); null on
  /// the host.
  void* after_stream = nullptr;
};

/// What start_all_to_all returns.
template <class H>
concept AllToAllHandle = requires(H& h, std::chrono::milliseconds timeout) {
  h.wait(timeout);
};

namespace detail {
template <class E>
concept expert_comm_has_rank_and_size = requires(const E& e) {
  { e.rank() } -> std::convertible_to<int>;
  { e.size() } -> std::convertible_to<int>;
};
template <class E>
concept expert_comm_has_start = requires(E& e, const ExpertTag& tag, const AllToAllBuffers& buffers) {
  { e.start_all_to_all(tag, buffers) } -> AllToAllHandle;
};
template <class E>
concept expert_comm_has_abort = requires(E& e, const FailureOrigin& origin) {
  e.abort(origin);
};
}  // namespace detail

/// A type that can run the expert-parallel group's all-to-all without blocking (see the contract above).
template <class E>
concept ExpertComm =
    detail::expert_comm_has_rank_and_size<E> && detail::expert_comm_has_start<E> && detail::expert_comm_has_abort<E>;

/// Compile-time check with messages in plain words: `static_assert(check_expert_comm<MyExpertComm>())`.
template <class E>
consteval bool check_expert_comm() {
  static_assert(detail::expert_comm_has_rank_and_size<E>,
                "ExpertComm needs: int rank() const and int size() const (of the expert-parallel group)");
  static_assert(detail::expert_comm_has_start<E>,
                "ExpertComm needs: start_all_to_all(const dualpipe::ExpertTag&, const dualpipe::AllToAllBuffers&) "
                "returning a handle with wait(std::chrono::milliseconds), without blocking");
  static_assert(detail::expert_comm_has_abort<E>,
                "ExpertComm needs: abort(const dualpipe::FailureOrigin&) that wakes every waiting rank of the group");
  return ExpertComm<E>;
}

}  // namespace dualpipe
