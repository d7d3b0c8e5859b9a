// dualpipe/nccl/expert_comm.hpp: NcclExpertComm, the NCCL model of ExpertComm (comm/expert_comm.hpp): the
// expert-parallel group's all-to-all as one NCCL group of per-peer sends and receives, on a stream of its
// own, over a borrowed communicator (NcclGrid's ep one, or a split of it).
//
//   NcclGrid grid(pgrid, world);                                 // pp x ep, say
//   NcclCommunicator pipe(NcclBorrow{grid.communicator(GridDim::pp), comm_stream});
//   NcclExpertOptions eo;
//   eo.pipeline = &pipe;        // the ordering rule (below) on pipe's stream, and a failure here aborts pipe
//   NcclExpertComm ep(NcclBorrow{grid.communicator(GridDim::ep)}, eo);
//
//   AllToAllBuffers b{send, send_counts, recv, recv_counts, /*after_stream=*/compute};
//   auto x = ep.start_all_to_all(ExpertTag{.module = 0, .chunk = 3, .layer = 1, .phase = 1}, b);
//   x.wait(10s);                     // device side: `compute` waits for the exchange, the host does not
//   x.enqueue_wait(other);           // another stream waits for it too
//   x.synchronize(10s);              // or the host waits: recv is filled (TimeoutError, CommAborted)
//
// - start_all_to_all orders the exchange after the work issued so far to `buffers.after_stream` (an event),
//   issues the group (ncclGroupStart; ncclSend/ncclRecv per peer with a non-zero count; ncclGroupEnd) on
//   stream(), this rank's own segment as a device copy on the same stream, records a completion event and
//   returns: the host never waits for data here (it polls, bounded, only until NCCL has enqueued the group).
// - NCCL does not check that a receive's count is the peer's send count (the concept's Error for a count
//   that disagrees cannot be raised without a host wait): callers exchange counts first if they can differ
//   (the own segment's two counts are checked: ConfigError).
// - Failures: a wait on the host past its timeout, the watchdog (every exchange is watched for
//   NcclExpertOptions::timeout, which also covers exchanges only waited on by a stream), an NCCL error, or
//   abort(origin) abort the communicator (a borrowed one only under NcclFailurePolicy::abort, as
//   NcclCommunicator) and every later wait throws CommAborted; the message names the rank (this rank in the
//   expert group, or NcclExpertOptions::report_rank) and the exchange's ExpertTag (module, chunk, layer,
//   phase). Another rank of the group sees its own wait or watchdog fire: NCCL does not wake it. With
//   NcclExpertOptions::pipeline the pipeline's communicator is aborted too: a wait that only a stream did
//   (the executor's, with CudaDevice) cannot tell the host, but the step's end-of-step barrier then fails.
//
// The ordering rule (docs/gpus.md#moe-the-nccl-expert-communicator): NCCL kernels of two communicators that
// share GPUs can deadlock each other when a GPU cannot run them at once (a kernel of one waits for a peer
// whose GPU is busy with a kernel of the other that waits for this GPU). With
// NcclExpertOptions::pipeline (or pipeline_stream) set, each exchange starts after the NCCL work issued to the pipeline's
// stream so far, and the pipeline's stream waits for the exchange before its next group: all NCCL work of
// a rank runs one kernel at a time, in the order the rank's (one) executor thread issued it. Every rank of
// an expert group has the same pipeline rank, hence the same op list and the same phases, and so issues
// the same sequence of pipeline groups and exchanges; with the schedule deadlock-free, no cycle of waits
// can form. (Lending the exchanges the pipeline's stream itself gives the same order.) Without it the
// exchanges run beside the pipeline's transfers, which is safe only
// while the GPU can hold both communicators' kernels at once (NCCL's own caveat for concurrent
// communicators).
//
// Graph capture (CudaDeviceOptions::graph): not tested with exchanges; use GraphMode::off with this model.
// With NcclExpertOptions::timing every exchange is also timed with CUDA events (take_times), for timelines.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/comm/expert_comm.hpp"
#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/nccl/communicator.hpp"
#include "dualpipe/nccl/detail/watchdog.hpp"
#include "dualpipe/nccl/error.hpp"

