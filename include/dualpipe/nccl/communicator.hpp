// dualpipe/nccl/communicator.hpp: NcclCommunicator, one pipeline rank per process (one GPU each),
// transfers with NCCL point-to-point calls on the communicator's stream, and a watchdog that turns a hang
// into an error.
//
//   const LaunchInfo who = launch_info_from_env();
//   NcclCommunicator comm(who.rank, who.size, unique_id_from_env(), who.local_rank);
//   Pipeline<DualPipe, NcclCommunicator, MyGpuStage, CudaDevice> pipe(comm, {&s0, &s1});
//
// - Posts queue; commit() issues everything queued between ncclGroupStart and ncclGroupEnd on stream(), so
//   the sends and receives of one commit are one NCCL group; group.wait(timeout) returns once the group is
//   enqueued on the stream (not when its data arrived: the device policy orders the compute after it with
//   events). NCCL matches a pair's sends and receives in the order they are posted; tags are not sent. The
//   schedules post every pair's messages in the same order on both sides (a CPU test checks every schedule),
//   and a message and its receive buffer must have the same size (NCCL does not check it).
// - The communicator is non-blocking (ncclConfig_t::blocking = 0): no NCCL call blocks the host; waits
//   poll ncclCommGetAsyncError with the caller's timeout.
// - The watchdog thread (nccl/detail/watchdog.hpp) polls ncclCommGetAsyncError and the groups in flight (an
//   event recorded after each): on an asynchronous error, or a group not done within the timeout its wait
//   was given, it aborts the communicator (ncclCommAbort, which also ends the kernels still waiting for a
//   peer), so that this rank's step ends with CommAborted naming "watchdog" and what it saw, instead of
//   hanging. Another rank whose peer died sees its own watchdog fire the same way.
// - After an abort the communicator is dead (NCCL's communicator is freed): build a new one with a new id.
// - barrier(timeout), called by the executor at the end of a step: a one-integer ncclAllReduce on the stream,
//   waited for on the host (bounded, abort-aware).
//
// Borrowing (a framework that owns its communicators and streams):
//
//   ncclComm_t pp = ...;                   // the framework's, e.g. NcclGrid (nccl/grid.hpp) or its own split
//   NcclOptions o;
//   o.borrowed_on_failure = NcclFailurePolicy::report_only;   // or abort (the default)
//   NcclCommunicator comm(NcclBorrow{pp, my_stream}, o);      // rank, size, device from the communicator
//
// A borrowed communicator is never initialised, finalised or destroyed here; on a failure it is aborted
// (ncclCommAbort) only under NcclFailurePolicy::abort; under report_only this object only stops using it
// and every wait throws CommAborted: the owner decides (NCCL kernels still waiting for a dead peer keep
// waiting until the owner aborts the communicator). A borrowed stream is never destroyed either (without
// one, the object makes its own). After this object is gone the borrowed communicator works as before.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/comm/detail/mailbox.hpp"
#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/core/message_tag.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/nccl/detail/finalize.hpp"
#include "dualpipe/nccl/detail/watchdog.hpp"
#include "dualpipe/nccl/error.hpp"

