// NcclCommunicator on one GPU: one rank sending to itself, the barrier, and the watchdog turning a receive
// that never gets its send into an error instead of a hang.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "dualpipe/nccl.hpp"
#include "gpu_test_kernels.hpp"

using namespace dualpipe;
using namespace std::chrono_literals;

TEST_CASE("Gpu.Nccl.SelfSend" * doctest::timeout(120)) {
  NcclCommunicator comm(0, 1, make_unique_id(), 0);
  CHECK(comm.size() == 1);
  const std::size_t n = 1 << 16;
  DeviceBuffer<SyncAllocator> src(n * 8, StreamRef()), dst(n * 8, StreamRef());
  gputest::iota(src.as<double>(), n, 3.0, comm.stream());
  DUALPIPE_CUDA_CHECK(cudaMemsetAsync(dst.data(), 0, n * 8, comm.stream()));
  comm.post_send(0, MessageTag{1, 2, Payload::gradient}, ConstBytes(static_cast<const std::byte*>(src.data()), n * 8));
  comm.post_recv(0, MessageTag{1, 2, Payload::gradient}, MutableBytes(static_cast<std::byte*>(dst.data()), n * 8));
  comm.commit().wait(30s);
  comm.barrier(30s);
  std::vector<double> h(n);
  DUALPIPE_CUDA_CHECK(cudaMemcpy(h.data(), dst.data(), n * 8, cudaMemcpyDeviceToHost));
  CHECK(h[0] == 3.0);
  CHECK(h[n - 1] == 3.0 + static_cast<double>(n - 1));
  CHECK_FALSE(comm.aborted());
}

// A receive that no send will ever match ends with an error, never a hang. NCCL itself refuses a receive
// from self without a send (ncclInvalidUsage, which the group's poll reports and which aborts the
// communicator); were it accepted, the watchdog would abort it. The watchdog's own test is the next one.
TEST_CASE("Gpu.Nccl.AnUnmatchedReceiveEndsWithAnError" * doctest::timeout(120)) {
  NcclOptions o;
  o.watchdog_period = 20ms;
  NcclCommunicator comm(0, 1, make_unique_id(), 0, o);
  DeviceBuffer<SyncAllocator> dst(4096, StreamRef());
  comm.post_recv(0, MessageTag{}, MutableBytes(static_cast<std::byte*>(dst.data()), 4096));  // no send, ever
  bool threw = false;
  try {
    comm.commit().wait(300ms);  // may already fail (NCCL may refuse the group), or return once enqueued
    comm.synchronize(20s);      // the watchdog must abort long before this timeout
  } catch (const Error& e) {
    threw = true;
    MESSAGE("error: " << std::string(e.what()));
  }
  CHECK(threw);
  CHECK(comm.aborted());
  REQUIRE(comm.failure().has_value());
  CHECK(!comm.failure()->what.empty());
  // The watchdog names the group's transfers.
  if (comm.failure()->op == "watchdog")
    CHECK(comm.failure()->what.find("receive from rank 0 (module 0, chunk 0, activation) 4096 bytes") !=
          std::string::npos);
}

TEST_CASE("Gpu.Nccl.WatchdogFiresOnALateGroup" * doctest::timeout(120)) {
  // A matched self send/receive queued behind 2 s of other work on the stream: NCCL accepts it, and only
  // the watchdog can see that it is late (its group's wait gave it 300 ms).
  NcclOptions o;
  o.watchdog_period = 20ms;
  NcclCommunicator comm(0, 1, make_unique_id(), 0, o);
  DeviceBuffer<SyncAllocator> src(4096, StreamRef()), dst(4096, StreamRef());
  gputest::spin(2'000'000'000u, comm.stream());
  comm.post_send(0, MessageTag{0, 5, Payload::gradient}, ConstBytes(static_cast<const std::byte*>(src.data()), 4096));
  comm.post_recv(0, MessageTag{0, 5, Payload::gradient}, MutableBytes(static_cast<std::byte*>(dst.data()), 4096));
  comm.commit().wait(300ms);  // enqueued behind the spin
  CHECK_THROWS_AS(comm.synchronize(20s), CommAborted);
  REQUIRE(comm.failure().has_value());
  CHECK(comm.failure()->op == "watchdog");
  CHECK(comm.failure()->what.find("send to rank 0 (module 0, chunk 5, gradient) 4096 bytes") != std::string::npos);
  ignore_cuda_error(cudaStreamSynchronize(comm.stream()));  // the spin ends on its own, then the aborted group
}

TEST_CASE("Gpu.Nccl.GroupCapturedInAGraph" * doctest::timeout(120)) {
  // The non-blocking communicator's group issued while its stream is captured, then replayed: what
  // CudaDevice's graph mode does with NCCL, on one rank.
  NcclCommunicator comm(0, 1, make_unique_id(), 0);
  const std::size_t n = 1 << 12;
  DeviceBuffer<SyncAllocator> src(n * 8, StreamRef()), dst(n * 8, StreamRef());
  DUALPIPE_CUDA_CHECK(cudaMemsetAsync(dst.data(), 0, n * 8, comm.stream()));
  DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(comm.stream()));
  DUALPIPE_CUDA_CHECK(cudaStreamBeginCapture(comm.stream(), cudaStreamCaptureModeRelaxed));
  gputest::iota(src.as<double>(), n, 11.0, comm.stream());
  comm.post_send(0, MessageTag{0, 1, Payload::activation},
                 ConstBytes(static_cast<const std::byte*>(src.data()), n * 8));
  comm.post_recv(0, MessageTag{0, 1, Payload::activation}, MutableBytes(static_cast<std::byte*>(dst.data()), n * 8));
  comm.commit().wait(30s);
  cudaGraph_t graph = nullptr;
  DUALPIPE_CUDA_CHECK(cudaStreamEndCapture(comm.stream(), &graph));
  cudaGraphExec_t exec = nullptr;
  DUALPIPE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  DUALPIPE_CUDA_CHECK(cudaGraphDestroy(graph));
  std::vector<double> h(n);
  DUALPIPE_CUDA_CHECK(cudaMemcpy(h.data(), dst.data(), n * 8, cudaMemcpyDeviceToHost));
  CHECK(h[1] == 0.0);  // captured, not run
  for (int i = 0; i < 2; ++i) DUALPIPE_CUDA_CHECK(cudaGraphLaunch(exec, comm.stream()));
  comm.synchronize(30s);
  DUALPIPE_CUDA_CHECK(cudaGraphExecDestroy(exec));
  DUALPIPE_CUDA_CHECK(cudaMemcpy(h.data(), dst.data(), n * 8, cudaMemcpyDeviceToHost));
  CHECK(h[0] == 11.0);
  CHECK(h[n - 1] == 11.0 + static_cast<double>(n - 1));
  CHECK_FALSE(comm.aborted());
}