namespace dualpipe {

/// Options of an NcclExpertComm.
struct NcclExpertOptions {
  /// The pipeline's communicator: a failure of the exchanges aborts it too (so that a step whose exchanges
  /// only streams waited for still fails, at its end-of-step barrier, naming the exchange), and, unless
  /// `stream` is its stream, its stream is the pipeline_stream below. Null: neither.
  NcclCommunicator* pipeline = nullptr;
  /// The pipeline's NCCL stream (NcclCommunicator::stream()): exchanges and pipeline groups then run one at
  /// a time in issue order, which can never deadlock (the ordering rule, in the file comment). Null (and no
  /// `pipeline`): the exchanges run beside the pipeline's transfers.
  cudaStream_t pipeline_stream = nullptr;
  /// The exchanges' stream, on the communicator's device; null: the object makes its own.
  cudaStream_t stream = nullptr;
  /// The watchdog's bound on every exchange (also those only waited on by a stream).
  std::chrono::milliseconds timeout{60'000};
  std::chrono::milliseconds init_timeout{120'000};  ///< Bound on a borrowed communicator's pending init.
  std::chrono::milliseconds watchdog_period{50};    ///< How often the watchdog looks.
  NcclFailurePolicy borrowed_on_failure = NcclFailurePolicy::abort;  ///< What a failure does to the communicator.
  int report_rank = -1;  ///< The rank failures name (the grid rank, say); -1: the rank in the expert group.
  bool timing = false;   ///< Time every exchange on the GPU with CUDA events (take_times), for timelines.
};

/// One exchange's GPU time (NcclExpertComm::take_times): from when its stream reached it (its inputs ready)
/// to its end, in ms after the epoch event given to take_times.
struct NcclExchangeTime {
  ExpertTag tag;
  double start = 0;
  double end = 0;
};

/// The NCCL expert-parallel all-to-all (see the file comment). Models ExpertComm. Used by one thread (its
/// rank's executor) plus its own watchdog; abort() may be called from any thread.
class NcclExpertComm {
public:
  /// What start_all_to_all returns: one exchange in flight. Move-only.
  class Exchange {
  public:
    Exchange(Exchange&& o) noexcept
        : _comm(std::exchange(o._comm, nullptr)), _tag(o._tag), _done(std::move(o._done)), _after(o._after),
          _failed(o._failed) {}
    Exchange& operator=(Exchange&&) = delete;
    Exchange(const Exchange&) = delete;
    Exchange& operator=(const Exchange&) = delete;
    ~Exchange() {
      if (_comm && _done) _comm->give_back(std::move(_done));
    }

    /// The executor's wait (comm/expert_comm.hpp): for an exchange started with an `after_stream`, makes that
    /// stream wait for it on the device and returns at once (the stream's later work sees `recv` filled; the
    /// watchdog bounds the exchange); without one, synchronize(timeout). Throws CommAborted, TimeoutError.
    void wait(std::chrono::milliseconds timeout) {
      if (!_comm) return;
      if (_after) {
        enqueue_wait(_after);
        finish();
      } else {
        synchronize(timeout);
      }
    }

    /// Blocks the host until this rank's part is done (`recv` filled, `send` free). Throws CommAborted (the
    /// communicator was aborted), TimeoutError after `timeout` naming the exchange (the communicator is
    /// then aborted). A second wait returns at once.
    void synchronize(std::chrono::milliseconds timeout) {
      if (!_comm) return;
      if (_failed) _comm->throw_aborted();
      _comm->wait_host(*_done, _tag, timeout);
      finish();
    }

    /// Makes `stream` wait (on the device) for the exchange: work issued to it afterwards sees `recv`
    /// filled. The host does not wait; the watchdog still bounds the exchange. Throws CommAborted.
    void enqueue_wait(cudaStream_t stream) {
      if (!_comm) return;
      if (_failed || _comm->aborted()) _comm->throw_aborted();
      DeviceGuard on(_comm->device());
      DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(stream, _done->get(), 0));
    }

    /// Whether the exchange is done on the device (polls; false after a failure).
    [[nodiscard]] bool done() const {
      if (!_comm) return true;
      return !_failed && !_comm->aborted() && _done->ready();
    }

    /// The exchange's tag.
    [[nodiscard]] const ExpertTag& tag() const noexcept { return _tag; }

  private:
    friend class NcclExpertComm;
    Exchange(NcclExpertComm* c, const ExpertTag& tag, std::unique_ptr<Event> done, cudaStream_t after,
             bool failed) noexcept
        : _comm(c), _tag(tag), _done(std::move(done)), _after(after), _failed(failed) {}
    void finish() {
      if (_done) _comm->give_back(std::move(_done));
      _comm = nullptr;
    }

    NcclExpertComm* _comm;
    ExpertTag _tag;
    std::unique_ptr<Event> _done;
    cudaStream_t _after;  // AllToAllBuffers::after_stream: wait() orders it after the exchange
    bool _failed;         // started on an aborted communicator: nothing was issued
  };

  /// Borrows `b.comm` (the expert group's communicator; rank, size and device are its) and `b.stream` when
  /// given (else options.stream, else its own). Throws ConfigError (a null communicator, a pipeline stream
  /// equal to the exchanges' stream), NcclError, CudaError, TimeoutError.
  explicit NcclExpertComm(NcclBorrow b, NcclExpertOptions options = {}) : NcclExpertComm(query(b.comm), b, options) {}

  NcclExpertComm(const NcclExpertComm&) = delete;
  NcclExpertComm& operator=(const NcclExpertComm&) = delete;

  /// Stops the watchdog and waits (bounded) for the exchanges still on the stream; the borrowed
  /// communicator is left as it is (aborted only if a failure did so).
  ~NcclExpertComm() {
    _watchdog.stop();
    try {
      DeviceGuard on(_device);
      Event end(Event::ordering);
      end.record(_stream_used);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!end.ready() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    } catch (...) {
      // Destructors never throw.
    }
  }

  // ---- Queries ----------------------------------------------------------------------------------------
  /// This rank in the expert group.
  [[nodiscard]] int rank() const noexcept { return _rank; }
  /// Ranks of the expert group.
  [[nodiscard]] int size() const noexcept { return _size; }
  /// The CUDA device of the communicator.
  [[nodiscard]] int device() const noexcept { return _device; }
  /// The stream the exchanges run on.
  [[nodiscard]] cudaStream_t stream() const noexcept { return _stream_used; }
  /// The pipeline stream the exchanges are ordered with (null: none).
  [[nodiscard]] cudaStream_t pipeline_stream() const noexcept { return _options.pipeline_stream; }
  /// Whether the communicator was aborted (abort(), the watchdog, a timeout, an NCCL error).
  [[nodiscard]] bool aborted() const noexcept { return _aborted.load(std::memory_order_acquire); }
  /// Where the abort started, once aborted.
  [[nodiscard]] std::optional<FailureOrigin> failure() const {
    std::lock_guard lk(_origin_mutex);
    if (!aborted()) return std::nullopt;
    return _origin;
  }
  /// Exchanges started so far.
  [[nodiscard]] long exchanges() const noexcept { return _started; }
  /// Host waits so far (synchronize(), and wait() without an after_stream): none in a CudaDevice step.
  [[nodiscard]] long host_waits() const noexcept { return _host_waits; }

  // ---- ExpertComm -------------------------------------------------------------------------------------
  /// Starts the exchange of `buffers` (device memory on device()) after the work issued so far to
  /// `buffers.after_stream` (a cudaStream_t; null: none) and, with pipeline_stream, after the pipeline's
  /// NCCL work issued so far. Returns at once. Throws ConfigError (count spans of the wrong size, counts
  /// past a buffer, the own segment's counts disagreeing), NcclError (the communicator is then aborted).
  /// On an aborted communicator nothing is issued: the handle's wait throws CommAborted.
  [[nodiscard]] Exchange start_all_to_all(const ExpertTag& tag, const AllToAllBuffers& buffers) {
    check_buffers(tag, buffers);
    ++_started;
    DeviceGuard on(_device);
    std::unique_ptr<Event> done = take_event();
    const auto after = static_cast<cudaStream_t>(buffers.after_stream);
    if (aborted()) return Exchange(this, tag, std::move(done), after, true);
    if (after) wait_on(after);
    if (_options.pipeline_stream) wait_on(_options.pipeline_stream);
    if (_options.timing) {
      _timed.push_back(Timed{tag, std::make_unique<Event>(Event::timing), std::make_unique<Event>(Event::timing)});
      _timed.back().start->record(_stream_used);
    }
    const auto self = static_cast<std::size_t>(_rank);
    std::size_t send_at = 0, recv_at = 0, self_send = 0, self_recv = 0;
    {
      std::unique_lock lk(_nccl_mutex);
      if (aborted() || !_comm) return Exchange(this, tag, std::move(done), after, true);
      ncclResult_t r = ncclGroupStart();
      for (std::size_t p = 0; p < static_cast<std::size_t>(_size); ++p) {
        const std::size_t sc = buffers.send_counts[p], rc = buffers.recv_counts[p];
        if (p == self) {
          self_send = send_at;
          self_recv = recv_at;
        } else {
          if (sc > 0 && r == ncclSuccess)
            r = ncclSend(buffers.send.data() + send_at, sc, ncclUint8, static_cast<int>(p), _comm, _stream_used);
          if (rc > 0 && r == ncclSuccess)
            r = ncclRecv(buffers.recv.data() + recv_at, rc, ncclUint8, static_cast<int>(p), _comm, _stream_used);
        }
        send_at += sc;
        recv_at += rc;
      }
      const ncclResult_t end = ncclGroupEnd();
      if (r == ncclSuccess || r == ncclInProgress) r = end;
      if (r != ncclSuccess && r != ncclInProgress) {
        const std::string what = format_nccl_error(r, "ncclGroupEnd (all-to-all)", __FILE__, __LINE__, _comm);
        lk.unlock();
        abort_with(tag, what);
        throw NcclError(what, static_cast<int>(r));
      }
    }
    // NCCL enqueues a non-blocking group asynchronously: the events below must come after it.
    poll_until_launched("launching an all-to-all", _options.timeout, &tag);
    if (const std::size_t own = buffers.send_counts[self]; own > 0)
      DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(buffers.recv.data() + self_recv, buffers.send.data() + self_send, own,
                                          cudaMemcpyDeviceToDevice, _stream_used));
    done->record(_stream_used);
    if (_options.timing) _timed.back().end->record(_stream_used);
    if (_options.pipeline_stream) DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(_options.pipeline_stream, done->get(), 0));
    _watchdog.watch(_stream_used, "the all-to-all " + describe(tag), _options.timeout);
    return Exchange(this, tag, std::move(done), after, false);
  }

