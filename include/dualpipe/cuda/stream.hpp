// dualpipe/cuda/stream.hpp: move-only RAII CUDA streams and events, the non-owning StreamRef, a scoped
// current-device guard, and whether a device is there at all.
//
//   Stream s;                      // a non-blocking stream on the current device
//   Event done;                    // timing disabled: the cheapest kind, for ordering
//   done.record(s);
//   other.wait(done);              // `other` runs what comes next after `done`, without the host waiting
//
// Every call that can fail throws dualpipe::CudaError; destructors never throw.
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <utility>

#include "dualpipe/cuda/error.hpp"

namespace dualpipe {

class Event;

/// Number of CUDA devices; 0 when there is none or no usable driver (never throws).
[[nodiscard]] inline int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

/// Whether at least one CUDA device can be used.
[[nodiscard]] inline bool cuda_device_available() noexcept { return cuda_device_count() > 0; }

/// Why no CUDA device can be used, for a program's message: cudaGetDeviceCount's error (its name and text,
/// e.g. a driver older than the runtime), or that it found none; empty when a device can be used.
[[nodiscard]] inline std::string cuda_unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
  }
  return n > 0 ? std::string() : std::string("cudaGetDeviceCount found no device");
}

/// The current device of the calling thread.
[[nodiscard]] inline int current_device() {
  int d = 0;
  DUALPIPE_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

/// Makes `device` current for a scope and restores the previous device after.
class DeviceGuard {
public:
  /// Switches to `device` (a negative device keeps the current one).
  explicit DeviceGuard(int device) : _previous(current_device()) {
    if (device >= 0 && device != _previous) DUALPIPE_CUDA_CHECK(cudaSetDevice(device));
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() { ignore_cuda_error(cudaSetDevice(_previous)); }

private:
  int _previous;
};

/// A stream someone else owns (or the legacy default stream, null). Cheap to copy.
class StreamRef {
public:
  /// The legacy default stream.
  constexpr StreamRef() noexcept = default;
  /// `s`, not owned.
  constexpr StreamRef(cudaStream_t s) noexcept : _stream(s) {}  // NOLINT: implicit on purpose, like cudaStream_t

  /// The raw stream.
  [[nodiscard]] constexpr cudaStream_t get() const noexcept { return _stream; }
  /// Implicit use as a cudaStream_t.
  constexpr operator cudaStream_t() const noexcept { return _stream; }  // NOLINT
  /// Work issued to this stream from now on runs after `e`'s recorded work. Throws CudaError.
  void wait(const Event& e) const;
  /// Blocks the host until everything issued so far is done. Throws CudaError.
  void synchronize() const { DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(_stream)); }
  /// Whether everything issued so far is done. Throws CudaError for an error other than "not ready".
  [[nodiscard]] bool ready() const {
    const cudaError_t e = cudaStreamQuery(_stream);
    if (e == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    DUALPIPE_CUDA_CHECK(e);
    return true;
  }

  friend constexpr bool operator==(StreamRef a, StreamRef b) noexcept { return a._stream == b._stream; }

private:
  cudaStream_t _stream = nullptr;
};

/// An owned CUDA stream, created on the device current at construction. Move-only; a moved-from Stream
/// holds nothing and must not be used.
class Stream {
public:
  /// A new stream; `flags` cudaStreamNonBlocking (default: no implicit ordering with the legacy default
  /// stream) or cudaStreamDefault; `priority` as cudaStreamCreateWithPriority (lower is more urgent).
  explicit Stream(unsigned flags = cudaStreamNonBlocking, int priority = 0) {
    DUALPIPE_CUDA_CHECK(cudaStreamCreateWithPriority(&_stream, flags, priority));
  }
  Stream(Stream&& o) noexcept : _stream(std::exchange(o._stream, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept {
    if (this != &o) {
      destroy();
      _stream = std::exchange(o._stream, nullptr);
    }
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  /// Destroys the stream; work already issued still completes.
  ~Stream() { destroy(); }

  /// The raw stream.
  [[nodiscard]] cudaStream_t get() const noexcept { return _stream; }
  /// A non-owning reference.
  [[nodiscard]] StreamRef ref() const noexcept { return StreamRef(_stream); }
  operator StreamRef() const noexcept { return ref(); }  // NOLINT: implicit on purpose
  /// See StreamRef::wait.
  void wait(const Event& e) const { ref().wait(e); }
  /// See StreamRef::synchronize.
  void synchronize() const { ref().synchronize(); }
  /// See StreamRef::ready.
  [[nodiscard]] bool ready() const { return ref().ready(); }

private:
  void destroy() noexcept {
    if (_stream) ignore_cuda_error(cudaStreamDestroy(_stream));
    _stream = nullptr;
  }
  cudaStream_t _stream = nullptr;
};

/// An owned CUDA event, created on the device current at construction. Move-only.
class Event {
public:
  /// Flags for an event that only orders work (no timing): the cheapest to record and wait on.
  static constexpr unsigned ordering = cudaEventDisableTiming;
  /// Flags for an event that can time work (cudaEventElapsedTime).
  static constexpr unsigned timing = cudaEventDefault;

  /// A new event with `flags` (ordering by default).
  explicit Event(unsigned flags = ordering) { DUALPIPE_CUDA_CHECK(cudaEventCreateWithFlags(&_event, flags)); }
  Event(Event&& o) noexcept : _event(std::exchange(o._event, nullptr)) {}
  Event& operator=(Event&& o) noexcept {
    if (this != &o) {
      destroy();
      _event = std::exchange(o._event, nullptr);
    }
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() { destroy(); }

  /// The raw event.
  [[nodiscard]] cudaEvent_t get() const noexcept { return _event; }
  /// Captures the work issued to `s` so far. Throws CudaError.
  void record(StreamRef s) { DUALPIPE_CUDA_CHECK(cudaEventRecord(_event, s.get())); }
  /// Whether the recorded work is done (true for an event never recorded). Throws CudaError for an error
  /// other than "not ready".
  [[nodiscard]] bool ready() const {
    const cudaError_t e = cudaEventQuery(_event);
    if (e == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    DUALPIPE_CUDA_CHECK(e);
    return true;
  }
  /// Blocks the host until the recorded work is done. Throws CudaError.
  void synchronize() const { DUALPIPE_CUDA_CHECK(cudaEventSynchronize(_event)); }
  /// Milliseconds from `start` to this event (both timing events, both done). Throws CudaError.
  [[nodiscard]] float elapsed_ms_since(const Event& start) const {
    float ms = 0;
    DUALPIPE_CUDA_CHECK(cudaEventElapsedTime(&ms, start._event, _event));
    return ms;
  }

private:
  void destroy() noexcept {
    if (_event) ignore_cuda_error(cudaEventDestroy(_event));
    _event = nullptr;
  }
  cudaEvent_t _event = nullptr;
};

inline void StreamRef::wait(const Event& e) const { DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(_stream, e.get(), 0)); }

}  // namespace dualpipe
