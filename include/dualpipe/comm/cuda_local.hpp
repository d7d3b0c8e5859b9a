// dualpipe/comm/cuda_local.hpp: CudaLocalCommunicator, several ranks of one process (threads) on one or
// more GPUs; the transfers are device-to-device (or peer) copies on the ranks' communication streams.
//
//   CudaLocalWorld world(P);                       // P ranks on the current device (or a list of devices)
//   run_ranks(P, [&](int r) {
//     Pipeline<DualPipe, CudaLocalCommunicator, MyGpuStage, CudaDevice> pipe(world.communicator(r), {...});
//     pipe.step(...);
//   });
//
// The group semantics are the in-process communicator's (comm/inprocess.hpp): posts queue, commit()
// launches the queued ops as one group, a launched op is matched with the peer's op of the same tag (oldest
// first), group.wait(timeout) returns when every op of the group was matched, a size mismatch fails both
// groups, abort() fails every rank's waits. The difference: a match does not move the bytes on the host, it
// enqueues the copy on the receiver's communication stream, ordered by events:
//   - at commit, each rank records a `launch` event on its stream, after whatever its device policy made the
//     stream wait for (the send buffers' producers, the receive buffers' last readers);
//   - the copy waits for the sender's launch event, runs on the receiver's stream, and the sender's stream
//     then waits for the copy (an event recorded right after it), so that the send buffer is not reused
//     before it was read.
// So group.wait() is a host rendezvous of the two ranks (as the schedules' commit-rendezvous model has it)
// but never a wait for the GPU: the host runs ahead, the device orders. The copies of the posts of one
// group go in post order. Options::copy = false skips the copies but keeps every event (to measure a step
// without its transfers). With ranks on several GPUs, give their CudaDevices a SyncAllocator (or make
// each device's default memory pool accessible to the others with cudaMemPoolSetAccess): a peer copy reads
// another device's chunk buffers, and memory from cudaMallocAsync's pools is not open to peers by default.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/comm/detail/commit_handle.hpp"
#include "dualpipe/comm/detail/meeting.hpp"
#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/stream.hpp"

namespace dualpipe {

class CudaLocalWorld;

/// One rank's end of a CudaLocalWorld. Models Communicator (and CommunicatorWithBarrier); used by one
/// thread at a time (its rank's); a group must be waited on before the next commit.
class CudaLocalCommunicator {
public:
  /// What commit() returns (detail::CommitHandle): wait(timeout) blocks (on the host) until every op of the
  /// group was matched and its copy enqueued, and throws TimeoutError, CommAborted, or Error on a size
  /// mismatch or a CUDA error while enqueueing; dropping it unwaited takes its unmatched ops back.
  using Group = detail::CommitHandle<CudaLocalCommunicator>;

  CudaLocalCommunicator(const CudaLocalCommunicator&) = delete;
  CudaLocalCommunicator& operator=(const CudaLocalCommunicator&) = delete;

  /// This rank.
  [[nodiscard]] int rank() const noexcept { return _rank; }
  /// Number of ranks of the world.
  [[nodiscard]] int size() const noexcept;
  /// This rank's CUDA device.
  [[nodiscard]] int device() const noexcept { return _device; }
  /// This rank's communication stream (owned by the world).
  [[nodiscard]] cudaStream_t stream() const noexcept { return _stream.get(); }
  /// Whether a step's transfers can be captured into a CUDA graph: only with one rank (a copy between
  /// ranks is enqueued by whichever rank's thread matches it, which no single capture can follow).
  [[nodiscard]] bool graph_capturable() const noexcept { return size() == 1; }

  /// Queues a send of `bytes` (device memory) to `peer`; `bytes` must stay valid until the group's copies
  /// are done (the device policy orders that).
  void post_send(int peer, MessageTag tag, ConstBytes bytes) {
    check_peer(peer, "post_send");
    _queued.push_back(Posted{true, peer, tag, const_cast<std::byte*>(bytes.data()), bytes.size(), false});
  }
  /// Queues a receive from `peer` into `bytes` (device memory).
  void post_recv(int peer, MessageTag tag, MutableBytes bytes) {
    check_peer(peer, "post_recv");
    _queued.push_back(Posted{false, peer, tag, bytes.data(), bytes.size(), false});
  }
  /// Records the launch event on the stream and matches everything queued since the last commit.
  [[nodiscard]] Group commit();
  /// Fails every rank's current and future waits with CommAborted(origin) until reset. The first origin is kept.
  void abort(const FailureOrigin& origin);
  /// Returns when every rank called barrier(); throws CommAborted / TimeoutError (as InProcessCommunicator).
  void barrier(std::chrono::milliseconds timeout);
  /// Collective reset after a failed step: every rank calls it; the last to arrive clears the world.
  void reset(std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000));

private:
  friend class CudaLocalWorld;

