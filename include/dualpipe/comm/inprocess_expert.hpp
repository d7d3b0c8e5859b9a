// dualpipe/comm/inprocess_expert.hpp: the in-process ExpertComm: the expert group's ranks are threads.
//
//   InProcessExpertWorld world(E);                    // one per expert group (InProcessExpertGroups: all)
//   run_ranks(E, [&](int e) {
//     InProcessExpertComm& ec = world.comm(e);
//     auto h = ec.start_all_to_all(tag, {send, send_counts, recv, recv_counts});   // returns at once
//     ...                                                                          // compute meanwhile
//     h.wait(timeout);                                                             // recv is filled
//   });
//
// An exchange is a meeting of the group's ranks under one tag; several (of different tags) may be in
// flight at once, as an FB's two chunks need. start_all_to_all registers this rank's buffers under the tag
// and copies, between this rank and every rank already there, both ways (so the last rank to arrive
// finishes the exchange, and nobody needs a progress thread); the copies are made under the world's lock
// (small messages: the expert group's tokens). A count that disagrees with the peer's (my send_counts[q]
// against q's recv_counts[me]) fails the exchange on every rank with an Error naming both counts; nothing of
// that pair is copied. wait(timeout) sleeps until every rank has arrived, the timeout passes (TimeoutError
// naming the tag and the ranks that never started it) or the world is aborted (CommAborted). A handle that
// is dropped or fails takes its buffers back, so no late peer touches them. abort() is idempotent: the
// first origin stays.
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/comm/expert_comm.hpp"
#include "dualpipe/comm/process_grid.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"

namespace dualpipe {

class InProcessExpertWorld;

/// One rank's end of an InProcessExpertWorld; models ExpertComm. Used by its rank's thread.
class InProcessExpertComm {
public:
  /// What start_all_to_all returns: wait once; dropping it unwaited takes this rank's buffers back.
  class Handle {
  public:
    Handle(Handle&& other) noexcept
        : _world(std::exchange(other._world, nullptr)), _rank(other._rank), _generation(other._generation),
          _tag(other._tag) {}
    Handle& operator=(Handle&&) = delete;
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    ~Handle() { release(); }
    /// Blocks until every rank of the group started this exchange (this rank's recv is then filled).
    void wait(std::chrono::milliseconds timeout);

  private:
    friend class InProcessExpertComm;
    Handle(InProcessExpertWorld* world, int rank, int generation, ExpertTag tag) noexcept
        : _world(world), _rank(rank), _generation(generation), _tag(tag) {}
    void release() noexcept;
    InProcessExpertWorld* _world;
    int _rank;
    int _generation;
    ExpertTag _tag;
  };

  [[nodiscard]] int rank() const noexcept { return _rank; }
  [[nodiscard]] int size() const noexcept;
  /// Starts the exchange `tag` (see the file comment). Throws Error when the counts do not fit the buffers or
  /// the tag is already in flight on this rank, CommAborted after an abort.
  [[nodiscard]] Handle start_all_to_all(const ExpertTag& tag, const AllToAllBuffers& buffers);
  /// Fails every rank's current and future waits with CommAborted(origin) (until the world's reset()).
  void abort(const FailureOrigin& origin);

private:
  friend class InProcessExpertWorld;
  InProcessExpertComm(InProcessExpertWorld* world, int rank) noexcept : _world(world), _rank(rank) {}
  InProcessExpertWorld* _world;
  int _rank;
};

/// The ranks of one expert group, in one process.
class InProcessExpertWorld {
public:
  /// A group of `size` ranks. `spin`: how many times a wait polls (yielding the core) before it sleeps.
  /// Throws ConfigError when size < 1.
  explicit InProcessExpertWorld(int size, int spin = 64) : _size(size), _spin(spin) {
    if (size < 1)
      throw ConfigError("InProcessExpertWorld: size must be at least 1 (got size=" + std::to_string(size) + ")");
    for (int r = 0; r < size; ++r) _comms.emplace_back(new InProcessExpertComm(this, r));
    _generations.resize(static_cast<std::size_t>(size));
  }
  InProcessExpertWorld(const InProcessExpertWorld&) = delete;
  InProcessExpertWorld& operator=(const InProcessExpertWorld&) = delete;

