// dualpipe/comm/null.hpp: a Communicator that moves nothing and completes every post at once.
//
// For measuring the executor alone (no data moves, no thread waits) and for dry runs of an op list.
// Receive buffers are left as they are.
#pragma once

#include <chrono>
#include <cstddef>

#include "dualpipe/comm/communicator.hpp"

namespace dualpipe {

/// A Communicator whose groups are done as soon as they are committed. Counts what it is asked to do.
class NullCommunicator {
public:
  /// The group a commit returns: already done (unless the communicator was aborted).
  class Group {
  public:
    explicit Group(const NullCommunicator* c) noexcept : _comm(c) {}
    /// Returns at once; throws CommAborted after abort() (until reset()).
    void wait(std::chrono::milliseconds /*timeout*/) const {
      if (_comm->_aborted) throw CommAborted(_comm->_origin);
    }
    /// Returns at once (every receive is done); throws CommAborted after abort() (until reset()).
    void wait_receive(MessageTag /*tag*/, std::chrono::milliseconds /*timeout*/) const {
      if (_comm->_aborted) throw CommAborted(_comm->_origin);
    }
    /// Always: the group is done (or the communicator aborted, which wait() reports).
    [[nodiscard]] bool ready() const noexcept { return true; }

  private:
    const NullCommunicator* _comm;
  };

  /// Rank `rank` of `size` ranks.
  explicit NullCommunicator(int rank = 0, int size = 1) noexcept : _rank(rank), _size(size) {}

  /// This rank.
  [[nodiscard]] int rank() const noexcept { return _rank; }
  /// Number of ranks.
  [[nodiscard]] int size() const noexcept { return _size; }
  /// Counts the send; moves nothing.
  void post_send(int /*peer*/, MessageTag /*tag*/, ConstBytes /*bytes*/) noexcept { ++_posts; }
  /// Counts the receive; leaves the buffer as it is.
  void post_recv(int /*peer*/, MessageTag /*tag*/, MutableBytes /*bytes*/) noexcept { ++_posts; }
  /// Nothing to start: every post is done at once.
  void launch() noexcept {}
  /// A group that is already done.
  [[nodiscard]] Group commit() noexcept {
    ++_commits;
    return Group(this);
  }
  /// Makes every later wait throw CommAborted(origin), until reset().
  void abort(const FailureOrigin& origin) {
    if (!_aborted) _origin = origin;
    _aborted = true;
  }
  /// Forgets an abort and the counts.
  void reset() noexcept {
    _aborted = false;
    _posts = 0;
    _commits = 0;
  }

  /// Posts since construction or reset().
  [[nodiscard]] std::size_t posts() const noexcept { return _posts; }
  /// Commits since construction or reset().
  [[nodiscard]] std::size_t commits() const noexcept { return _commits; }
  /// Whether abort() was called since the last reset().
  [[nodiscard]] bool aborted() const noexcept { return _aborted; }

private:
  int _rank;
  int _size;
  std::size_t _posts = 0;
  std::size_t _commits = 0;
  bool _aborted = false;
  FailureOrigin _origin;
};

static_assert(Communicator<NullCommunicator>);

}  // namespace dualpipe
