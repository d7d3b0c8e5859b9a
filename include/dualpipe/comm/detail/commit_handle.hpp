// dualpipe/comm/detail/commit_handle.hpp: the group handle that commit() returns, shared by the
// communicators whose group state lives in the communicator itself (in-process, CUDA-local).
#pragma once

#include <chrono>
#include <concepts>
#include <utility>

#include "dualpipe/core/message_tag.hpp"

namespace dualpipe::detail {

/// A communicator that can say whether its open group is done without blocking (CommitHandle::ready()).
template <class Comm>
concept has_group_ready = requires(const Comm& c) {
  { c.group_ready() } -> std::convertible_to<bool>;
};

/// A communicator that can wait for one receive of its open group (CommitHandle::wait_receive()).
template <class Comm>
concept has_wait_receive = requires(Comm& c, MessageTag tag, std::chrono::milliseconds timeout) {
  c.wait_receive(tag, timeout);
};

/// Move-only handle of the group a commit launched. wait() blocks through `Comm::wait_group(timeout)`;
/// waiting twice is harmless; dropping it unwaited calls `Comm::abandon_group()`, which takes the group's
/// unmatched ops back. `Comm` befriends this type to keep both members private.
template <class Comm>
class CommitHandle {
public:
  explicit CommitHandle(Comm* comm) noexcept : _comm(comm) {}
  CommitHandle(CommitHandle&& other) noexcept : _comm(std::exchange(other._comm, nullptr)) {}
  CommitHandle& operator=(CommitHandle&&) = delete;
  CommitHandle(const CommitHandle&) = delete;
  CommitHandle& operator=(const CommitHandle&) = delete;
  ~CommitHandle() {
    if (_comm) _comm->abandon_group();
  }

  /// Blocks until every op of the group is done; throws what `Comm::wait_group` throws (TimeoutError,
  /// CommAborted, Error on a size mismatch).
  void wait(std::chrono::milliseconds timeout) {
    if (Comm* c = std::exchange(_comm, nullptr)) c->wait_group(timeout);
  }

  /// Blocks until the group's receive of `tag` is done, through `Comm::wait_receive(tag, timeout)`; the
  /// group stays open (wait() ends it). Returns at once after a wait.
  void wait_receive(MessageTag tag, std::chrono::milliseconds timeout) requires has_wait_receive<Comm> {
    if (_comm) _comm->wait_receive(tag, timeout);
  }

  /// Whether wait() would return (or throw) at once, through `Comm::group_ready()`; true after a wait.
  [[nodiscard]] bool ready() const requires has_group_ready<Comm> { return _comm == nullptr || _comm->group_ready(); }

private:
  Comm* _comm;
};

}  // namespace dualpipe::detail
