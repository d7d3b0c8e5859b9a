// dualpipe/comm/detail/mailbox.hpp: the matching of posted sends and receives between the ranks of one
// process, shared by the in-process and CUDA-local worlds: each rank's posts and launched group
// (MailboxRank, the base of their communicators), and the mailboxes between the ranks (Mailboxes). The
// worlds differ in how they lock (a lock per pair of ranks, or the world's one lock) and in what a match
// does (a host copy, or a device copy enqueued on the receiver's stream); both are parameters here.
//
// A launched op looks in the mailbox of its pair of ranks (sender, receiver) for the peer's op of the same
// tag, oldest first. If there is one, both leave the mailbox: a message whose size differs from the receive
// buffer fails both (nothing is moved), otherwise the communicator's transfer moves it; then both ops are
// completed. If there is none, the op waits in the mailbox for the peer, until it is matched or withdrawn.
//
// PostedOp and its description serve the NCCL communicator too (its posts, and its watchdog's messages).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/core/message_tag.hpp"

namespace dualpipe::detail {

/// An op as a rank posts it: a send of the `size` bytes at `data` to `peer`, or a receive into them from `peer`.
struct PostedOp {
  bool send;
  int peer;
  MessageTag tag;
  std::byte* data;
  std::size_t size;
};

/// "send to rank 1 (module 0, chunk 3, activation) 4096 bytes": an op in words, for messages.
[[nodiscard]] inline std::string describe(const PostedOp& p) {
  return (p.send ? "send to rank " : "receive from rank ") + std::to_string(p.peer) + " " + describe(p.tag) + " " +
         std::to_string(p.size) + " bytes";
}

/// An op of a launched group: the posted op, and whether it was matched.
struct LaunchedOp : PostedOp {
  bool done = false;  // guarded by the lock its communicator completes ops under, once launched
};

/// "2 of 5 operations: receive from rank 2 ..., send to rank 0 ...": a group's ops not done yet, for messages.
[[nodiscard]] inline std::string describe_unfinished(const std::vector<LaunchedOp>& group) {
  std::string out;
  int n = 0;
  for (const LaunchedOp& p : group) {
    if (p.done) continue;
    out += (n++ ? ", " : "");
    out += describe(p);
  }
  return std::to_string(n) + " of " + std::to_string(group.size()) + " operations: " + out;
}

/// The transfer a timed-out group names (TimeoutError::tag() and peer()): its first unfinished receive (what
/// the rank waits for), else its first unfinished send; nullptr when every op is done.
[[nodiscard]] inline const LaunchedOp* first_missing(const std::vector<LaunchedOp>& group) noexcept {
  const LaunchedOp* missing = nullptr;
  for (const LaunchedOp& p : group)
    if (!p.done && (missing == nullptr || (missing->send && !p.send))) missing = &p;
  return missing;
}

/// A BasicLockable that locks nothing: the Lock of Mailboxes whose caller holds the one lock that guards
/// them (and every rank's group state) for every call.
struct CallerHoldsLock {
  void lock() noexcept {}
  void unlock() noexcept {}
};

/// The mailboxes between every ordered pair of ranks of a world, one per (sender, receiver): the launched
/// sends with no receive yet and the launched receives with no send yet.
///
/// `Rank` is the communicator; a match completes both ops through `Rank::complete(index, error)` (called
/// under the mailbox's lock; `error` is null on success), so `Rank` befriends this type to keep it private.
/// `Lock` guards each mailbox: std::mutex gives every pair its own; CallerHoldsLock leaves the locking to
/// the caller. The mailboxes are reserved up front: the happy path does not allocate.
template <class Rank, class Lock>
class Mailboxes {
public:
  /// A launched op waiting in a mailbox: its tag and buffer, and which op of which rank's group it is.
  struct Entry {
    MessageTag tag;
    std::byte* data;
    std::size_t size;
    Rank* owner;
    std::size_t index;  // in owner's group
  };