  struct Posted {
    bool send;
    int peer;
    MessageTag tag;
    std::byte* data;
    std::size_t size;
    bool done;  // under the world's mutex once launched
  };

  CudaLocalCommunicator(CudaLocalWorld* world, int rank, int device);

  void check_peer(int peer, const char* what) const;
  void wait_group(std::chrono::milliseconds timeout);
  void abandon_group() noexcept;
  friend class detail::CommitHandle<CudaLocalCommunicator>;
  [[nodiscard]] std::string describe_unfinished() const;

  CudaLocalWorld* _world;
  int _rank;
  int _device;
  Stream _stream;   // communication stream, on _device
  Event _launch;    // recorded at each commit, after the device policy's waits
  Event _copied;    // recorded after a copy into this rank (on its stream), for the sender to wait on
  std::vector<Posted> _queued;  // owner thread only
  std::vector<Posted> _group;   // launched; `done` under the world's mutex
  bool _group_open = false;     // owner thread only
  std::condition_variable _cv;  // with the world's mutex
  int _remaining = 0;           // under the world's mutex
  bool _failed = false;         // under the world's mutex
  std::string _error;           // under the world's mutex
};

/// Options of a CudaLocalWorld.
struct CudaLocalOptions {
  bool copy = true;  ///< false: match and order as usual but copy nothing (a step "without transfers").
};

/// P ranks of one process on CUDA devices; owns their communicators (streams and events) and mailboxes.
class CudaLocalWorld {
public:
  /// Options of a world.
  using Options = CudaLocalOptions;

  /// `size` ranks, all on `device` (-1: the current device). Throws ConfigError for size < 1, CudaError.
  explicit CudaLocalWorld(int size, int device = -1, Options options = {})
      : CudaLocalWorld(std::vector<int>(static_cast<std::size_t>(size < 1 ? 0 : size), device < 0 ? current_device() : device),
                       options, size) {}
  /// One rank per entry of `devices` (rank r on devices[r]). Throws ConfigError for an empty list, CudaError.
  explicit CudaLocalWorld(std::vector<int> devices, Options options = {})
      : CudaLocalWorld(std::move(devices), options, -1) {}
  CudaLocalWorld(const CudaLocalWorld&) = delete;
  CudaLocalWorld& operator=(const CudaLocalWorld&) = delete;
  /// Waits for every rank's stream (the copies must not outlive the buffers' owners' expectations).
  ~CudaLocalWorld() {
    for (auto& c : _comms) {
      DeviceGuard g(c->_device);
      ignore_cuda_error(cudaStreamSynchronize(c->stream()));
    }
  }

  /// Rank `rank`'s communicator. Throws ConfigError for a rank outside [0, size).
  [[nodiscard]] CudaLocalCommunicator& communicator(int rank) {
    if (rank < 0 || rank >= size())
      throw ConfigError("CudaLocalWorld: rank must be in [0, " + std::to_string(size()) + ") (got rank=" +
                        std::to_string(rank) + ")");
    return *_comms[static_cast<std::size_t>(rank)];
  }
  /// Number of ranks.
  [[nodiscard]] int size() const noexcept { return static_cast<int>(_comms.size()); }
  /// Whether a rank aborted since the last reset.
  [[nodiscard]] bool aborted() const noexcept { return _aborted.load(std::memory_order_acquire); }
  /// Copies enqueued so far (matched sends with bytes, when Options::copy).
  [[nodiscard]] long copies() const noexcept { return _copies.load(std::memory_order_relaxed); }
  /// The options.
  [[nodiscard]] const Options& options() const noexcept { return _options; }

private:
  friend class CudaLocalCommunicator;

