// dualpipe/nccl/detail/finalize.hpp: ending an owned NCCL communicator, shared by NcclCommunicator and NcclComm.
#pragma once

#include <nccl.h>

#include <chrono>
#include <thread>

namespace dualpipe::detail {

/// Finalises and destroys `comm`, waiting up to 10 s for a non-blocking finalise; aborts it instead when the
/// finalise fails or does not finish (a peer that is gone), so that this never hangs and never throws.
inline void finalize_or_abort(ncclComm_t comm) noexcept {
  ncclResult_t st = ncclCommFinalize(comm);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (st == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (ncclCommGetAsyncError(comm, &st) != ncclSuccess) break;
  }
  if (st == ncclSuccess) (void)ncclCommDestroy(comm);
  else (void)ncclCommAbort(comm);
}

}  // namespace dualpipe::detail