  /// The mailboxes of `ranks` ranks; `who` ("in-process communicator") starts the size-mismatch message.
  Mailboxes(int ranks, const char* who) : _ranks(ranks), _who(who) {
    _boxes.reserve(static_cast<std::size_t>(ranks) * static_cast<std::size_t>(ranks));
    for (int i = 0; i < ranks * ranks; ++i) _boxes.push_back(std::make_unique<Box>());
  }

  /// Launches `op`, op `index` of `self`'s group. When the peer's op of the same tag waits (the oldest), both
  /// leave the mailbox; if the sizes agree, `transfer(send, recv)` (two Entry) moves the message under the
  /// mailbox's lock and returns an error message, empty on success; then both ops are completed, with the
  /// size mismatch or the transfer's error if any. Otherwise `op` waits in the mailbox.
  template <class Transfer>
  void launch(Rank& self, std::size_t index, const PostedOp& op, Transfer&& transfer) {
    const int src = op.send ? self.rank() : op.peer;
    const int dst = op.send ? op.peer : self.rank();
    Box& b = box(src, dst);
    std::lock_guard lk(b.lock);
    const Entry mine{op.tag, op.data, op.size, &self, index};
    std::vector<Entry>& other = op.send ? b.recvs : b.sends;
    const auto match = find(other, op.tag);
    if (match == other.end()) {
      (op.send ? b.sends : b.recvs).push_back(mine);
      return;
    }
    const Entry theirs = *match;
    other.erase(match);
    const Entry& send = op.send ? mine : theirs;
    const Entry& recv = op.send ? theirs : mine;
    const std::string error = send.size != recv.size
                                  ? std::string(_who) + ": message from rank " + std::to_string(src) + " to rank " +
                                        std::to_string(dst) + " with tag " + describe(op.tag) + " has " +
                                        std::to_string(send.size) + " bytes but the receive buffer has " +
                                        std::to_string(recv.size) + " bytes"
                                  : transfer(send, recv);
    const std::string* failed = error.empty() ? nullptr : &error;
    theirs.owner->complete(theirs.index, failed);
    self.complete(index, failed);
  }

  /// Takes `op`, op `index` of `self`'s group, back out of its mailbox: from then on no peer can match it
  /// (and write into its buffer). False when a peer already matched it.
  bool withdraw(const Rank& self, std::size_t index, const PostedOp& op) noexcept {
    Box& b = op.send ? box(self.rank(), op.peer) : box(op.peer, self.rank());
    std::lock_guard lk(b.lock);
    std::vector<Entry>& list = op.send ? b.sends : b.recvs;
    for (auto it = list.begin(); it != list.end(); ++it)
      if (it->owner == &self && it->index == index) {
        list.erase(it);
        return true;
      }
    return false;
  }

  /// Empties every mailbox (the world's reset, when no rank is inside the communicator).
  void clear() noexcept {
    for (auto& b : _boxes) {
      std::lock_guard lk(b->lock);
      b->sends.clear();
      b->recvs.clear();
    }
  }

private:
  struct Box {
    Box() {
      sends.reserve(16);
      recvs.reserve(16);
    }
    Lock lock;
    std::vector<Entry> sends;  // launched sends with no receive yet
    std::vector<Entry> recvs;  // launched receives with no send yet
  };

  Box& box(int src, int dst) { return *_boxes[static_cast<std::size_t>(src * _ranks + dst)]; }

  // The oldest entry with `tag`: matching is first come, first served per (pair, tag).
  static typename std::vector<Entry>::iterator find(std::vector<Entry>& list, const MessageTag& tag) noexcept {
    for (auto it = list.begin(); it != list.end(); ++it)
      if (it->tag == tag) return it;
    return list.end();
  }