  /// Rank `rank`'s end. Throws ConfigError for a rank outside [0, size).
  [[nodiscard]] InProcessExpertComm& comm(int rank) {
    if (rank < 0 || rank >= _size)
      throw ConfigError("InProcessExpertWorld: rank must be in [0, " + std::to_string(_size) +
                        ") (got rank=" + std::to_string(rank) + ")");
    return *_comms[static_cast<std::size_t>(rank)];
  }
  [[nodiscard]] int size() const noexcept { return _size; }
  /// Whether a rank aborted since the last reset.
  [[nodiscard]] bool aborted() const {
    std::lock_guard lk(_mutex);
    return _aborted;
  }
  /// Exchanges registered and not yet waited by every rank (0 between steps when all went well).
  [[nodiscard]] std::size_t pending() const {
    std::lock_guard lk(_mutex);
    return _exchanges.size();
  }
  /// Forgets every exchange and the abort: call it only while no rank is inside the world.
  void reset() {
    std::lock_guard lk(_mutex);
    _exchanges.clear();
    for (auto& g : _generations) g.clear();
    _aborted = false;
    _origin = FailureOrigin{};
  }

private:
  friend class InProcessExpertComm;
  using Tag = std::array<int, 5>;
  using Key = std::array<int, 6>;  // the tag and its generation: the how-manyth exchange of that tag
  struct Member {
    AllToAllBuffers buffers;
    bool arrived = false;  // registered and not taken back
    bool left = false;     // waited (or dropped): counts towards erasing the exchange
  };
  struct Exchange {
    std::vector<Member> members;
    int arrived = 0;
    int left = 0;
    std::string error;
  };

  static Tag tag_key(const ExpertTag& t) noexcept { return {t.module, t.chunk, t.layer, t.phase, t.backward ? 1 : 0}; }
  static Key key(const ExpertTag& t, int generation) noexcept {
    const Tag k = tag_key(t);
    return {k[0], k[1], k[2], k[3], k[4], generation};
  }

  static std::size_t offset(std::span<const std::size_t> counts, int upto) noexcept {
    return std::accumulate(counts.begin(), counts.begin() + upto, std::size_t{0});
  }

  // Copies a's segment for b into b's receive buffer, after checking that b expects that many bytes.
  void copy(Exchange& x, const ExpertTag& tag, int a, int b) {
    const AllToAllBuffers& from = x.members[static_cast<std::size_t>(a)].buffers;
    const AllToAllBuffers& to = x.members[static_cast<std::size_t>(b)].buffers;
    const std::size_t n = from.send_counts[static_cast<std::size_t>(b)];
    const std::size_t expect = to.recv_counts[static_cast<std::size_t>(a)];
    if (n != expect) {
      if (x.error.empty())
        x.error = "expert all-to-all " + describe(tag) + ": rank " + std::to_string(a) + " sends " + std::to_string(n) +
                  " bytes to rank " + std::to_string(b) + ", which expects " + std::to_string(expect);
      return;
    }
    if (n > 0)
      std::memcpy(to.recv.data() + offset(to.recv_counts, a), from.send.data() + offset(from.send_counts, b), n);
  }

  void check_buffers(int rank, const ExpertTag& tag, const AllToAllBuffers& b) const {
    const auto n = static_cast<std::size_t>(_size);
    if (b.send_counts.size() != n || b.recv_counts.size() != n)
      throw Error("expert all-to-all " + describe(tag) + " on rank " + std::to_string(rank) + ": the counts need " +
                  std::to_string(n) + " entries (got " + std::to_string(b.send_counts.size()) + " send, " +
                  std::to_string(b.recv_counts.size()) + " recv)");
    const std::size_t s = offset(b.send_counts, _size), r = offset(b.recv_counts, _size);
    if (s != b.send.size() || r != b.recv.size())
      throw Error("expert all-to-all " + describe(tag) + " on rank " + std::to_string(rank) +
                  ": the counts add up to " + std::to_string(s) + " send and " + std::to_string(r) +
                  " recv bytes but the buffers hold " + std::to_string(b.send.size()) + " and " +
                  std::to_string(b.recv.size()));
  }

  // Returns the exchange's generation (a rank's next exchange of the same tag, the next step's, may start
  // before a slower peer has waited on this one).
  int start(int rank, const ExpertTag& tag, const AllToAllBuffers& buffers) {
    check_buffers(rank, tag, buffers);
    std::unique_lock lk(_mutex);
    if (_aborted) throw CommAborted(_origin);
    const int generation = _generations[static_cast<std::size_t>(rank)][tag_key(tag)]++;
    Exchange& x = _exchanges[key(tag, generation)];
    if (x.members.empty()) x.members.resize(static_cast<std::size_t>(_size));
    Member& me = x.members[static_cast<std::size_t>(rank)];
    me.buffers = buffers;
    me.arrived = true;
    for (int q = 0; q < _size; ++q) {
      if (!x.members[static_cast<std::size_t>(q)].arrived) continue;
      copy(x, tag, rank, q);
      if (q != rank) copy(x, tag, q, rank);
    }
    if (++x.arrived == _size || !x.error.empty()) {
      lk.unlock();
      _cv.notify_all();
    }
    return generation;
  }

  // Marks `rank` as gone from the exchange; the last one erases it. Under the lock.
  void leave(std::map<Key, Exchange>::iterator it, int rank) {
    Member& me = it->second.members[static_cast<std::size_t>(rank)];
    if (me.left) return;
    me.left = true;
    if (++it->second.left == _size) _exchanges.erase(it);
  }