  struct Entry {
    MessageTag tag;
    std::byte* data;
    std::size_t size;
    CudaLocalCommunicator* owner;
    std::size_t index;  // in owner->_group
  };

  CudaLocalWorld(std::vector<int> devices, Options options, int size_arg) : _options(options) {
    if (devices.empty())
      throw ConfigError("CudaLocalWorld: size must be at least 1 (got size=" +
                        std::to_string(size_arg >= 0 ? size_arg : 0) + ")");
    const int n = static_cast<int>(devices.size());
    const int count = cuda_device_count();
    for (int r = 0; r < n; ++r)
      if (devices[static_cast<std::size_t>(r)] < 0 || devices[static_cast<std::size_t>(r)] >= count)
        throw ConfigError("CudaLocalWorld: rank " + std::to_string(r) + " is on device " +
                          std::to_string(devices[static_cast<std::size_t>(r)]) + " but there are " +
                          std::to_string(count) + " CUDA devices");
    for (int r = 0; r < n; ++r) {
      const int d = devices[static_cast<std::size_t>(r)];
      DeviceGuard on(d);  // the rank's stream and events live on its device
      _comms.emplace_back(new CudaLocalCommunicator(this, r, d));
    }
    _sends.resize(static_cast<std::size_t>(n * n));
    _recvs.resize(static_cast<std::size_t>(n * n));
    for (auto& v : _sends) v.reserve(16);
    for (auto& v : _recvs) v.reserve(16);
  }

  static Entry* find(std::vector<Entry>& list, const MessageTag& tag) noexcept {
    for (Entry& e : list)
      if (e.tag == tag) return &e;
    return nullptr;
  }

