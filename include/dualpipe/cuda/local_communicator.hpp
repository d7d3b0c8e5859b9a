// dualpipe/cuda/local_communicator.hpp: CudaLocalCommunicator, several ranks of one process (threads) on one or
// more GPUs; the transfers are device-to-device (or peer) copies on the ranks' communication streams.
//
//   CudaLocalWorld world(P);                       // P ranks on the current device (or a list of devices)
//   run_ranks(P, [&](int r) {
//     Pipeline<DualPipe, CudaLocalCommunicator, MyGpuStage, CudaDevice> pipe(world.communicator(r), {...});
//     pipe.step(...);
//   });
//
// The group semantics are the in-process communicator's (comm/inprocess.hpp; both are built on
// comm/detail/mailbox.hpp): posts queue, commit() launches the queued ops as one group, a launched op is
// matched with the peer's op of the same tag (oldest first), group.wait(timeout) returns when every op of
// the group was matched, a size mismatch fails both groups, abort() fails every rank's waits. The
// difference: a match does not move the bytes on the host, it enqueues the copy on the receiver's
// communication stream, ordered by events:
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
#include "dualpipe/comm/detail/mailbox.hpp"
#include "dualpipe/comm/detail/meeting.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/stream.hpp"

namespace dualpipe {

class CudaLocalWorld;

/// One rank's end of a CudaLocalWorld. Models Communicator (and CommunicatorWithBarrier); used by one
/// thread at a time (its rank's); a group must be waited on before the next commit. rank(), size(),
/// post_send(), post_recv() (of device memory), abort(), barrier() and reset() are detail::MailboxRank's.
class CudaLocalCommunicator : public detail::MailboxRank<CudaLocalCommunicator, CudaLocalWorld> {
public:
  /// What commit() returns (detail::CommitHandle): wait(timeout) blocks (on the host) until every op of the
  /// group was matched and its copy enqueued, and throws TimeoutError, CommAborted, or Error on a size
  /// mismatch or a CUDA error while enqueueing; dropping it unwaited takes its unmatched ops back.
  using Group = detail::CommitHandle<CudaLocalCommunicator>;

  /// This rank's CUDA device.
  [[nodiscard]] int device() const noexcept { return _device; }
  /// This rank's communication stream (owned by the world).
  [[nodiscard]] cudaStream_t stream() const noexcept { return _stream.get(); }
  /// Whether a step's transfers can be captured into a CUDA graph: only with one rank (a copy between
  /// ranks is enqueued by whichever rank's thread matches it, which no single capture can follow).
  [[nodiscard]] bool graph_capturable() const noexcept { return size() == 1; }

  /// Records the launch event on the stream and matches everything queued since the last commit.
  [[nodiscard]] Group commit();
  /// Every rank's `mine` (host memory, the same size everywhere) into `all`, by rank: a host meeting of the
  /// world's threads (the executor's size exchange: the transfers themselves copy device memory only).
  /// Throws CommAborted, TimeoutError.
  void all_gather(ConstBytes mine, MutableBytes all, std::chrono::milliseconds timeout);

private:
  friend class CudaLocalWorld;
  friend class detail::MailboxRank<CudaLocalCommunicator, CudaLocalWorld>;
  friend class detail::CommitHandle<CudaLocalCommunicator>;

  using Posted = detail::LaunchedOp;  // `done` under the world's mutex once launched
  // Every call (and every rank's group state) under the world's one mutex.
  using Mailboxes = detail::Mailboxes<CudaLocalCommunicator, detail::CallerHoldsLock>;
  friend Mailboxes;

  CudaLocalCommunicator(CudaLocalWorld* world, int rank, int device);

  void wait_group(std::chrono::milliseconds timeout);
  void abandon_group() noexcept;
  // Marks op `index` of the group done (under the world's mutex), failed when `error` is not null.
  void complete(std::size_t index, const std::string* error);
  // Takes the group's unmatched ops back out of the mailboxes (under the world's mutex).
  void withdraw_unfinished() noexcept;

