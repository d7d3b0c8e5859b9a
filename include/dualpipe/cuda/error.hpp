// dualpipe/cuda/error.hpp: CudaError and the check macros for CUDA runtime calls.
//
//   DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(...));   // throws dualpipe::CudaError on failure
//   my_kernel<<<g, b, 0, s>>>(...);
//   DUALPIPE_CUDA_CHECK_LAST();                  // a launch error, as a CudaError
//
// The message names the library, the error's name and number, the library's own text, the call as written
// and where it was made:
//   "CUDA error 1 (cudaErrorInvalidValue): invalid argument in `cudaMemsetAsync(p, 0, n, s)` at f.cpp:42"
// cuBLAS (dualpipe/cuda/cublas.hpp) reports through the same CudaError; NCCL through NcclError
// (dualpipe/nccl/error.hpp).
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "dualpipe/core/error.hpp"

namespace dualpipe {

/// A failed call of the CUDA runtime or of a CUDA library (cuBLAS): the status code, the library's name and
/// a message with the library's own error text, the call and its file and line.
class CudaError : public Error {
public:
  /// `what` is the full message; `code` the library's status code; `library` "CUDA" or "cuBLAS".
  CudaError(const std::string& what, int code, std::string library)
      : Error(what), _code(code), _library(std::move(library)) {}
  /// The library's status code (a cudaError_t, or a cublasStatus_t for cuBLAS).
  [[nodiscard]] int code() const noexcept { return _code; }
  /// "CUDA" or "cuBLAS".
  [[nodiscard]] const std::string& library() const noexcept { return _library; }

private:
  int _code;
  std::string _library;
};

namespace detail {
/// "<library> error <code> (<name>): <text> in `<call>` at <file>:<line>" (no part is dropped when empty
/// except the call and the place).
[[nodiscard]] inline std::string format_library_error(std::string_view library, int code, std::string_view name,
                                                      std::string_view text, std::string_view call, const char* file,
                                                      int line) {
  std::string s;
  s.reserve(96 + call.size() + text.size());
  s.append(library).append(" error ").append(std::to_string(code));
  s.append(" (").append(name.empty() ? std::string_view("unknown") : name).append("): ");
  s.append(text.empty() ? std::string_view("no description") : text);
  if (!call.empty()) s.append(" in `").append(call).append("`");
  if (file && *file) s.append(" at ").append(file).append(":").append(std::to_string(line));
  return s;
}
}  // namespace detail

/// Throws the CudaError for `e` (which must not be cudaSuccess). Clears the runtime's last-error state first,
/// so that a later cudaGetLastError() does not report this error again.
[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* call, const char* file, int line) {
  (void)cudaGetLastError();
  const char* name = cudaGetErrorName(e);
  const char* text = cudaGetErrorString(e);
  throw CudaError(detail::format_library_error("CUDA", static_cast<int>(e), name ? name : "", text ? text : "",
                                               call ? call : "", file, line),
                  static_cast<int>(e), "CUDA");
}

/// Throws CudaError unless `e` is cudaSuccess.
inline void check_cuda(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess) throw_cuda_error(e, call, file, line);
}

/// For destructors and cleanup paths that must not throw: forgets the error (and the runtime's last error).
inline void ignore_cuda_error(cudaError_t e) noexcept {
  if (e != cudaSuccess) (void)cudaGetLastError();
}

}  // namespace dualpipe

/// Throws dualpipe::CudaError (file, line, the call and CUDA's text) unless `expr` returns cudaSuccess.
#define DUALPIPE_CUDA_CHECK(expr) ::dualpipe::check_cuda((expr), #expr, __FILE__, __LINE__)
/// Throws dualpipe::CudaError for the last launch error (after a kernel launch).
#define DUALPIPE_CUDA_CHECK_LAST() ::dualpipe::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
