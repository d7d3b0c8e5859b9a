// dualpipe/comm/inprocess.hpp: the in-process Communicator: the ranks are threads of one process.
//
//   InProcessWorld world(P);                  // owns every rank's communicator and the mailboxes
//   run_ranks(P, [&](int r) { Pipeline<...> pipe(world.communicator(r), ...); pipe.step(...); });
//
// Posts only queue (they never block); commit() launches the queued ops as one group. A launched op looks
// in the mailbox of its pair of ranks for a matching op of the peer (same tag, oldest first): if there is
// one, the message is copied straight from the send buffer into the receive buffer and both ops are done;
// if not, it waits in the mailbox for the peer. group.wait(timeout) sleeps on a condition variable until
// every op of the group is done, the timeout passes (TimeoutError) or a rank aborts (CommAborted); a
// failed wait takes its own unfinished ops back out of the mailboxes, so no peer ever touches its buffers
// afterwards. A message whose size differs from the receive buffer fails both ranks' groups with an Error
// naming both sizes, the tag and the ranks; nothing is copied. Mailboxes and op lists are reserved up front:
// the happy path does not allocate. launch() starts what was posted so far before the commit (the ops join
// the group the next commit returns), and group.wait_receive(tag, timeout) waits for one receive of it
// (CommunicatorWithEagerLaunch).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/comm/detail/commit_handle.hpp"
#include "dualpipe/comm/detail/mailbox.hpp"
#include "dualpipe/comm/detail/meeting.hpp"
#include "dualpipe/core/error.hpp"

namespace dualpipe {

class InProcessWorld;

/// One rank's end of an InProcessWorld. Models Communicator (and CommunicatorWithBarrier). Used by one
/// thread at a time (its rank's); a group must be waited on before the next commit. rank(), size(),
/// post_send(), post_recv(), abort(), barrier() and reset() are detail::MailboxRank's.
class InProcessCommunicator : public detail::MailboxRank<InProcessCommunicator, InProcessWorld> {
public:
  /// What commit() returns (detail::CommitHandle): wait(timeout) blocks until every op of the group is done
  /// and throws TimeoutError, CommAborted, or Error on a size mismatch; dropping it unwaited takes its ops back.
  using Group = detail::CommitHandle<InProcessCommunicator>;

  /// Launches everything queued since the last commit (or launch) as one group: with what launch() started
  /// since the last commit, if anything.
  [[nodiscard]] Group commit();
  /// Launches the ops queued so far now, as the first ops of the group the next commit() returns (so that a
  /// peer can take a send before this rank commits). Throws Error while the previous group was not waited on.
  void launch();
  /// Whether the group launched last is done (or failed, or a rank aborted): what its Group's ready() says.
  [[nodiscard]] bool group_ready() const;
  /// Blocks until the open group's receive of `tag` is done: what its Group's wait_receive() does. Throws
  /// TimeoutError naming that receive, CommAborted, or Error (a failed op, or a tag the group does not receive).
  void wait_receive(MessageTag tag, std::chrono::milliseconds timeout);

private:
  friend class InProcessWorld;
  friend class detail::MailboxRank<InProcessCommunicator, InProcessWorld>;
  friend class detail::CommitHandle<InProcessCommunicator>;

  using Posted = detail::LaunchedOp;                                       // `done` guarded by _mutex once launched
  using Mailboxes = detail::Mailboxes<InProcessCommunicator, std::mutex>;  // a lock per pair of ranks
  friend Mailboxes;

  InProcessCommunicator(InProcessWorld* world, int rank) : MailboxRank(world, rank, "in-process communicator") {}

  void wait_group(std::chrono::milliseconds timeout);
  // A wait that ended without its ops done (timeout, failure, abort): takes the unfinished ops back, closes
  // the group and throws what it ran into (returns when every op finished meanwhile).
  void fail_wait(std::chrono::milliseconds timeout, const MessageTag* awaited = nullptr);
  void abandon_group() noexcept;
  void cancel_unfinished() noexcept;
  // Called (under the mailbox lock) by whichever thread matched op `index` of this rank's group.
  void complete(std::size_t index, const std::string* error);
  void clear_local() noexcept;

