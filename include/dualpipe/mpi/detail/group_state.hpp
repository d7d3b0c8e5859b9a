// dualpipe/mpi/detail/group_state.hpp: the messages of one MpiCommitGroup, and how they make progress.
//
// The state lives on the heap so that it keeps its address while the group that owns it is moved: the
// progress thread (mpi/progress.hpp) holds a pointer to it while its messages are in flight. Every function
// here is called with the progress thread's lock held when there is one.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <exception>
#include <string>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/message_tag.hpp"
#include "dualpipe/mpi/session.hpp"

namespace dualpipe::detail {

[[nodiscard]] inline const char* payload_name(Payload p) noexcept {
  return p == Payload::activation ? "activation" : "gradient";
}
[[nodiscard]] inline std::string describe_tag(MessageTag tag) {
  return "module " + std::to_string(tag.module) + ", chunk " + std::to_string(tag.chunk) + ", " +
         payload_name(tag.payload);
}

struct MpiGroupState {
  struct Message {
    bool send = false;
    int peer = 0;
    MessageTag tag;
    int mpi_tag = 0;
    std::byte* data = nullptr;  // receive buffer (null for sends)
    std::size_t bytes = 0;
    bool matched = false;  // a send, or a receive whose message was probed and is being received
  };

  MPI_Comm comm = MPI_COMM_NULL;
  int rank = -1;
  std::vector<Message> messages;
  std::vector<MPI_Request> requests;  // one per message; MPI_REQUEST_NULL until a receive is matched
  std::size_t pending = 0;            // messages not done yet
  std::size_t unmatched = 0;          // receives not matched yet
  std::exception_ptr failure;         // what the progress thread ran into; the group's wait throws it
  bool registered = false;            // the progress thread holds a pointer to this state

  /// Probes the receives not matched yet, tests the requests in flight; true when every message is done.
  /// Throws Error on a size mismatch (both sizes named) or a failed MPI call.
  bool progress() {
    if (unmatched > 0) match_receives();
    int all_done = 0;
    mpi_check(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &all_done, MPI_STATUSES_IGNORE),
              "MPI_Testall");
    if (all_done && unmatched == 0) pending = 0;
    return pending == 0;
  }

  /// Whether receive `index` has its message (matched, and its request complete); tests only that request.
  bool receive_done(std::size_t index) {
    if (!messages[index].matched) return false;
    MPI_Request& request = requests[index];
    if (request == MPI_REQUEST_NULL) return true;
    int done = 0;
    mpi_check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");  // frees it when done
    return done != 0;
  }

  /// Cancels what MPI can cancel and forgets every message: requests in flight cannot be waited for (the
  /// peer may be gone); the rest completes in the background.
  void release() noexcept {
    int finalized = 0;
    MPI_Finalized(&finalized);
    for (MPI_Request& request : requests) {
      if (request == MPI_REQUEST_NULL || finalized) continue;
      MPI_Cancel(&request);
      MPI_Request_free(&request);
    }
    requests.clear();
    messages.clear();
    pending = 0;
    unmatched = 0;
    failure = nullptr;
  }

  /// The TimeoutError's text; `missing` / `peer`: the first pending receive (else send).
  [[nodiscard]] std::string describe_pending(std::chrono::milliseconds timeout, MessageTag& missing, int& peer) const {
    // Which requests are still active (MPI_Testall leaves them all untouched when not all are done);
    // MPI_Request_get_status asks without freeing them.
    std::vector<int> done(requests.size(), 0);
    for (std::size_t i = 0; i < requests.size(); ++i) {
      if (requests[i] == MPI_REQUEST_NULL) continue;
      MPI_Request_get_status(requests[i], &done[i], MPI_STATUS_IGNORE);
    }
    std::string text = "MPI wait timed out after " + std::to_string(timeout.count()) + " ms on rank " +
                       std::to_string(rank) + "; still pending:";
    std::size_t listed = 0;
    bool missing_is_send = false;
    for (std::size_t i = 0; i < messages.size(); ++i) {
      const Message& m = messages[i];
      const bool finished = m.matched && (requests[i] == MPI_REQUEST_NULL || done[i]);
      if (finished) continue;
      if (peer < 0 || (!m.send && missing_is_send)) {
        missing = m.tag;
        peer = m.peer;
        missing_is_send = m.send;
      }
      text += (listed++ ? "; " : " ");
      text += (m.send ? "send to rank " : "receive from rank ") + std::to_string(m.peer) + " (" + describe_tag(m.tag) +
              ", " + std::to_string(m.bytes) + " bytes, MPI tag " + std::to_string(m.mpi_tag) +
              (m.send || m.matched ? ", in flight)" : ", nothing arrived)");
    }
    return text;
  }

private:
  void match_receives() {
    // Receives with the same peer and tag must take the messages in post order (MPI keeps the messages of
    // one sender and tag in order): a receive probes only when no earlier one of its peer and tag is waiting.
    for (std::size_t i = 0; i < messages.size(); ++i) {
      Message& m = messages[i];
      if (m.send || m.matched) continue;
      const auto same_and_waiting = [&m](const Message& e) {
        return !e.send && !e.matched && e.peer == m.peer && e.mpi_tag == m.mpi_tag;
      };
      if (std::any_of(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(i), same_and_waiting)) continue;
      int found = 0;
      MPI_Message handle = MPI_MESSAGE_NULL;
      MPI_Status status;
      mpi_check(MPI_Improbe(m.peer, m.mpi_tag, comm, &found, &handle, &status), "MPI_Improbe");
      if (!found) continue;
      int count = 0;
      mpi_check(MPI_Get_count(&status, MPI_BYTE, &count), "MPI_Get_count");
      if (static_cast<std::size_t>(count) != m.bytes) {
        // Take the message off the queue so that it cannot be matched by a later receive, then report.
        std::vector<std::byte> scratch(static_cast<std::size_t>(count));
        mpi_check(MPI_Mrecv(scratch.data(), count, MPI_BYTE, &handle, MPI_STATUS_IGNORE), "MPI_Mrecv");
        m.matched = true;
        --unmatched;
        --pending;
        throw Error("message size mismatch on rank " + std::to_string(rank) + ": the message from rank " +
                    std::to_string(m.peer) + " (" + describe_tag(m.tag) + "; MPI tag " + std::to_string(m.mpi_tag) +
                    ") has " + std::to_string(count) + " bytes but the receive buffer has " + std::to_string(m.bytes) +
                    " bytes");
      }
      mpi_check(MPI_Imrecv(m.data, count, MPI_BYTE, &handle, &requests[i]), "MPI_Imrecv");
      m.matched = true;
      --unmatched;
    }
  }
};

}  // namespace dualpipe::detail