namespace dualpipe {

/// What a failure (the watchdog firing, a timeout, an NCCL error, abort()) does to a BORROWED communicator.
/// An owned one is always aborted.
enum class NcclFailurePolicy : unsigned char {
  abort,        ///< ncclCommAbort it (ends the kernels still waiting for a peer; the owner must not use it again).
  report_only,  ///< Leave it alone: this object stops using it and reports CommAborted; the owner acts.
};

/// Options of an NcclCommunicator.
struct NcclOptions {
  std::chrono::milliseconds init_timeout{120'000};  ///< Bound on creating the communicator (every rank must join).
  std::chrono::milliseconds watchdog_period{50};    ///< How often the watchdog looks.
  NcclFailurePolicy borrowed_on_failure = NcclFailurePolicy::abort;  ///< A borrowed communicator's fate.
};

/// A communicator (and optionally a stream) someone else owns, for NcclCommunicator to use.
struct NcclBorrow {
  ncclComm_t comm = nullptr;      ///< Initialised by the owner (done, or still in progress in non-blocking mode).
  cudaStream_t stream = nullptr;  ///< The transfers' stream, on the communicator's device; null: make one.
};

/// One rank of an NCCL communicator (see the file comment). Models Communicator and
/// CommunicatorWithBarrier. Used by one thread (its rank's) plus its own watchdog; abort() may be called
/// from any thread.
class NcclCommunicator {
public:
  /// What commit() returns.
  class Group {
  public:
    Group(NcclCommunicator* c, std::size_t ops) noexcept : _comm(c), _ops(ops) {}
    Group(Group&& o) noexcept : _comm(std::exchange(o._comm, nullptr)), _ops(o._ops) {}
    Group& operator=(Group&&) = delete;
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;
    ~Group() {
      if (_comm) _comm->_group_open = false;  // dropped unwaited: the watchdog still guards its transfers
    }
    /// Returns once the group is enqueued on the stream (its data moves later, in stream order). Throws
    /// CommAborted (this communicator was aborted), TimeoutError (not enqueued within `timeout`: the
    /// communicator is aborted), NcclError (an NCCL error: the communicator is aborted).
    void wait(std::chrono::milliseconds timeout) {
      if (NcclCommunicator* c = std::exchange(_comm, nullptr)) c->wait_group(_ops, timeout);
    }

  private:
    NcclCommunicator* _comm;
    std::size_t _ops;
  };

  /// Rank `rank` of `size`, joining the communicator of `id` on CUDA device `device` (-1: the current one).
  /// Every rank must construct its communicator within options.init_timeout. Throws ConfigError (bad rank,
  /// size or device), NcclError, CudaError, TimeoutError.
  NcclCommunicator(int rank, int size, const ncclUniqueId& id, int device = -1, NcclOptions options = {})
      : _rank(rank), _size(size), _device(device >= 0 ? device : current_device()), _options(options),
        _watchdog(_device, _options.watchdog_period, watchdog_hooks()) {
    if (size < 1 || rank < 0 || rank >= size)
      throw ConfigError("NcclCommunicator: rank " + std::to_string(rank) + " is outside a world of size " +
                        std::to_string(size));
    if (_device >= cuda_device_count())
      throw ConfigError("NcclCommunicator: device " + std::to_string(_device) + " does not exist (" +
                        std::to_string(cuda_device_count()) + " CUDA devices)");
    DeviceGuard on(_device);
    make_cuda_resources(nullptr);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const ncclResult_t r = ncclCommInitRankConfig(&_comm, size, id, rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      const std::string what = format_nccl_error(r, "ncclCommInitRankConfig", __FILE__, __LINE__);
      if (_comm) (void)ncclCommAbort(_comm);
      release_cuda();
      throw NcclError(what, static_cast<int>(r));
    }
    try {
      poll_until_launched("creating the communicator", _options.init_timeout);
    } catch (...) {
      if (_comm) (void)ncclCommAbort(_comm);
      _comm = nullptr;
      release_cuda();
      throw;
    }
    _queued.reserve(32);
    _committed.reserve(32);
    _watchdog.start();
  }

  /// Borrows `b.comm` (and `b.stream`, if given): rank, size and device are the communicator's. It is never
  /// initialised, finalised or destroyed here; a failure aborts it only under options.borrowed_on_failure ==
  /// NcclFailurePolicy::abort. Waits up to options.init_timeout for a non-blocking communicator's
  /// initialisation to finish. Throws ConfigError (a null communicator), NcclError, CudaError, TimeoutError.
  explicit NcclCommunicator(NcclBorrow b, NcclOptions options = {}) : NcclCommunicator(query(b.comm), b, options) {}

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  /// Stops the watchdog, then finalizes and destroys the NCCL communicator (or nothing, after an abort, or
  /// when it is borrowed).
  ~NcclCommunicator() {
    _watchdog.stop();
    try {
      DeviceGuard on(_device);
      std::lock_guard lk(_nccl_mutex);
      if (_comm && _owned && !_aborted.load()) {
        detail::finalize_or_abort(_comm);
      }
      _comm = nullptr;
    } catch (...) {
      // Destructors never throw.
    }
    release_cuda();
  }