  mutable std::mutex _mutex;
  std::condition_variable _cv;
  std::atomic<int> _remaining{0};  // ops of the group not yet done (changed under _mutex)
  bool _failed = false;            // under _mutex
  std::string _error;              // under _mutex
  bool _waiting_for_one = false;   // under _mutex: wait_receive sleeps (every completion wakes it)
  bool _launched_early = false;    // owner thread: the open group was launched by launch(), not committed yet
};

/// P ranks in one process; owns their communicators and the mailboxes between every pair.
class InProcessWorld {
public:
  /// A world of `size` ranks. `spin` is how many times a wait polls (yielding the core each time) before it
  /// sleeps: a peer that is about to answer costs no sleep and wake-up.
  explicit InProcessWorld(int size, int spin = 16)
      : _size(size), _spin(spin), _boxes(checked_size(size), "in-process communicator") {
    for (int r = 0; r < size; ++r) _comms.emplace_back(new InProcessCommunicator(this, r));
  }
  InProcessWorld(const InProcessWorld&) = delete;
  InProcessWorld& operator=(const InProcessWorld&) = delete;

  /// Rank `rank`'s communicator. Throws ConfigError for a rank outside [0, size).
  [[nodiscard]] InProcessCommunicator& communicator(int rank) {
    if (rank < 0 || rank >= _size)
      throw ConfigError("InProcessWorld: rank must be in [0, " + std::to_string(_size) +
                        ") (got rank=" + std::to_string(rank) + ")");
    return *_comms[static_cast<std::size_t>(rank)];
  }
  /// Number of ranks.
  [[nodiscard]] int size() const noexcept { return _size; }
  /// Whether a rank aborted since the last reset.
  [[nodiscard]] bool aborted() const noexcept { return _aborted.load(std::memory_order_acquire); }
  /// Clears every mailbox, group and the abort, from outside the ranks: call it only while no rank is
  /// inside the communicator (e.g. after run_ranks returned).
  void reset() noexcept {
    _boxes.clear();
    for (auto& c : _comms) c->clear_local();
    std::scoped_lock lk(_abort_mutex, _barrier_mutex, _reset_mutex);
    _aborted.store(false, std::memory_order_release);
    _origin = FailureOrigin{};
    _barrier.clear();
    _reset.clear();
  }

private:
  friend class InProcessCommunicator;
  friend class detail::MailboxRank<InProcessCommunicator, InProcessWorld>;

  static int checked_size(int size) {
    if (size < 1) throw ConfigError("InProcessWorld: size must be at least 1 (got size=" + std::to_string(size) + ")");
    return size;
  }

  // Launches op `index` of `self`'s group: a match copies the message straight from the send buffer into
  // the receive buffer, under the mailbox's lock (so that neither rank can withdraw its op meanwhile).
  void launch(InProcessCommunicator& self, std::size_t index) {
    using Entry = InProcessCommunicator::Mailboxes::Entry;
    _boxes.launch(self, index, self._group[index], [](const Entry& send, const Entry& recv) {
      if (send.size > 0) std::memcpy(recv.data, send.data, send.size);
      return std::string();
    });
  }

  void abort(const FailureOrigin& origin) {
    {
      std::lock_guard lk(_abort_mutex);
      if (_aborted.load(std::memory_order_relaxed)) return;
      _origin = origin;
      _aborted.store(true, std::memory_order_release);
    }
    // Wake every waiter: each re-checks the abort under its own lock, so none can miss it.
    for (auto& c : _comms) {
      { std::lock_guard lk(c->_mutex); }
      c->_cv.notify_all();
    }
    { std::lock_guard lk(_barrier_mutex); }
    _barrier_cv.notify_all();
  }

  [[nodiscard]] CommAborted aborted_error() const { return CommAborted(_origin); }

  void barrier(int rank, std::chrono::milliseconds timeout) {
    const auto deadline = deadline_after(timeout);
    std::unique_lock lk(_barrier_mutex);
    if (aborted()) throw aborted_error();
    const auto r = _barrier.arrive(
        lk, _barrier_cv, _size, deadline, [&] { return aborted(); }, [] {});
    if (r == detail::Meeting::Result::met) return;
    if (r == detail::Meeting::Result::stopped) throw aborted_error();
    throw TimeoutError("in-process communicator: rank " + std::to_string(rank) + " timed out after " +
                       std::to_string(timeout.count()) + " ms at the end-of-step barrier (" +
                       std::to_string(_barrier.waiting() + 1) + " of " + std::to_string(_size) + " ranks arrived)");
  }