  // Enqueues the copy of a matched pair (under _mutex); returns an error message, empty on success.
  std::string transfer(const Entry& send, const Entry& recv) noexcept {
    CudaLocalCommunicator& a = *send.owner;
    CudaLocalCommunicator& b = *recv.owner;
    if (send.size != recv.size)
      return "CUDA local communicator: message from rank " + std::to_string(a._rank) + " to rank " +
             std::to_string(b._rank) + " with tag " + describe(send.tag) + " has " + std::to_string(send.size) +
             " bytes but the receive buffer has " + std::to_string(recv.size) + " bytes";
    try {
      DeviceGuard g(b._device);
      if (&a != &b) DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(b.stream(), a._launch.get(), 0));
      if (_options.copy && send.size > 0) {
        if (a._device == b._device)
          DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(recv.data, send.data, send.size, cudaMemcpyDeviceToDevice, b.stream()));
        else
          DUALPIPE_CUDA_CHECK(cudaMemcpyPeerAsync(recv.data, b._device, send.data, a._device, send.size, b.stream()));
        _copies.fetch_add(1, std::memory_order_relaxed);
      }
      if (&a != &b) {
        b._copied.record(b.stream());
        DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(a.stream(), b._copied.get(), 0));
      }
    } catch (const std::exception& e) {
      return std::string("CUDA local communicator: transfer from rank ") + std::to_string(a._rank) + " to rank " +
             std::to_string(b._rank) + " with tag " + describe(send.tag) + " failed: " + e.what();
    }
    return {};
  }

  // Launches op `index` of `self`'s group (under _mutex).
  void launch(CudaLocalCommunicator& self, std::size_t index) {
    const CudaLocalCommunicator::Posted& op = self._group[index];
    const int src = op.send ? self._rank : op.peer;
    const int dst = op.send ? op.peer : self._rank;
    const auto box = static_cast<std::size_t>(src * size() + dst);
    std::vector<Entry>& other = op.send ? _recvs[box] : _sends[box];
    if (Entry* e = find(other, op.tag)) {
      const Entry mine{op.tag, op.data, op.size, &self, index};
      const Entry theirs = *e;
      other.erase(other.begin() + (e - other.data()));
      const std::string err = op.send ? transfer(mine, theirs) : transfer(theirs, mine);
      complete(*theirs.owner, theirs.index, err);
      complete(self, index, err);
    } else {
      (op.send ? _sends[box] : _recvs[box]).push_back(Entry{op.tag, op.data, op.size, &self, index});
    }
  }

  // Marks op `index` of `c`'s group done (under _mutex).
  static void complete(CudaLocalCommunicator& c, std::size_t index, const std::string& error) {
    c._group[index].done = true;
    if (!error.empty() && !c._failed) {
      c._failed = true;
      c._error = error;
    }
    if (--c._remaining == 0 || !error.empty()) c._cv.notify_one();
  }

  // Takes `self`'s unmatched ops back out of the mailboxes (under _mutex).
  void withdraw_unfinished(CudaLocalCommunicator& self) noexcept {
    for (std::size_t i = 0; i < self._group.size(); ++i) {
      const CudaLocalCommunicator::Posted& op = self._group[i];
      if (op.done) continue;
      const int src = op.send ? self._rank : op.peer;
      const int dst = op.send ? op.peer : self._rank;
      std::vector<Entry>& list = op.send ? _sends[static_cast<std::size_t>(src * size() + dst)]
                                         : _recvs[static_cast<std::size_t>(src * size() + dst)];
      for (auto it = list.begin(); it != list.end(); ++it)
        if (it->owner == &self && it->index == i) {
          list.erase(it);
          break;
        }
    }
  }

  void abort(const FailureOrigin& origin) {
    {
      std::lock_guard lk(_mutex);
      if (_aborted.load(std::memory_order_relaxed)) return;
      _origin = origin;
      _aborted.store(true, std::memory_order_release);
    }
    for (auto& c : _comms) c->_cv.notify_all();
    _barrier_cv.notify_all();
  }

  void barrier(int rank, std::chrono::milliseconds timeout) {
    const auto deadline = deadline_after(timeout);
    std::unique_lock lk(_mutex);
    if (aborted()) throw CommAborted(_origin);
    const auto r = _barrier.arrive(lk, _barrier_cv, size(), deadline, [&] { return aborted(); }, [] {});
    if (r == detail::Meeting::Result::met) return;
    if (r == detail::Meeting::Result::stopped) throw CommAborted(_origin);
    throw TimeoutError("CUDA local communicator: rank " + std::to_string(rank) + " timed out after " +
                       std::to_string(timeout.count()) + " ms at the end-of-step barrier (" +
                       std::to_string(_barrier.waiting() + 1) + " of " + std::to_string(size()) + " ranks arrived)");
  }

  void reset_collective(int rank, std::chrono::milliseconds timeout) {
    const auto deadline = deadline_after(timeout);
    std::unique_lock lk(_mutex);
    const auto r = _reset.arrive(lk, _barrier_cv, size(), deadline, [] { return false; }, [&] {
      for (auto& v : _sends) v.clear();
      for (auto& v : _recvs) v.clear();
      _aborted.store(false, std::memory_order_release);
      _origin = FailureOrigin{};
      _barrier.clear();
    });
    if (r == detail::Meeting::Result::met) return;
    throw TimeoutError("CUDA local communicator: rank " + std::to_string(rank) + " timed out after " +
                       std::to_string(timeout.count()) + " ms in reset() (" + std::to_string(_reset.waiting() + 1) +
                       " of " + std::to_string(size()) + " ranks called it)");
  }

  Options _options;
  std::vector<std::unique_ptr<CudaLocalCommunicator>> _comms;
  std::mutex _mutex;                          // everything below, and every communicator's group state
  std::vector<std::vector<Entry>> _sends;     // [src * size + dst]: launched sends with no receive yet
  std::vector<std::vector<Entry>> _recvs;     // [src * size + dst]: launched receives with no send yet
  std::atomic<bool> _aborted{false};
  FailureOrigin _origin;
  std::condition_variable _barrier_cv;        // barrier and reset
  detail::Meeting _barrier;                   // the end-of-step barrier
  detail::Meeting _reset;                     // the collective reset
  std::atomic<long> _copies{0};
};

// ---- CudaLocalCommunicator, defined after the world ----------------------------------------------------

inline CudaLocalCommunicator::CudaLocalCommunicator(CudaLocalWorld* world, int rank, int device)
    : _world(world), _rank(rank), _device(device),
      _stream(cudaStreamNonBlocking), _launch(Event::ordering), _copied(Event::ordering) {
  _queued.reserve(32);
  _group.reserve(32);
}

