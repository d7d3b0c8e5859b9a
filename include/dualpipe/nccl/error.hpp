// dualpipe/nccl/error.hpp: NcclError and the check macro for NCCL calls.
//
//   DUALPIPE_NCCL_CHECK(ncclGroupEnd());   // throws dualpipe::NcclError unless ncclSuccess or ncclInProgress
//   "NCCL error 5 (ncclInvalidUsage): invalid usage (run with NCCL_DEBUG=WARN for details); last error:
//    ... in `ncclGroupEnd()` at nccl_communicator.hpp:210"
// ncclInProgress is not an error: a non-blocking communicator's calls return it while they are still
// running (the caller polls ncclCommGetAsyncError).
#pragma once

#include <nccl.h>

#include <string>

#include "dualpipe/core/error.hpp"
#include "dualpipe/cuda/error.hpp"

namespace dualpipe {

/// A failed NCCL call: its ncclResult_t and a message with NCCL's own text, the call and where it was made.
class NcclError : public Error {
public:
  /// `what` is the full message, `code` the ncclResult_t.
  NcclError(const std::string& what, int code) : Error(what), _code(code) {}
  /// The ncclResult_t.
  [[nodiscard]] int code() const noexcept { return _code; }

private:
  int _code;
};

/// The name of an ncclResult_t ("ncclInvalidUsage"), "ncclResult <n>" for one this header does not know.
[[nodiscard]] inline std::string nccl_result_name(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "ncclSuccess";
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError";
    case ncclSystemError: return "ncclSystemError";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError";
    case ncclInProgress: return "ncclInProgress";
    default: return "ncclResult " + std::to_string(static_cast<int>(r));
  }
}

/// The message of an NcclError: NCCL's text for `r`, then ncclGetLastError(comm) when it says more.
[[nodiscard]] inline std::string format_nccl_error(ncclResult_t r, const char* call, const char* file, int line,
                                                   ncclComm_t comm = nullptr) {
  const char* text = ncclGetErrorString(r);
  std::string t = text ? text : "";
  const char* last = ncclGetLastError(comm);
  if (last && *last) t.append("; last error: ").append(last);
  return detail::format_library_error("NCCL", static_cast<int>(r), nccl_result_name(r), t, call ? call : "", file,
                                      line);
}

/// Throws NcclError unless `r` is ncclSuccess or ncclInProgress; returns `r`.
inline ncclResult_t check_nccl(ncclResult_t r, const char* call, const char* file, int line,
                               ncclComm_t comm = nullptr) {
  if (r != ncclSuccess && r != ncclInProgress)
    throw NcclError(format_nccl_error(r, call, file, line, comm), static_cast<int>(r));
  return r;
}

}  // namespace dualpipe

/// Throws dualpipe::NcclError (file, line, the call and NCCL's text) unless `expr` returns ncclSuccess or
/// ncclInProgress; evaluates to the ncclResult_t.
#define DUALPIPE_NCCL_CHECK(expr) ::dualpipe::check_nccl((expr), #expr, __FILE__, __LINE__)
