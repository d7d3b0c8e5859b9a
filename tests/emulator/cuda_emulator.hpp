// tests/emulator/cuda_emulator.hpp: a host emulation of the parts of the CUDA runtime and NCCL that
// dualpipe uses, for testing the CUDA device policy and the communicators where there is no GPU.
//
// The emulator defines the CUDA runtime functions (cuda_runtime.cpp) and the NCCL functions (nccl.cpp)
// themselves, against the toolkit's own headers (so every signature is checked by the compiler), and a
// test program links it instead of libcudart and libnccl. It follows CUDA's documented semantics where
// dualpipe depends on them, and is strict where CUDA would fail or be undefined:
//   - a stream is a worker thread running its operations in order; cudaStreamWaitEvent waits for the
//     event's most recent record at the time of the call; an event never recorded is complete;
//   - ordering is checked, not only exercised: every operation carries a vector clock (its stream, the
//     events it waits for, what the host saw finish), every access to device memory (copies, memsets,
//     NCCL buffers, the accesses emulated kernels declare) is checked against the earlier conflicting
//     ones, and an access not ordered after them is reported as a race, whatever the timing (a graph's
//     nodes too, when it is launched);
//   - the legacy default stream (0) orders with blocking streams only, never with cudaStreamNonBlocking
//     ones, so a host cudaMemcpy does not wait for them (as on a GPU);
//   - device memory (cudaMalloc, cudaMallocAsync) is host memory filled with 0xff bytes (NaN doubles), in
//     a registry: copies of the wrong kind, kernels given host pointers, and frees of unknown pointers fail;
//   - stream capture: operations on a capturing stream become graph nodes; other streams join by waiting
//     on an event recorded in the capture; waiting on an event recorded outside the capture, querying or
//     synchronising a capturing stream, or ending a capture with an unjoined stream fail as on a GPU;
//   - NCCL: one communicator per rank thread; a group is one stream operation that ends once every send of
//     it was received and every receive filled (sends and receives are matched per peer in order, as NCCL
//     does), so groups that a GPU could not run together deadlock here too, until an abort ends them;
//     NcclKernelLimit bounds the NCCL kernels running at once per device (1: a GPU that holds one);
//   - it has DUALPIPE_EMULATED_DEVICES devices (default 8, as a node of 8 GPUs);
//   - every operation can first sleep a random while (DUALPIPE_EMULATOR_JITTER_US, default 50), so that a
//     missing wait between streams shows as wrong data, or as a data race under ThreadSanitizer;
//   - a host wait that lasts over DUALPIPE_EMULATOR_HANG_S seconds (default 120) prints what is stuck and
//     ends the process, so a test never hangs.
// It is a test double: it checks ordering, matching, capture structure and error paths, not GPU speed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

struct ncclComm;  // nccl.h's communicator (ncclComm_t)

namespace cuda_emulator {

/// A range of memory an operation reads or writes.
struct Access {
  const void* data;
  std::size_t bytes;
  bool write;
};

/// Issues `work` on `stream` in stream order (a graph node while the stream is capturing); `name` appears
/// in reports. The work runs on the stream's worker thread with `stream`'s device current. `accesses` are
/// checked against the earlier accesses to the same device memory: each must be ordered after the ones it
/// conflicts with (by stream order, events or host synchronisation), else a race is reported.
cudaError_t launch(cudaStream_t stream, std::function<void()> work, const char* name,
                   std::vector<Access> accesses = {});

/// The races reported so far (each also printed on stderr, and failing every later runtime call with
/// cudaErrorLaunchFailure); taking them clears that sticky error, for the emulator's own tests.
[[nodiscard]] std::vector<std::string> take_races();

/// While one exists, races are only collected (not printed, not sticky): for tests that show a race is
/// found when an ordering call is left out. Not nestable.
class RaceProbe {
public:
  RaceProbe();
  ~RaceProbe();
  RaceProbe(const RaceProbe&) = delete;
  RaceProbe& operator=(const RaceProbe&) = delete;
  /// The races collected so far.
  [[nodiscard]] std::vector<std::string> take();
};

/// Whether [p, p + bytes) lies inside one allocation of device memory (on `device`, or any when -1).
[[nodiscard]] bool is_device_memory(const void* p, std::size_t bytes, int device = -1);

/// For emulated kernels: reports a device fault (sticky, as an illegal address on a GPU) unless
/// [p, p + bytes) is device memory of the device of the running stream. Returns whether it is.
bool require_device_memory(const void* p, std::size_t bytes, const char* what);

/// The device of `stream` (the current device for the legacy stream).
[[nodiscard]] int stream_device(cudaStream_t stream);

/// Records a sticky device fault: every later runtime call returns cudaErrorIllegalAddress.
void device_fault(const std::string& what);

/// Ends the process with a report when a host wait lasted over the hang limit.
[[noreturn]] void hang(const std::string& what);

/// The hang limit in milliseconds.
[[nodiscard]] long hang_limit_ms();

/// Sleeps a random while, up to the jitter limit (called before every stream operation).
void jitter();

/// bf16 (the top 16 bits of an fp32, as __nv_bfloat16) to fp32.
[[nodiscard]] inline float bf16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
/// fp32 to bf16, rounded to nearest even (NaN stays NaN), as __float2bfloat16.
[[nodiscard]] inline std::uint16_t float_to_bf16(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

/// Counters, for tests of the emulator itself.
struct Counters {
  long operations = 0;   ///< stream operations run
  long event_waits = 0;  ///< cudaStreamWaitEvent calls that waited for something
  long graph_launches = 0;
};
[[nodiscard]] Counters counters();

/// While one exists, at most `n` NCCL kernels (a group's sends and receives, an all-reduce) run at once on
/// each device; the others wait, once their stream reaches them, until one ends (a GPU whose SMs a resident
/// NCCL kernel fills). Kernels of two communicators that wait for each other across devices then deadlock,
/// as they can on a GPU, until an abort ends one. Defined with the NCCL half (nccl.cpp). Not nestable.
class NcclKernelLimit {
public:
  explicit NcclKernelLimit(int n);
  ~NcclKernelLimit();
  NcclKernelLimit(const NcclKernelLimit&) = delete;
  NcclKernelLimit& operator=(const NcclKernelLimit&) = delete;
};

/// Makes every later send/receive group of `comm` (this rank's communicator) last at least `us`
/// microseconds once its peers matched it, in stream order, as a transfer over a link would: for programs
/// that show communication overlapping compute on the emulated GPU timeline. 0: no cost (the default).
void nccl_kernel_time(ncclComm* comm, long us);

/// NCCL communicators created so far (ncclCommInitRank*, and each new one of ncclCommSplit), so that a test
/// can show the library made none behind its user's back. Defined with the NCCL half (nccl.cpp).
[[nodiscard]] long nccl_communicators_created();

}  // namespace cuda_emulator
