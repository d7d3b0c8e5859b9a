// dualpipe/cuda/memory.hpp: device memory through an allocator policy, and pinned host memory.
//
// A DeviceAllocator hands out device memory in stream order: allocate(bytes, stream) / deallocate(p, bytes,
// stream). The default, AsyncAllocator, is cudaMallocAsync / cudaFreeAsync (the device's default memory
// pool); SyncAllocator is cudaMalloc / cudaFree. A framework passes its own (its caching allocator) by
// writing a type with the same two members:
//
//   struct TorchAllocator {
//     void* allocate(std::size_t n, dualpipe::StreamRef s) { return c10::cuda::CUDACachingAllocator::raw_alloc_with_stream(n, s); }
//     void deallocate(void* p, std::size_t, dualpipe::StreamRef) noexcept { c10::cuda::CUDACachingAllocator::raw_delete(p); }
//   };
//   dualpipe::BasicCudaDevice<TorchAllocator> device(...);
#pragma once

#include <cuda_runtime_api.h>

#include <concepts>
#include <cstddef>
#include <utility>

#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/stream.hpp"

namespace dualpipe {

/// Device memory in stream order. `allocate(n, s)` returns memory usable by work issued to `s` from now on
/// (throws on failure; n > 0); `deallocate(p, n, s)` gives it back once the work issued to `s` so far is
/// done (never throws).
template <class A>
concept DeviceAllocator = requires(A& a, std::size_t n, void* p, StreamRef s) {
  { a.allocate(n, s) } -> std::same_as<void*>;
  a.deallocate(p, n, s);
};

/// Compile-time check with messages in plain words: `static_assert(check_device_allocator<MyAlloc>())`.
template <class A>
consteval bool check_device_allocator() {
  static_assert(
      requires(A & a, std::size_t n, StreamRef s) {
        { a.allocate(n, s) } -> std::same_as<void*>;
      },
      "DeviceAllocator needs: void* allocate(std::size_t bytes, dualpipe::StreamRef stream)");
  static_assert(
      requires(A & a, void* p, std::size_t n, StreamRef s) { a.deallocate(p, n, s); },
      "DeviceAllocator needs: void deallocate(void* p, std::size_t bytes, dualpipe::StreamRef stream) noexcept");
  return DeviceAllocator<A>;
}

/// cudaMallocAsync / cudaFreeAsync from the current device's default memory pool.
struct AsyncAllocator {
  /// Throws CudaError.
  [[nodiscard]] void* allocate(std::size_t bytes, StreamRef s) {
    void* p = nullptr;
    DUALPIPE_CUDA_CHECK(cudaMallocAsync(&p, bytes, s.get()));
    return p;
  }
  void deallocate(void* p, std::size_t /*bytes*/, StreamRef s) noexcept {
    ignore_cuda_error(cudaFreeAsync(p, s.get()));
  }
};

/// cudaMalloc / cudaFree (the stream is not used: cudaFree waits for the whole device).
struct SyncAllocator {
  /// Throws CudaError.
  [[nodiscard]] void* allocate(std::size_t bytes, StreamRef /*s*/) {
    void* p = nullptr;
    DUALPIPE_CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
  }
  void deallocate(void* p, std::size_t /*bytes*/, StreamRef /*s*/) noexcept { ignore_cuda_error(cudaFree(p)); }
};

static_assert(check_device_allocator<AsyncAllocator>());
static_assert(check_device_allocator<SyncAllocator>());

/// `bytes` of device memory from allocator `A`, given back (in the order of the stream it was allocated on)
/// when destroyed. Move-only.
template <DeviceAllocator A = AsyncAllocator>
class DeviceBuffer {
public:
  /// Holds nothing.
  DeviceBuffer() = default;
  /// `bytes` from `alloc`, usable by work issued to `stream` from now on. Throws what the allocator throws.
  DeviceBuffer(std::size_t bytes, StreamRef stream, A alloc = A()) : _alloc(std::move(alloc)), _stream(stream) {
    if (bytes > 0) _data = _alloc.allocate(bytes, stream);
    _bytes = bytes;
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : _alloc(std::move(o._alloc)), _data(std::exchange(o._data, nullptr)), _bytes(std::exchange(o._bytes, 0)),
        _stream(o._stream) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      _alloc = std::move(o._alloc);
      _data = std::exchange(o._data, nullptr);
      _bytes = std::exchange(o._bytes, 0);
      _stream = o._stream;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }

  /// Gives the memory back now (in the order of its stream).
  void reset() noexcept {
    if (_data) _alloc.deallocate(_data, _bytes, _stream);
    _data = nullptr;
    _bytes = 0;
  }
  /// The memory (null when empty).
  [[nodiscard]] void* data() const noexcept { return _data; }
  /// The memory as T*.
  template <class T>
  [[nodiscard]] T* as() const noexcept {
    return static_cast<T*>(_data);
  }
  /// Its size in bytes.
  [[nodiscard]] std::size_t size() const noexcept { return _bytes; }
  /// The stream it was allocated on (and will be given back on).
  [[nodiscard]] StreamRef stream() const noexcept { return _stream; }

private:
  [[no_unique_address]] A _alloc{};
  void* _data = nullptr;
  std::size_t _bytes = 0;
  StreamRef _stream;
};

/// Pinned (page-locked) host memory from cudaMallocHost: device copies to and from it are asynchronous,
/// and the device can read and write it directly. Move-only.
class PinnedBuffer {
public:
  /// Holds nothing.
  PinnedBuffer() = default;
  /// `bytes` of pinned memory. Throws CudaError.
  explicit PinnedBuffer(std::size_t bytes) : _bytes(bytes) {
    if (bytes > 0) DUALPIPE_CUDA_CHECK(cudaMallocHost(&_data, bytes));
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept
      : _data(std::exchange(o._data, nullptr)), _bytes(std::exchange(o._bytes, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      _data = std::exchange(o._data, nullptr);
      _bytes = std::exchange(o._bytes, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { reset(); }

  /// Frees the memory (cudaFreeHost waits for the device to stop using it).
  void reset() noexcept {
    if (_data) ignore_cuda_error(cudaFreeHost(_data));
    _data = nullptr;
    _bytes = 0;
  }
  /// The memory (null when empty).
  [[nodiscard]] void* data() const noexcept { return _data; }
  /// The memory as T*.
  template <class T>
  [[nodiscard]] T* as() const noexcept {
    return static_cast<T*>(_data);
  }
  /// Its size in bytes.
  [[nodiscard]] std::size_t size() const noexcept { return _bytes; }

private:
  void* _data = nullptr;
  std::size_t _bytes = 0;
};

}  // namespace dualpipe
