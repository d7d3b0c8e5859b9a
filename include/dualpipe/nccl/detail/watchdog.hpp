// dualpipe/nccl/detail/watchdog.hpp: NcclCommunicator's watchdog (nccl/communicator.hpp), the thread that
// turns a hang into an error. Every group the communicator waits on is handed to it with an event recorded
// after the group on the communication stream; every `period` it gives the events of finished groups back
// for reuse, and fires (its owner aborts the communicator, which also ends the kernels still waiting for a
// peer) when the oldest group left is not done within the timeout its wait was given, when the stream
// failed, or when NCCL reports an asynchronous error.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/comm/detail/mailbox.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/stream.hpp"

namespace dualpipe::detail {

/// What the watchdog asks of its owner, from its own thread.
struct NcclWatchdogHooks {
  std::function<bool()> aborted;                            ///< Whether the owner is aborted (it stops looking).
  std::function<std::optional<std::string>()> async_error;  ///< NCCL's asynchronous error, if there is one.
  std::function<void(const std::string& what)> fire;        ///< Abort the owner, saying `what` was seen.
};

/// The watchdog of one NcclCommunicator (see the file comment). The owner calls start() once it is ready,
/// watch() after each group it waited on (its thread), and stop() before it tears down what the hooks use.
class NcclWatchdog {
public:
  /// Watches on CUDA device `device`, looking every `period`.
  NcclWatchdog(int device, std::chrono::milliseconds period, NcclWatchdogHooks hooks)
      : _device(device), _period(period), _hooks(std::move(hooks)) {}
  NcclWatchdog(const NcclWatchdog&) = delete;
  NcclWatchdog& operator=(const NcclWatchdog&) = delete;
  ~NcclWatchdog() { stop(); }

  /// Starts the thread.
  void start() {
    _thread = std::thread([this] { run(); });
  }

  /// Stops the thread and waits for it (a look in progress ends first). Idempotent.
  void stop() noexcept {
    {
      std::lock_guard lk(_mutex);
      _stop = true;
    }
    _cv.notify_all();
    if (_thread.joinable()) _thread.join();
  }

  /// Records an event after the group just issued to `stream` (the transfers `ops`) and watches it: late
  /// after `timeout`. Nothing to watch while the stream is being captured into a graph.
  void watch(cudaStream_t stream, const std::vector<PostedOp>& ops, std::chrono::milliseconds timeout) {
    add(stream, &ops, {}, timeout);
  }

  /// The same for work that `label` names in messages ("the all-to-all (module 0, chunk 3, ...)").
  void watch(cudaStream_t stream, std::string label, std::chrono::milliseconds timeout) {
    add(stream, nullptr, std::move(label), timeout);
  }

  /// Groups still watched.
  [[nodiscard]] std::size_t in_flight() const {
    std::lock_guard lk(_mutex);
    return _flights.size();
  }

private:
  void add(cudaStream_t stream, const std::vector<PostedOp>* ops, std::string label,
           std::chrono::milliseconds timeout) {
    DeviceGuard on(_device);  // the event is made and recorded on the stream's device
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    DUALPIPE_CUDA_CHECK(cudaStreamIsCapturing(stream, &cs));
    if (cs != cudaStreamCaptureStatusNone) return;
    std::unique_ptr<Event> ev;
    std::vector<PostedOp> what;
    {
      std::lock_guard lk(_mutex);
      if (!_spare.empty()) {
        ev = std::move(_spare.back());
        _spare.pop_back();
      }
      if (!_spare_ops.empty()) {
        what = std::move(_spare_ops.back());
        _spare_ops.pop_back();
      }
    }
    if (!ev) ev = std::make_unique<Event>(Event::ordering);  // grows to the most groups in flight, then stops
    ev->record(stream);
    if (ops) what.assign(ops->begin(), ops->end());
    else what.clear();
    std::lock_guard lk(_mutex);
    _flights.push_back(Flight{std::move(ev), deadline_after(timeout), std::move(what),
                              static_cast<long>(timeout.count()), std::move(label)});
  }

  struct Flight {
    std::unique_ptr<Event> done;
    std::chrono::steady_clock::time_point deadline;
    std::vector<PostedOp> ops;
    long timeout_ms;
    std::string label;  // names the work in messages instead of `ops`, when set
  };

  // "send to rank 1 (module 0, chunk 3, activation) 4096 bytes, ..." (the first few).
  static std::string describe_ops(const std::vector<PostedOp>& ops) {
    std::string out;
    const std::size_t shown = std::min<std::size_t>(ops.size(), 4);
    for (std::size_t i = 0; i < shown; ++i) {
      out += (i ? ", " : "");
      out += describe(ops[i]);
    }
    if (shown < ops.size()) out += ", ...";
    return out;
  }

  void run() {
    try {
      DUALPIPE_CUDA_CHECK(cudaSetDevice(_device));
    } catch (...) {
      return;
    }
    std::unique_lock lk(_mutex);
    while (!_stop) {
      _cv.wait_for(lk, _period, [&] { return _stop; });
      if (_stop || _hooks.aborted()) break;
      // Groups done since the last look go back to the spare events; the oldest one left must be in time.
      std::optional<std::string> late;
      while (!_flights.empty()) {
        Flight& f = _flights.front();
        bool ready = false;
        try {
          ready = f.done->ready();
        } catch (const std::exception& e) {
          late = std::string("a CUDA error on the communication stream: ") + e.what();
          break;
        }
        if (ready) {
          _spare.push_back(std::move(f.done));
          _spare_ops.push_back(std::move(f.ops));
          _flights.pop_front();
          continue;
        }
        if (std::chrono::steady_clock::now() > f.deadline)
          late = (f.label.empty()
                      ? "a group of " + std::to_string(f.ops.size()) + " transfers (" + describe_ops(f.ops) + ")"
                      : f.label) +
                 " was not done within " + std::to_string(f.timeout_ms) +
                 " ms (a peer rank failed or never posted the matching operations)";
        break;
      }
      lk.unlock();
      std::optional<std::string> error = late;
      if (!error) error = _hooks.async_error();
      if (error) _hooks.fire(*error);
      lk.lock();
    }
  }

  int _device;
  std::chrono::milliseconds _period;
  NcclWatchdogHooks _hooks;
  mutable std::mutex _mutex;  // _flights, _spare, _spare_ops, _stop
  std::condition_variable _cv;
  std::deque<Flight> _flights;
  std::vector<std::unique_ptr<Event>> _spare;
  std::vector<std::vector<PostedOp>> _spare_ops;
  bool _stop = false;
  std::thread _thread;
};

}  // namespace dualpipe::detail