  int _device;
  Stream _stream;               // communication stream, on _device
  Event _launch;                // recorded at each commit, after the device policy's waits
  Event _copied;                // recorded after a copy into this rank (on its stream), for the sender to wait on
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
      : CudaLocalWorld(
            std::vector<int>(static_cast<std::size_t>(size < 1 ? 0 : size), device < 0 ? current_device() : device),
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
      throw ConfigError("CudaLocalWorld: rank must be in [0, " + std::to_string(size()) +
                        ") (got rank=" + std::to_string(rank) + ")");
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
  friend class detail::MailboxRank<CudaLocalCommunicator, CudaLocalWorld>;

  using Entry = CudaLocalCommunicator::Mailboxes::Entry;

  CudaLocalWorld(std::vector<int> devices, Options options, int size_arg)
      : _options(options), _boxes(static_cast<int>(devices.size()), "CUDA local communicator") {
    if (devices.empty())
      throw ConfigError(
          "CudaLocalWorld: size must be at least 1 (got size=" + std::to_string(size_arg >= 0 ? size_arg : 0) + ")");
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
  }

  // Enqueues the copy of a matched pair of the same size (under _mutex); returns an error message, empty on
  // success.
  std::string transfer(const Entry& send, const Entry& recv) noexcept {
    CudaLocalCommunicator& a = *send.owner;
    CudaLocalCommunicator& b = *recv.owner;
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
    _boxes.launch(self, index, self._group[index],
                  [this](const Entry& send, const Entry& recv) { return transfer(send, recv); });
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
    const auto r = _barrier.arrive(
        lk, _barrier_cv, size(), deadline, [&] { return aborted(); }, [] {});
    if (r == detail::Meeting::Result::met) return;
    if (r == detail::Meeting::Result::stopped) throw CommAborted(_origin);
    throw TimeoutError("CUDA local communicator: rank " + std::to_string(rank) + " timed out after " +
                       std::to_string(timeout.count()) + " ms at the end-of-step barrier (" +
                       std::to_string(_barrier.waiting() + 1) + " of " + std::to_string(size()) + " ranks arrived)");
  }

  void all_gather(int rank, ConstBytes mine, MutableBytes all, std::chrono::milliseconds timeout) {
    if (all.size() != mine.size() * static_cast<std::size_t>(size()))
      throw Error("CUDA local communicator: all_gather of " + std::to_string(mine.size()) + " bytes per rank into " +
                  std::to_string(all.size()));
    const auto deadline = deadline_after(timeout);
    std::unique_lock lk(_mutex);
    if (aborted()) throw CommAborted(_origin);
    const auto r = _gather.run(
        lk, _barrier_cv, size(), rank, deadline, [&] { return aborted(); }, mine, all);
    if (r == detail::Meeting::Result::met) return;
    if (r == detail::Meeting::Result::stopped) throw CommAborted(_origin);
    throw TimeoutError("CUDA local communicator: rank " + std::to_string(rank) + " timed out after " +
                       std::to_string(timeout.count()) + " ms in an all-gather (" +
                       std::to_string(_gather.waiting() + 1) + " of " + std::to_string(size()) + " ranks arrived)");
  }

  void reset_collective(int rank, std::chrono::milliseconds timeout) {
    const auto deadline = deadline_after(timeout);
    std::unique_lock lk(_mutex);
    const auto r = _reset.arrive(
        lk, _barrier_cv, size(), deadline, [] { return false; },
        [&] {
          _boxes.clear();
          _aborted.store(false, std::memory_order_release);
          _origin = FailureOrigin{};
          _barrier.clear();
          _gather.clear();
        });
    if (r == detail::Meeting::Result::met) return;
    throw TimeoutError("CUDA local communicator: rank " + std::to_string(rank) + " timed out after " +
                       std::to_string(timeout.count()) + " ms in reset() (" + std::to_string(_reset.waiting() + 1) +
                       " of " + std::to_string(size()) + " ranks called it)");
  }

  Options _options;
  std::vector<std::unique_ptr<CudaLocalCommunicator>> _comms;
  std::mutex _mutex;                        // everything below, and every communicator's group state
  CudaLocalCommunicator::Mailboxes _boxes;  // between every pair of ranks
  std::atomic<bool> _aborted{false};
  FailureOrigin _origin;
  std::condition_variable _barrier_cv;  // barrier and reset
  detail::Meeting _barrier;             // the end-of-step barrier
  detail::Meeting _reset;               // the collective reset
  detail::HostGather _gather;           // all_gather
  std::atomic<long> _copies{0};
};

// ---- CudaLocalCommunicator, defined after the world ----------------------------------------------------

inline void CudaLocalCommunicator::all_gather(ConstBytes mine, MutableBytes all, std::chrono::milliseconds timeout) {
  _world->all_gather(rank(), mine, all, timeout);
}

inline CudaLocalCommunicator::CudaLocalCommunicator(CudaLocalWorld* world, int rank, int device)
    : MailboxRank(world, rank, "CUDA local communicator"), _device(device), _stream(cudaStreamNonBlocking),
      _launch(Event::ordering), _copied(Event::ordering) {}

inline CudaLocalCommunicator::Group CudaLocalCommunicator::commit() {
  if (!can_launch()) return Group(this);
  {
    DeviceGuard g(_device);
    _launch.record(_stream);  // after the device policy's waits for this group's buffers
  }
  open_group();
  std::lock_guard lk(_world->_mutex);
  _failed = false;
  _remaining = static_cast<int>(_group.size());
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
  withdraw_unfinished();  // under the lock: no peer can match (and copy into) them any more
  std::string what = failed ? _error : (completed ? std::string() : detail::describe_unfinished(_group));
  // The transfer that never came, for TimeoutError::tag()/peer() (the executor names its op).
  const detail::LaunchedOp* missing = detail::first_missing(_group);
  const MessageTag missing_tag = missing ? missing->tag : MessageTag{-1, -1, Payload::activation};
  const int missing_peer = missing ? missing->peer : -1;
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

inline void CudaLocalCommunicator::complete(std::size_t index, const std::string* error) {
  _group[index].done = true;
  if (error && !_failed) {
    _failed = true;
    _error = *error;
  }
  if (--_remaining == 0 || error) _cv.notify_one();
}

inline void CudaLocalCommunicator::withdraw_unfinished() noexcept {
  for (std::size_t i = 0; i < _group.size(); ++i)
    if (!_group[i].done) (void)_world->_boxes.withdraw(*this, i, _group[i]);
}

inline void CudaLocalCommunicator::abandon_group() noexcept {
  if (!_group_open) return;
  std::lock_guard lk(_world->_mutex);
  withdraw_unfinished();
  _group.clear();
  _group_open = false;
  _failed = false;
  _remaining = 0;
}

static_assert(check_communicator<CudaLocalCommunicator>());

}  // namespace dualpipe