  void reset_collective(int rank, std::chrono::milliseconds timeout) {
    const auto deadline = deadline_after(timeout);
    std::unique_lock lk(_reset_mutex);
    const auto r = _reset.arrive(
        lk, _reset_cv, _size, deadline, [] { return false; },
        [&] {
          // Every rank is here, so none is inside the communicator: clear the world.
          _boxes.clear();
          std::scoped_lock alk(_abort_mutex, _barrier_mutex);
          _aborted.store(false, std::memory_order_release);
          _origin = FailureOrigin{};
          _barrier.clear();
        });
    if (r == detail::Meeting::Result::met) return;
    throw TimeoutError("in-process communicator: rank " + std::to_string(rank) + " timed out after " +
                       std::to_string(timeout.count()) + " ms in reset() (" + std::to_string(_reset.waiting() + 1) +
                       " of " + std::to_string(_size) + " ranks called it)");
  }

  int _size;
  int _spin;
  InProcessCommunicator::Mailboxes _boxes;  // between every pair of ranks, each with its own lock
  std::vector<std::unique_ptr<InProcessCommunicator>> _comms;

  std::atomic<bool> _aborted{false};
  std::mutex _abort_mutex;
  FailureOrigin _origin;  // written once per abort, before _aborted is set

  std::mutex _barrier_mutex;
  std::condition_variable _barrier_cv;
  detail::Meeting _barrier;