  int _ranks;
  const char* _who;
  std::vector<std::unique_ptr<Box>> _boxes;  // [src * ranks + dst]
};

/// One rank's end of a world whose messages meet in Mailboxes: the CRTP base of InProcessCommunicator and
/// CudaLocalCommunicator, with the Communicator members they share, the ops posted since the last commit
/// and the group the last commit launched. Used by one thread at a time (its rank's).
///
/// `Comm` has abandon_group() (what reset() drops); `World` has size(), aborted(), abort(origin),
/// barrier(rank, timeout) and reset_collective(rank, timeout). Both befriend this type to keep those private.
template <class Comm, class World>
class MailboxRank {
public:
  MailboxRank(const MailboxRank&) = delete;
  MailboxRank& operator=(const MailboxRank&) = delete;

  /// This rank.
  [[nodiscard]] int rank() const noexcept { return _rank; }
  /// Number of ranks of the world.
  [[nodiscard]] int size() const noexcept { return _world->size(); }
  /// Queues a send of `bytes` to `peer`; `bytes` must stay valid until the group is done (with device
  /// memory: until the group's copies are done, which the device policy orders).
  void post_send(int peer, MessageTag tag, ConstBytes bytes) {
    check_peer(peer, "post_send");
    _queued.push_back(LaunchedOp{{true, peer, tag, const_cast<std::byte*>(bytes.data()), bytes.size()}});
  }
  /// Queues a receive from `peer` into `bytes`.
  void post_recv(int peer, MessageTag tag, MutableBytes bytes) {
    check_peer(peer, "post_recv");
    _queued.push_back(LaunchedOp{{false, peer, tag, bytes.data(), bytes.size()}});
  }
  /// Fails every rank's current and future waits with CommAborted(origin) until the world is reset.
  /// The first origin is kept.
  void abort(const FailureOrigin& origin) { _world->abort(origin); }
  /// Returns when every rank of the world called barrier(); throws CommAborted when the world is aborted,
  /// TimeoutError after `timeout`. The executor calls it at the end of every step.
  void barrier(std::chrono::milliseconds timeout) { _world->barrier(_rank, timeout); }
  /// Collective reset after a failed step: every rank calls it; the last to arrive clears the world's
  /// mailboxes and abort. Throws TimeoutError when not every rank arrives within `timeout`.
  void reset(std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000)) {
    static_cast<Comm&>(*this).abandon_group();
    _queued.clear();
    _world->reset_collective(_rank, timeout);
  }

protected:
  /// Rank `rank` of `world`; `who` ("in-process communicator") starts the messages.
  MailboxRank(World* world, int rank, const char* who) : _world(world), _rank(rank), _who(who) {
    _queued.reserve(32);
    _group.reserve(32);
  }
  ~MailboxRank() = default;

  /// The start of commit(): throws Error while the previous group was not waited on; false, dropping the
  /// queued ops, when there is nothing to launch (nothing queued, or the world aborted: wait() says so).
  [[nodiscard]] bool can_launch() {
    if (_group_open)
      throw Error(std::string(_who) + ": rank " + std::to_string(_rank) +
                  " commits a new group before waiting on the previous one");
    if (_queued.empty() || _world->aborted()) {
      _queued.clear();
      return false;
    }
    return true;
  }
  /// The queued ops become the launched group (both vectors keep their capacity: no allocation).
  void open_group() noexcept {
    _group.swap(_queued);
    _queued.clear();
    _group_open = true;
  }

  World* _world;
  int _rank;
  const char* _who;
  std::vector<LaunchedOp> _queued;  // posted, not launched (owner thread only)
  std::vector<LaunchedOp> _group;   // the launched group; `done` guarded by the communicator's lock
  bool _group_open = false;         // owner thread only

private:
  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= size())
      throw Error(std::string(_who) + ": rank " + std::to_string(_rank) + " " + what + " to peer " +
                  std::to_string(peer) + " outside [0, " + std::to_string(size()) + ")");
  }
};

}  // namespace dualpipe::detail