  /// With NcclExpertOptions::timing: the GPU times of the exchanges started since the last call, in ms after
  /// `epoch` (a timing event recorded on this device before them); each must be done (after a synchronize
  /// or the step's end). Throws CudaError for one that is not.
  [[nodiscard]] std::vector<NcclExchangeTime> take_times(const Event& epoch) {
    std::vector<NcclExchangeTime> out;
    out.reserve(_timed.size());
    for (const Timed& t : _timed)
      out.push_back(NcclExchangeTime{t.tag, t.start->elapsed_ms_since(epoch), t.end->elapsed_ms_since(epoch)});
    _timed.clear();
    return out;
  }

  /// Aborts: every later wait of this rank throws CommAborted(origin); the first origin is kept. The
  /// borrowed communicator is aborted (ending the kernels still waiting for a peer) under
  /// NcclFailurePolicy::abort. Other ranks' exchanges with this one stop, and their waits or watchdogs fire.
  void abort(const FailureOrigin& origin) { abort_internal(origin); }

private:
  struct Identity {
    int rank, size, device;
  };
  // The borrowed communicator's rank, size and device.
  static Identity query(ncclComm_t comm) {
    if (!comm)
      throw ConfigError(
          "NcclExpertComm: NcclBorrow::comm is null (borrow the expert group's communicator, e.g. "
          "NcclGrid::communicator(GridDim::ep))");
    Identity id{0, 0, 0};
    DUALPIPE_NCCL_CHECK(ncclCommUserRank(comm, &id.rank));
    DUALPIPE_NCCL_CHECK(ncclCommCount(comm, &id.size));
    DUALPIPE_NCCL_CHECK(ncclCommCuDevice(comm, &id.device));
    return id;
  }