  std::mutex _reset_mutex;
  std::condition_variable _reset_cv;
  detail::Meeting _reset;
};

// ---- InProcessCommunicator, defined after the world ------------------------------------------------

inline void InProcessCommunicator::launch() {
  if (_group_open && !_launched_early)
    throw Error("in-process communicator: rank " + std::to_string(_rank) +
                " launches ops before waiting on the previous group");
  if (_queued.empty()) return;
  if (_world->aborted()) {  // the commit's wait says so
    _queued.clear();
    return;
  }
  std::size_t first = 0;
  {
    std::lock_guard lk(_mutex);  // a peer completes ops of the group under it: the vector may grow here
    if (!_group_open) {
      _group.clear();
      _failed = false;
      _remaining.store(0, std::memory_order_relaxed);
      _group_open = true;
      _launched_early = true;
    }
    first = _group.size();
    _group.insert(_group.end(), _queued.begin(), _queued.end());
    _remaining.fetch_add(static_cast<int>(_queued.size()), std::memory_order_relaxed);
  }
  _queued.clear();
  for (std::size_t i = first; i < _group.size(); ++i) _world->launch(*this, i);
}

inline InProcessCommunicator::Group InProcessCommunicator::commit() {
  if (_launched_early) {  // the group is open already: the rest joins it
    launch();
    _launched_early = false;
    return Group(this);
  }
  if (!can_launch()) return Group(this);
  open_group();
  {
    std::lock_guard lk(_mutex);
    _failed = false;
    _remaining.store(static_cast<int>(_group.size()), std::memory_order_relaxed);
  }
  for (std::size_t i = 0; i < _group.size(); ++i) _world->launch(*this, i);
  return Group(this);
}

inline void InProcessCommunicator::complete(std::size_t index, const std::string* error) {
  bool wake;
  {
    std::lock_guard lk(_mutex);
    _group[index].done = true;
    if (error && !_failed) {
      _failed = true;
      _error = *error;
    }
    wake = _remaining.fetch_sub(1, std::memory_order_acq_rel) == 1 || error != nullptr || _waiting_for_one;
  }
  if (wake) _cv.notify_one();
}

inline void InProcessCommunicator::wait_group(std::chrono::milliseconds timeout) {
  if (!_group_open) {
    if (_world->aborted()) throw _world->aborted_error();
    return;
  }
  // A peer that is about to answer is cheaper to yield to than to sleep on.
  for (int i = 0; i < _world->_spin && _remaining.load(std::memory_order_acquire) != 0; ++i) std::this_thread::yield();
  const auto deadline = deadline_after(timeout);
  std::unique_lock lk(_mutex);
  _cv.wait_until(lk, deadline,
                 [&] { return _remaining.load(std::memory_order_relaxed) == 0 || _failed || _world->aborted(); });
  if (_remaining.load(std::memory_order_relaxed) == 0 && !_failed) {
    _group.clear();
    _group_open = false;
    return;
  }
  lk.unlock();
  fail_wait(timeout);
}

inline void InProcessCommunicator::wait_receive(MessageTag tag, std::chrono::milliseconds timeout) {
  if (!_group_open) {
    if (_world->aborted()) throw _world->aborted_error();
    return;  // waited on already
  }
  std::size_t index = _group.size();
  for (std::size_t i = 0; i < _group.size() && index == _group.size(); ++i)
    if (!_group[i].send && _group[i].tag == tag) index = i;
  if (index == _group.size())
    throw Error("in-process communicator: rank " + std::to_string(_rank) + " waits for a receive of " +
                dualpipe::describe(tag) + " that its group does not have");
  const auto deadline = deadline_after(timeout);
  std::unique_lock lk(_mutex);
  _waiting_for_one = true;
  _cv.wait_until(lk, deadline, [&] { return _group[index].done || _failed || _world->aborted(); });
  _waiting_for_one = false;
  if (_group[index].done && !_failed) return;
  lk.unlock();
  fail_wait(timeout, &tag);
}

inline void InProcessCommunicator::fail_wait(std::chrono::milliseconds timeout, const MessageTag* awaited) {
  cancel_unfinished();
  std::unique_lock lk(_mutex);
  const bool completed = _remaining.load(std::memory_order_relaxed) == 0;
  const bool failed = _failed;
  std::string what = failed ? _error : (completed ? std::string() : detail::describe_unfinished(_group));
  const detail::LaunchedOp* missing = detail::first_missing(_group);  // the transfer that never came
  for (const detail::LaunchedOp& op : _group)                         // or the receive wait_receive was waiting for
    if (awaited && !op.send && !op.done && op.tag == *awaited) missing = &op;
  const MessageTag missing_tag = missing ? missing->tag : MessageTag{-1, -1, Payload::activation};
  const int missing_peer = missing ? missing->peer : -1;
  _group.clear();
  _group_open = false;
  _launched_early = false;
  _failed = false;
  _remaining.store(0, std::memory_order_relaxed);
  lk.unlock();
  if (failed) throw Error(what);
  if (completed) return;  // every op finished while we were taking them back
  if (_world->aborted()) throw _world->aborted_error();
  throw TimeoutError("in-process communicator: rank " + std::to_string(_rank) + " timed out after " +
                         std::to_string(timeout.count()) + " ms waiting for " + what,
                     missing_tag, missing_peer);
}

inline bool InProcessCommunicator::group_ready() const {
  if (!_group_open || _remaining.load(std::memory_order_acquire) == 0 || _world->aborted()) return true;
  std::lock_guard lk(_mutex);
  return _failed;
}

inline void InProcessCommunicator::cancel_unfinished() noexcept {
  for (std::size_t i = 0; i < _group.size(); ++i) {
    bool done;
    {
      std::lock_guard lk(_mutex);
      done = _group[i].done;
    }
    // Withdrawn under the mailbox lock: from here on no peer can match (and write into) this op. It stays
    // not done, so that the timeout message names it.
    if (!done) (void)_world->_boxes.withdraw(*this, i, _group[i]);
  }
}

inline void InProcessCommunicator::abandon_group() noexcept {
  if (!_group_open) return;
  cancel_unfinished();
  std::lock_guard lk(_mutex);
  _launched_early = false;
  _group.clear();
  _group_open = false;
  _failed = false;
  _remaining.store(0, std::memory_order_relaxed);
}

inline void InProcessCommunicator::clear_local() noexcept {
  std::lock_guard lk(_mutex);
  _launched_early = false;
  _queued.clear();
  _group.clear();
  _group_open = false;
  _failed = false;
  _remaining.store(0, std::memory_order_relaxed);
}

static_assert(check_communicator<InProcessCommunicator>());

}  // namespace dualpipe