  // ---- Queries ----------------------------------------------------------------------------------------
  /// This rank.
  [[nodiscard]] int rank() const noexcept { return _rank; }
  /// Number of ranks.
  [[nodiscard]] int size() const noexcept { return _size; }
  /// The CUDA device of this rank.
  [[nodiscard]] int device() const noexcept { return _device; }
  /// The stream every transfer is issued to (the borrowed one, or its own).
  [[nodiscard]] cudaStream_t stream() const noexcept { return _stream_used; }
  /// Whether the NCCL communicator is this object's (false: borrowed, see NcclBorrow).
  [[nodiscard]] bool owns_communicator() const noexcept { return _owned; }
  /// NCCL's point-to-point calls can be captured into a CUDA graph.
  [[nodiscard]] static constexpr bool graph_capturable() noexcept { return true; }
  /// Whether the communicator was aborted (by abort() or the watchdog).
  [[nodiscard]] bool aborted() const noexcept { return _aborted.load(std::memory_order_acquire); }
  /// Where the abort started, once aborted.
  [[nodiscard]] std::optional<FailureOrigin> failure() const {
    std::lock_guard lk(_origin_mutex);
    if (!aborted()) return std::nullopt;
    return _origin;
  }
  /// Groups the watchdog still watches.
  [[nodiscard]] std::size_t groups_in_flight() const { return _watchdog.in_flight(); }