  NcclExpertComm(Identity id, NcclBorrow b, NcclExpertOptions options)
      : _options(options), _rank(id.rank), _size(id.size), _device(id.device),
        _watchdog(id.device, options.watchdog_period, watchdog_hooks()) {
    DeviceGuard on(_device);
    const cudaStream_t given = b.stream ? b.stream : _options.stream;
    if (given) {
      _stream_used = given;
    } else {
      _stream = std::make_unique<Stream>(cudaStreamNonBlocking);
      _stream_used = _stream->get();
    }
    if (_options.pipeline && !_options.pipeline_stream && _options.pipeline->stream() != _stream_used)
      _options.pipeline_stream = _options.pipeline->stream();
    if (_options.pipeline_stream && _options.pipeline_stream == _stream_used)
      throw ConfigError(
          "NcclExpertComm: pipeline_stream is the exchanges' own stream; give the pipeline "
          "communicator's stream and another (or no) stream for the exchanges");
    _fence = std::make_unique<Event>(Event::ordering);
    _comm = b.comm;
    poll_until_launched("borrowing the expert communicator", _options.init_timeout, nullptr);
    _watchdog.start();
  }

  void check_buffers(const ExpertTag& tag, const AllToAllBuffers& b) const {
    const auto n = static_cast<std::size_t>(_size);
    const std::string where = "NcclExpertComm: rank " + std::to_string(_rank) + ", all-to-all " + describe(tag);
    if (b.send_counts.size() != n || b.recv_counts.size() != n)
      throw ConfigError(where + ": the count spans have " + std::to_string(b.send_counts.size()) + " and " +
                        std::to_string(b.recv_counts.size()) + " entries, the expert group " + std::to_string(n) +
                        " ranks (one count per rank)");
    const std::size_t s = std::accumulate(b.send_counts.begin(), b.send_counts.end(), std::size_t{0});
    const std::size_t r = std::accumulate(b.recv_counts.begin(), b.recv_counts.end(), std::size_t{0});
    if (s > b.send.size() || r > b.recv.size())
      throw ConfigError(where + ": the counts add up to " + std::to_string(s) + " bytes to send and " +
                        std::to_string(r) + " to receive, past the buffers' " + std::to_string(b.send.size()) +
                        " and " + std::to_string(b.recv.size()) + " bytes");
    const auto self = static_cast<std::size_t>(_rank);
    if (b.send_counts[self] != b.recv_counts[self])
      throw ConfigError(where + ": this rank's own segment is " + std::to_string(b.send_counts[self]) +
                        " bytes to send but " + std::to_string(b.recv_counts[self]) + " to receive (must be equal)");
  }

