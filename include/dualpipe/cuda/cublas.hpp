// dualpipe/cuda/cublas.hpp: cuBLAS status checks (as dualpipe::CudaError, library "cuBLAS") and a
// move-only RAII cuBLAS handle. Needs CUDA::cublas at link time; not part of dualpipe/cuda.hpp.
//
//   DUALPIPE_CUBLAS_CHECK(cublasGemmEx(h, ...));
//   "cuBLAS error 7 (CUBLAS_STATUS_INVALID_VALUE): an unsupported value or parameter was passed to the
//    function in `cublasGemmEx(h, ...)` at mlp.cpp:88"
#pragma once

#include <cublas_v2.h>

#include <cstddef>
#include <utility>

#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/stream.hpp"

namespace dualpipe {

/// Throws the CudaError for cuBLAS status `s` (which must not be CUBLAS_STATUS_SUCCESS).
[[noreturn]] inline void throw_cublas_error(cublasStatus_t s, const char* call, const char* file, int line) {
  const char* name = cublasGetStatusName(s);
  const char* text = cublasGetStatusString(s);
  throw CudaError(detail::format_library_error("cuBLAS", static_cast<int>(s), name ? name : "", text ? text : "",
                                               call ? call : "", file, line),
                  static_cast<int>(s), "cuBLAS");
}

/// Throws CudaError unless `s` is CUBLAS_STATUS_SUCCESS.
inline void check_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_cublas_error(s, call, file, line);
}

/// A cuBLAS handle bound to one stream, with its own workspace so that it can be captured into a CUDA graph
/// and used next to handles of other streams without sharing scratch memory. Move-only. Destroy it before
/// its stream (cuBLAS keeps the stream handle until then).
class CublasHandle {
public:
  /// A handle on the current device whose calls go to `stream`; `workspace_bytes` of device memory (cudaMalloc)
  /// are its workspace (0: cuBLAS's own).
  explicit CublasHandle(StreamRef stream, std::size_t workspace_bytes = std::size_t(4) << 20) {
    check_cublas(cublasCreate(&_handle), "cublasCreate", __FILE__, __LINE__);
    try {
      check_cublas(cublasSetStream(_handle, stream.get()), "cublasSetStream", __FILE__, __LINE__);
      if (workspace_bytes > 0) {
        DUALPIPE_CUDA_CHECK(cudaMalloc(&_workspace, workspace_bytes));
        check_cublas(cublasSetWorkspace(_handle, _workspace, workspace_bytes), "cublasSetWorkspace", __FILE__,
                     __LINE__);
      }
    } catch (...) {
      destroy();
      throw;
    }
    _stream = stream.get();
  }
  CublasHandle(CublasHandle&& o) noexcept
      : _handle(std::exchange(o._handle, nullptr)), _workspace(std::exchange(o._workspace, nullptr)),
        _stream(o._stream) {}
  CublasHandle& operator=(CublasHandle&& o) noexcept {
    if (this != &o) {
      destroy();
      _handle = std::exchange(o._handle, nullptr);
      _workspace = std::exchange(o._workspace, nullptr);
      _stream = o._stream;
    }
    return *this;
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  ~CublasHandle() { destroy(); }

  /// The raw handle.
  [[nodiscard]] cublasHandle_t get() const noexcept { return _handle; }
  /// The stream its calls go to.
  [[nodiscard]] cudaStream_t stream() const noexcept { return _stream; }

private:
  void destroy() noexcept {
    if (_handle) (void)cublasDestroy(_handle);  // waits for the device
    if (_workspace) ignore_cuda_error(cudaFree(_workspace));
    _handle = nullptr;
    _workspace = nullptr;
  }

  cublasHandle_t _handle = nullptr;
  void* _workspace = nullptr;
  cudaStream_t _stream = nullptr;
};

}  // namespace dualpipe

/// Throws dualpipe::CudaError (library "cuBLAS": file, line, the call and cuBLAS's text) unless `expr`
/// returns CUBLAS_STATUS_SUCCESS.
#define DUALPIPE_CUBLAS_CHECK(expr) ::dualpipe::check_cublas((expr), #expr, __FILE__, __LINE__)