inline int CudaLocalCommunicator::size() const noexcept { return _world->size(); }

inline void CudaLocalCommunicator::check_peer(int peer, const char* what) const {
  if (peer < 0 || peer >= _world->size())
    throw Error(std::string("CUDA local communicator: rank ") + std::to_string(_rank) + " " + what + " to peer " +
                std::to_string(peer) + " outside [0, " + std::to_string(_world->size()) + ")");
}

inline CudaLocalCommunicator::Group CudaLocalCommunicator::commit() {
  if (_group_open)
    throw Error("CUDA local communicator: rank " + std::to_string(_rank) +
                " commits a new group before waiting on the previous one");
  if (_queued.empty() || _world->aborted()) {
    _queued.clear();
    return Group(this);
  }
  {
    DeviceGuard g(_device);
    _launch.record(_stream);  // after the device policy's waits for this group's buffers
  }
  _group.swap(_queued);
  _queued.clear();
  std::lock_guard lk(_world->_mutex);
  _failed = false;
  _remaining = static_cast<int>(_group.size());
  _group_open = true;
  for (std::size_t i = 0; i < _group.size(); ++i) _world->launch(*this, i);
  return Group(this);
}

inline void CudaLocalCommunicator::wait_group(std::chrono::milliseconds timeout) {
  if (!_group_open) {
    std::unique_lock lk(_world->_mutex);
    if (_world->aborted()) throw CommAborted(_world->_origin);
    return;
  }
  const auto deadline = deadline_after(timeout);
  std::unique_lock lk(_world->_mutex);
  _cv.wait_until(lk, deadline, [&] { return _remaining == 0 || _failed || _world->aborted(); });
  const bool completed = _remaining == 0;
  const bool failed = _failed;
  if (completed && !failed) {
    _group.clear();
    _group_open = false;
    return;
  }
  _world->withdraw_unfinished(*this);  // under the lock: no peer can match (and copy into) them any more
  std::string what = failed ? _error : (completed ? std::string() : describe_unfinished());
  // The first transfer that never came, for TimeoutError::tag()/peer() (the executor names its op).
  const auto missing = std::find_if(_group.begin(), _group.end(), [](const Posted& p) { return !p.done; });
  const MessageTag missing_tag = missing != _group.end() ? missing->tag : MessageTag{-1, -1, Payload::activation};
  const int missing_peer = missing != _group.end() ? missing->peer : -1;
  _group.clear();
  _group_open = false;
  _failed = false;
  _remaining = 0;
  const bool aborted = _world->aborted();
  FailureOrigin origin = aborted ? _world->_origin : FailureOrigin{};
  lk.unlock();
  if (failed) throw Error(what);
  if (aborted) throw CommAborted(std::move(origin));
  throw TimeoutError("CUDA local communicator: rank " + std::to_string(_rank) + " timed out after " +
                         std::to_string(timeout.count()) + " ms waiting for " + what,
                     missing_tag, missing_peer);
}

inline std::string CudaLocalCommunicator::describe_unfinished() const {
  std::string out;
  int n = 0;
  for (const Posted& p : _group) {
    if (p.done) continue;
    out += (n++ ? ", " : "");
    out += (p.send ? "send to rank " : "receive from rank ") + std::to_string(p.peer) + " " + describe(p.tag) + " " +
           std::to_string(p.size) + " bytes";
  }
  return std::to_string(n) + " of " + std::to_string(_group.size()) + " operations: " + out;
}

inline void CudaLocalCommunicator::abandon_group() noexcept {
  if (!_group_open) return;
  std::lock_guard lk(_world->_mutex);
  _world->withdraw_unfinished(*this);
  _group.clear();
  _group_open = false;
  _failed = false;
  _remaining = 0;
}

inline void CudaLocalCommunicator::abort(const FailureOrigin& origin) { _world->abort(origin); }

inline void CudaLocalCommunicator::barrier(std::chrono::milliseconds timeout) { _world->barrier(_rank, timeout); }

inline void CudaLocalCommunicator::reset(std::chrono::milliseconds timeout) {
  abandon_group();
  _queued.clear();
  _world->reset_collective(_rank, timeout);
}

static_assert(check_communicator<CudaLocalCommunicator>());

}  // namespace dualpipe