  void wait_on(cudaStream_t s) {
    _fence->record(s);
    DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(_stream_used, _fence->get(), 0));
  }

  std::unique_ptr<Event> take_event() {
    std::lock_guard lk(_spare_mutex);
    if (_spare.empty()) return std::make_unique<Event>(Event::ordering);  // grows to the most in flight
    auto e = std::move(_spare.back());
    _spare.pop_back();
    return e;
  }
  void give_back(std::unique_ptr<Event> e) noexcept {
    try {
      std::lock_guard lk(_spare_mutex);
      _spare.push_back(std::move(e));
    } catch (...) {}
  }

  [[noreturn]] void throw_aborted() const {
    std::lock_guard lk(_origin_mutex);
    throw CommAborted(_origin);
  }

  [[nodiscard]] int named_rank() const noexcept { return _options.report_rank >= 0 ? _options.report_rank : _rank; }

  void wait_host(const Event& done, const ExpertTag& tag, std::chrono::milliseconds timeout) {
    ++_host_waits;
    DeviceGuard on(_device);
    const auto deadline = deadline_after(timeout);
    int round = 0;
    for (;;) {
      if (aborted()) throw_aborted();
      if (done.ready()) break;
      if (std::chrono::steady_clock::now() >= deadline) {
        const std::string what = "the all-to-all " + describe(tag) + " was not done within " +
                                 std::to_string(timeout.count()) +
                                 " ms (a peer of the expert group failed or never started it)";
        abort_with(tag, what);
        throw TimeoutError("NCCL expert communicator: rank " + std::to_string(named_rank()) + ": " + what +
                           " (communicator aborted)");
      }
      if (++round < 200) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (aborted()) throw_aborted();
  }

  // Polls ncclCommGetAsyncError until the last non-blocking call has finished. Throws CommAborted,
  // TimeoutError or NcclError (aborting the communicator for the last two).
  void poll_until_launched(const char* what, std::chrono::milliseconds timeout, const ExpertTag* tag) {
    const auto deadline = deadline_after(timeout);
    int round = 0;
    const std::string which = tag ? std::string(what) + " " + describe(*tag) : std::string(what);
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
        const std::string text = format_nccl_error(st, which.c_str(), __FILE__, __LINE__);
        abort_with(tag ? *tag : ExpertTag{}, text, tag != nullptr);
        throw NcclError(text, static_cast<int>(st));
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        const std::string text = which + " did not finish within " + std::to_string(timeout.count()) + " ms";
        abort_with(tag ? *tag : ExpertTag{}, text, tag != nullptr);
        throw TimeoutError("NCCL expert communicator: rank " + std::to_string(named_rank()) + ": " + text +
                           " (communicator aborted)");
      }
      if (++round < 100) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

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
    h.fire = [this](const std::string& what) {
      FailureOrigin o;
      o.rank = named_rank();
      o.op = "all-to-all (watchdog)";
      o.what = "NCCL expert communicator: " + what;
      abort_internal(o);
    };
    return h;
  }

  void abort_with(const ExpertTag& tag, const std::string& what, bool tagged = true) {
    FailureOrigin o;
    o.rank = named_rank();
    if (tagged) {
      o.module = tag.module;
      o.chunk = tag.chunk;
    }
    o.op = "all-to-all";
    o.what = "NCCL expert communicator: " + what;
    abort_internal(o);
  }

  void abort_internal(const FailureOrigin& origin) noexcept {
    {
      std::lock_guard lk(_origin_mutex);
      if (_aborted.load(std::memory_order_relaxed)) return;
      _origin = origin;
      _aborted.store(true, std::memory_order_release);
    }
    // The pipeline first: once the exchange's kernels end below, the step's streams may finish, and its
    // end-of-step barrier must already see the abort.
    if (_options.pipeline) _options.pipeline->abort(origin);
    std::lock_guard lk(_nccl_mutex);
    if (_comm && _options.borrowed_on_failure == NcclFailurePolicy::abort) {
      try {
        DeviceGuard on(_device);
        (void)ncclCommAbort(_comm);  // frees the communicator and ends its pending kernels
      } catch (...) {}
    }
    _comm = nullptr;  // report_only: the owner's to abort or keep; this object never touches it again
  }

  NcclExpertOptions _options;
  int _rank = 0;
  int _size = 1;
  int _device = 0;
  std::unique_ptr<Stream> _stream;      // its own stream, when none was lent
  cudaStream_t _stream_used = nullptr;  // the exchanges' stream
  std::unique_ptr<Event> _fence;        // after_stream's and the pipeline stream's work (owner thread)
  ncclComm_t _comm = nullptr;           // null after an abort; under _nccl_mutex
  mutable std::mutex _nccl_mutex;       // every NCCL call on _comm (all are short: non-blocking mode)
  std::atomic<bool> _aborted{false};
  mutable std::mutex _origin_mutex;
  FailureOrigin _origin;
  long _started = 0;     // owner thread
  long _host_waits = 0;  // owner thread
  struct Timed {
    ExpertTag tag;
    std::unique_ptr<Event> start, end;
  };
  std::vector<Timed> _timed;  // NcclExpertOptions::timing (owner thread)
  std::mutex _spare_mutex;
  std::vector<std::unique_ptr<Event>> _spare;  // completion events to reuse
  detail::NcclWatchdog _watchdog;              // last: built after (and stopped before) what its hooks use
};

static_assert(check_expert_comm<NcclExpertComm>());

}  // namespace dualpipe