  void wait(int rank, const ExpertTag& tag, int generation, std::chrono::milliseconds timeout) {
    std::unique_lock lk(_mutex);
    const auto it = _exchanges.find(key(tag, generation));
    if (it == _exchanges.end()) throw Error("expert all-to-all " + describe(tag) + ": waited on but never started");
    Exchange& x = it->second;
    auto ready = [&] { return x.arrived == _size || !x.error.empty() || _aborted; };
    // A peer about to arrive costs no sleep and wake-up: poll a little first, giving the core away.
    for (int i = 0; i < _spin && !ready(); ++i) {
      lk.unlock();
      std::this_thread::yield();
      lk.lock();
    }
    _cv.wait_until(lk, deadline_after(timeout), ready);
    if (_aborted) throw CommAborted(_origin);
    if (!x.error.empty()) {
      const std::string error = x.error;
      take_back(it, rank);
      throw Error(error);
    }
    if (x.arrived != _size) {
      std::string missing;
      for (int q = 0; q < _size; ++q)
        if (!x.members[static_cast<std::size_t>(q)].arrived)
          missing += (missing.empty() ? "" : ", ") + std::to_string(q);
      take_back(it, rank);
      throw TimeoutError("expert all-to-all " + describe(tag) + ": rank " + std::to_string(rank) + " timed out after " +
                         std::to_string(timeout.count()) + " ms; rank(s) " + missing + " never started it");
    }
    leave(it, rank);
  }

  // A rank gives up on an exchange: no later peer may touch its buffers.
  void take_back(std::map<Key, Exchange>::iterator it, int rank) noexcept {
    Member& me = it->second.members[static_cast<std::size_t>(rank)];
    if (me.arrived) {
      me.arrived = false;
      --it->second.arrived;
    }
    leave(it, rank);
  }

  void release(int rank, const ExpertTag& tag, int generation) noexcept {
    std::lock_guard lk(_mutex);
    const auto it = _exchanges.find(key(tag, generation));
    if (it != _exchanges.end() && !it->second.members[static_cast<std::size_t>(rank)].left) take_back(it, rank);
  }

  void abort(const FailureOrigin& origin) {
    {
      std::lock_guard lk(_mutex);
      if (_aborted) return;
      _aborted = true;
      _origin = origin;
    }
    _cv.notify_all();
  }

  int _size;
  int _spin;
  std::vector<std::unique_ptr<InProcessExpertComm>> _comms;
  mutable std::mutex _mutex;
  std::condition_variable _cv;
  std::map<Key, Exchange> _exchanges;            // under _mutex
  std::vector<std::map<Tag, int>> _generations;  // per rank: exchanges of each tag started (under _mutex)
  bool _aborted = false;                         // under _mutex
  FailureOrigin _origin;                         // under _mutex
};

/// One InProcessExpertWorld per expert group of a ProcessGrid: grid rank r's ExpertComm is
/// comm(r) (its rank there is its ep coordinate).
class InProcessExpertGroups {
public:
  explicit InProcessExpertGroups(const ProcessGrid& grid) : _grid(grid) {
    for (int g = 0; g < grid.groups(GridDim::ep); ++g)
      _worlds.push_back(std::make_unique<InProcessExpertWorld>(grid.size(GridDim::ep)));
  }
  /// Grid rank `rank`'s expert communicator.
  [[nodiscard]] InProcessExpertComm& comm(int rank) { return world(rank).comm(_grid.coord(rank, GridDim::ep)); }
  /// Grid rank `rank`'s expert group.
  [[nodiscard]] InProcessExpertWorld& world(int rank) {
    return *_worlds[static_cast<std::size_t>(_grid.group_index(GridDim::ep, rank))];
  }
  /// Resets every group (InProcessExpertWorld::reset).
  void reset() {
    for (auto& w : _worlds) w->reset();
  }

private:
  ProcessGrid _grid;
  std::vector<std::unique_ptr<InProcessExpertWorld>> _worlds;
};

inline int InProcessExpertComm::size() const noexcept { return _world->size(); }

inline InProcessExpertComm::Handle InProcessExpertComm::start_all_to_all(const ExpertTag& tag,
                                                                         const AllToAllBuffers& buffers) {
  const int generation = _world->start(_rank, tag, buffers);
  return Handle(_world, _rank, generation, tag);
}

inline void InProcessExpertComm::abort(const FailureOrigin& origin) { _world->abort(origin); }

inline void InProcessExpertComm::Handle::wait(std::chrono::milliseconds timeout) {
  if (_world == nullptr) throw Error("expert all-to-all " + describe(_tag) + ": handle waited on twice");
  InProcessExpertWorld* w = std::exchange(_world, nullptr);
  w->wait(_rank, _tag, _generation, timeout);
}

inline void InProcessExpertComm::Handle::release() noexcept {
  if (_world != nullptr) std::exchange(_world, nullptr)->release(_rank, _tag, _generation);
}

static_assert(check_expert_comm<InProcessExpertComm>());

}  // namespace dualpipe