  // ---- Communicator -----------------------------------------------------------------------------------
  /// Queues a send of `bytes` (device memory on this rank's device) to `peer`.
  void post_send(int peer, MessageTag tag, ConstBytes bytes) {
    check_peer(peer, "post_send");
    _queued.push_back(Posted{true, peer, tag, const_cast<std::byte*>(bytes.data()), bytes.size()});
  }
  /// Queues a receive from `peer` into `bytes` (device memory).
  void post_recv(int peer, MessageTag tag, MutableBytes bytes) {
    check_peer(peer, "post_recv");
    _queued.push_back(Posted{false, peer, tag, bytes.data(), bytes.size()});
  }
  /// Issues everything queued as one NCCL group on stream(). Throws NcclError (the communicator is then
  /// aborted), Error when the previous group was not waited on.
  [[nodiscard]] Group commit() {
    if (_group_open)
      throw Error("NCCL communicator: rank " + std::to_string(_rank) +
                  " commits a new group before waiting on the previous one");
    const std::size_t n = _queued.size();
    if (n == 0) return Group(this, 0);
    _group_open = true;
    DeviceGuard on(_device);
    std::unique_lock lk(_nccl_mutex);
    if (aborted() || !_comm) {
      _queued.clear();
      return Group(this, n);  // wait() throws CommAborted
    }
    ncclResult_t r = ncclGroupStart();
    for (const Posted& p : _queued) {
      if (r != ncclSuccess) break;
      r = p.send ? ncclSend(p.data, p.size, ncclUint8, p.peer, _comm, stream())
                 : ncclRecv(p.data, p.size, ncclUint8, p.peer, _comm, stream());
    }
    const ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess || r == ncclInProgress) r = end;
    _committed.swap(_queued);  // kept for the watchdog's message (capacities are reused: no allocation)
    _queued.clear();
    if (r != ncclSuccess && r != ncclInProgress) {
      const std::string what = format_nccl_error(r, "ncclGroupEnd (commit)", __FILE__, __LINE__, _comm);
      lk.unlock();
      _group_open = false;  // no group to wait on: later calls see the abort, not "commits before waiting"
      abort_with("commit", what);
      throw NcclError(what, static_cast<int>(r));
    }
    return Group(this, n);
  }
  /// Aborts the NCCL communicator: every later wait of this rank throws CommAborted(origin). The first
  /// origin is kept. Other ranks see their transfers with this rank stop, and their watchdogs fire.
  void abort(const FailureOrigin& origin) { abort_internal(origin); }
  /// Returns when every rank's barrier allreduce (and so every transfer this rank issued before it) is
  /// done. Throws CommAborted, TimeoutError (the communicator is aborted), NcclError.
  void barrier(std::chrono::milliseconds timeout) {
    DeviceGuard on(_device);
    {
      std::unique_lock lk(_nccl_mutex);
      if (aborted() || !_comm) {
        lk.unlock();
        throw_aborted();
      }
      const ncclResult_t r = ncclAllReduce(_barrier_value, _barrier_value, 1, ncclInt32, ncclSum, _comm, stream());
      if (r != ncclSuccess && r != ncclInProgress) {
        const std::string what = format_nccl_error(r, "ncclAllReduce (barrier)", __FILE__, __LINE__, _comm);
        lk.unlock();
        abort_with("barrier", what);
        throw NcclError(what, static_cast<int>(r));
      }
    }
    poll_until_launched("the end-of-step barrier", timeout);
    synchronize(timeout);
  }
  /// Every rank's `mine` (same size everywhere, a multiple of 8 bytes; host memory) into `all` (size() x
  /// mine.size()), by rank: every rank calls it. One ncclAllReduce (a sum of int64 words over a zeroed
  /// device buffer in which each rank wrote its own part: exact), staged through device memory that is
  /// allocated on the first call (and again only when a larger one comes). Blocks until the bytes are on the
  /// host, bounded by `timeout`. Throws CommAborted, TimeoutError (the communicator aborted), NcclError.
  void all_gather(ConstBytes mine, MutableBytes all, std::chrono::milliseconds timeout) {
    if (all.size() != mine.size() * static_cast<std::size_t>(_size) || mine.size() % 8 != 0)
      throw Error("NCCL communicator: all_gather of " + std::to_string(mine.size()) + " bytes per rank into " +
                  std::to_string(all.size()) + " (needs size() x them, a multiple of 8)");
    DeviceGuard on(_device);
    {
      std::unique_lock lk(_nccl_mutex);
      if (aborted() || !_comm) {
        lk.unlock();
        throw_aborted();
      }
      if (_gather_bytes < all.size()) {
        if (_gather) ignore_cuda_error(cudaFree(_gather));
        _gather = nullptr;
        _gather_bytes = 0;
        DUALPIPE_CUDA_CHECK(cudaMalloc(&_gather, all.size()));
        _gather_bytes = all.size();
      }
      auto* dev = static_cast<std::byte*>(_gather);
      DUALPIPE_CUDA_CHECK(cudaMemsetAsync(dev, 0, all.size(), stream()));
      DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(dev + static_cast<std::size_t>(_rank) * mine.size(), mine.data(), mine.size(),
                                          cudaMemcpyHostToDevice, stream()));
      const ncclResult_t r = ncclAllReduce(dev, dev, all.size() / 8, ncclInt64, ncclSum, _comm, stream());
      if (r != ncclSuccess && r != ncclInProgress) {
        const std::string what = format_nccl_error(r, "ncclAllReduce (all_gather)", __FILE__, __LINE__, _comm);
        lk.unlock();
        abort_with("all_gather", what);
        throw NcclError(what, static_cast<int>(r));
      }
    }
    poll_until_launched("an all-gather", timeout);
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(all.data(), _gather, all.size(), cudaMemcpyDeviceToHost, stream()));
    synchronize(timeout);
  }
  /// Blocks until everything issued to stream() so far is done; throws CommAborted when the communicator
  /// is (or gets) aborted, TimeoutError after `timeout` (the communicator is then aborted).
  void synchronize(std::chrono::milliseconds timeout) {
    DeviceGuard on(_device);
    _done->record(stream());
    const auto deadline = deadline_after(timeout);
    int round = 0;
    while (!_done->ready()) {
      if (aborted()) throw_aborted();
      if (std::chrono::steady_clock::now() >= deadline) {
        abort_with("synchronize", "the transfers issued to the stream did not finish within " +
                                      std::to_string(timeout.count()) + " ms");
        throw TimeoutError("NCCL communicator: rank " + std::to_string(_rank) + ": transfers not done within " +
                           std::to_string(timeout.count()) + " ms (communicator aborted)");
      }
      if (++round < 200) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (aborted()) throw_aborted();
  }

private:
  using Posted = detail::PostedOp;

  struct Identity {
    ncclComm_t comm;
    int rank, size, device;
  };
  // A borrowed communicator's rank, size and device.
  static Identity query(ncclComm_t comm) {
    if (!comm) throw ConfigError("NcclCommunicator: NcclBorrow::comm is null (borrow an initialised communicator)");
    Identity id{comm, 0, 0, 0};
    DUALPIPE_NCCL_CHECK(ncclCommUserRank(comm, &id.rank));
    DUALPIPE_NCCL_CHECK(ncclCommCount(comm, &id.size));
    DUALPIPE_NCCL_CHECK(ncclCommCuDevice(comm, &id.device));
    return id;
  }

  NcclCommunicator(Identity id, NcclBorrow b, NcclOptions options)
      : _rank(id.rank), _size(id.size), _device(id.device), _options(options), _owned(false),
        _watchdog(_device, _options.watchdog_period, watchdog_hooks()) {
    DeviceGuard on(_device);
    make_cuda_resources(b.stream);
    _comm = id.comm;
    try {
      poll_until_launched("borrowing the communicator", _options.init_timeout);
    } catch (...) {
      _comm = nullptr;
      release_cuda();
      throw;
    }
    _queued.reserve(32);
    _committed.reserve(32);
    _watchdog.start();
  }

  // The stream (`given`, or its own), the synchronize event and the barrier's device integer.
  void make_cuda_resources(cudaStream_t given) {
    if (given) {
      _stream_used = given;
    } else {
      _stream = std::make_unique<Stream>(cudaStreamNonBlocking);
      _stream_used = _stream->get();
    }
    _done = std::make_unique<Event>(Event::ordering);
    DUALPIPE_CUDA_CHECK(cudaMalloc(&_barrier_value, sizeof(int)));
    // On the communication stream, which the barrier's all-reduce uses: cudaMemset would run on the legacy
    // stream, which a non-blocking stream does not wait for.
    DUALPIPE_CUDA_CHECK(cudaMemsetAsync(_barrier_value, 0, sizeof(int), _stream_used));
  }
  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= _size)
      throw Error(std::string("NCCL communicator: rank ") + std::to_string(_rank) + " " + what + " to peer " +
                  std::to_string(peer) + " outside [0, " + std::to_string(_size) + ")");
  }

  [[noreturn]] void throw_aborted() const {
    std::lock_guard lk(_origin_mutex);
    throw CommAborted(_origin);
  }

  void release_cuda() noexcept {
    if (_barrier_value) {
      try {
        DeviceGuard on(_device);
        // cudaFree waits for the whole device: a borrowed communicator left alone after a failure
        // (report_only) may still have a kernel waiting for a dead peer; then the integer is left behind.
        if (!_owned && _done) {
          _done->record(stream());
          const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
          while (!_done->ready() && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          if (!_done->ready()) {
            _barrier_value = nullptr;
            _gather = nullptr;  // left behind with the integer, for the same reason
            return;
          }
        }
        if (_gather) ignore_cuda_error(cudaFree(_gather));
        _gather = nullptr;
        ignore_cuda_error(cudaFree(_barrier_value));
      } catch (...) {}
      _barrier_value = nullptr;
    }
  }

  // Polls ncclCommGetAsyncError until the last non-blocking call has finished (ncclSuccess). Throws
  // CommAborted, TimeoutError or NcclError (aborting the communicator for the last two).
  void poll_until_launched(const char* what, std::chrono::milliseconds timeout) {
    const auto deadline = deadline_after(timeout);
    int round = 0;
    for (;;) {
      ncclResult_t st = ncclSuccess;
      {
        std::lock_guard lk(_nccl_mutex);
        if (aborted() || !_comm) throw_aborted();
        const ncclResult_t q = ncclCommGetAsyncError(_comm, &st);
        if (q != ncclSuccess) st = q;
      }
      if (st == ncclSuccess) return;
      if (st != ncclInProgress) {
        const std::string text = format_nccl_error(st, what, __FILE__, __LINE__);
        abort_with(what, text);
        throw NcclError(text, static_cast<int>(st));
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        const std::string text =
            std::string(what) + " did not finish within " + std::to_string(timeout.count()) + " ms";
        abort_with(what, text);
        throw TimeoutError("NCCL communicator: rank " + std::to_string(_rank) + ": " + text +
                           " (communicator aborted)");
      }
      if (++round < 100) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  void wait_group(std::size_t ops, std::chrono::milliseconds timeout) {
    _group_open = false;
    if (ops == 0) {
      if (aborted()) throw_aborted();
      return;
    }
    poll_until_launched("launching a group", timeout);
    _watchdog.watch(stream(), _committed, timeout);  // ops == _committed.size(): the group just waited on
  }

  // What the watchdog asks of this communicator, from its own thread.
  detail::NcclWatchdogHooks watchdog_hooks() {
    detail::NcclWatchdogHooks h;
    h.aborted = [this] { return aborted(); };
    h.async_error = [this]() -> std::optional<std::string> {
      std::lock_guard nl(_nccl_mutex);
      if (!_comm || aborted()) return std::nullopt;
      ncclResult_t st = ncclSuccess;
      const ncclResult_t q = ncclCommGetAsyncError(_comm, &st);
      if (q != ncclSuccess) st = q;
      if (st == ncclSuccess || st == ncclInProgress) return std::nullopt;
      return "NCCL asynchronous error: " + format_nccl_error(st, "ncclCommGetAsyncError", __FILE__, __LINE__, _comm);
    };
    h.fire = [this](const std::string& what) { abort_with("watchdog", what); };
    return h;
  }

  void abort_with(const char* where, const std::string& what) {
    FailureOrigin o;
    o.rank = _rank;
    o.op = where;
    o.what = "NCCL communicator: " + what;
    abort_internal(o);
  }

  void abort_internal(const FailureOrigin& origin) noexcept {
    {
      std::lock_guard lk(_origin_mutex);
      if (_aborted.load(std::memory_order_relaxed)) return;
      _origin = origin;
      _aborted.store(true, std::memory_order_release);
    }
    std::lock_guard lk(_nccl_mutex);
    if (_comm && (_owned || _options.borrowed_on_failure == NcclFailurePolicy::abort)) {
      try {
        DeviceGuard on(_device);
        (void)ncclCommAbort(_comm);  // frees the communicator and ends its pending kernels
      } catch (...) {}
    }
    _comm = nullptr;  // report_only: the owner's to abort or keep; this object never touches it again
  }

  int _rank;
  int _size;
  int _device;
  NcclOptions _options;
  bool _owned = true;                   // false: borrowed (NcclBorrow)
  std::unique_ptr<Stream> _stream;      // its own stream, when none was lent
  cudaStream_t _stream_used = nullptr;  // the transfers' stream (borrowed or _stream)
  std::unique_ptr<Event> _done;         // synchronize()'s event (owner thread)
  int* _barrier_value = nullptr;        // device int for the barrier allreduce
  void* _gather = nullptr;              // all_gather's device buffer (grown on demand)
  std::size_t _gather_bytes = 0;
  ncclComm_t _comm = nullptr;      // null after an abort; under _nccl_mutex
  mutable std::mutex _nccl_mutex;  // every NCCL call on _comm (all are short: non-blocking mode)
  std::atomic<bool> _aborted{false};
  mutable std::mutex _origin_mutex;
  FailureOrigin _origin;
  std::vector<Posted> _queued;     // owner thread
  bool _group_open = false;        // owner thread
  std::vector<Posted> _committed;  // the last group's ops (owner thread)
  detail::NcclWatchdog _watchdog;  // last: built after (and stopped before) what its hooks use
};

static_assert(check_communicator<NcclCommunicator>());

}  // namespace dualpipe
