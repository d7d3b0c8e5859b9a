// CudaLocalCommunicator on a GPU: copies between ranks in stream order, size mismatch, timeout, abort,
// copy = false.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "gpu_test_kernels.hpp"

using namespace dualpipe;
using namespace std::chrono_literals;

namespace {
std::vector<double> to_host(const void* d, std::size_t n) {
  std::vector<double> h(n);
  DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
  DUALPIPE_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(double), cudaMemcpyDeviceToHost));
  return h;
}
}  // namespace

TEST_CASE("Gpu.CudaLocal.TransferInStreamOrder" * doctest::timeout(60)) {
  const std::size_t n = 1 << 18;
  CudaLocalWorld world(3);
  std::vector<DeviceBuffer<SyncAllocator>> src, dst;
  for (int r = 0; r < 3; ++r) {
    src.emplace_back(n * sizeof(double), StreamRef());
    dst.emplace_back(n * sizeof(double), StreamRef());
    DUALPIPE_CUDA_CHECK(cudaMemset(dst.back().data(), 0, n * sizeof(double)));
  }
  DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
  // A ring: r sends to r+1. The sender's data is produced on its communication stream after a long spin,
  // so a copy that did not wait for the sender's launch event would read zeros.
  run_ranks(3, [&](int r) {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(0));
    CudaLocalCommunicator& c = world.communicator(r);
    const auto i = static_cast<std::size_t>(r);
    gputest::spin(3'000'000, c.stream());
    gputest::iota(src[i].as<double>(), n, 100.0 * r, c.stream());
    c.post_send((r + 1) % 3, MessageTag{0, 7, Payload::activation},
                ConstBytes(static_cast<const std::byte*>(src[i].data()), n * 8));
    c.post_recv((r + 2) % 3, MessageTag{0, 7, Payload::activation},
                MutableBytes(static_cast<std::byte*>(dst[i].data()), n * 8));
    c.commit().wait(10s);
    c.barrier(10s);
  });
  for (int r = 0; r < 3; ++r) {
    const auto h = to_host(dst[static_cast<std::size_t>(r)].data(), n);
    const int from = (r + 2) % 3;
    CHECK(h[0] == 100.0 * from);
    CHECK(h[n - 1] == 100.0 * from + static_cast<double>(n - 1));
  }
  CHECK(world.copies() == 3);
}

TEST_CASE("Gpu.CudaLocal.SizeMismatchTimeoutAbort" * doctest::timeout(60)) {
  CudaLocalWorld world(2);
  DeviceBuffer<SyncAllocator> a(1024, StreamRef()), b(2048, StreamRef());
  run_ranks(2, [&](int r) {
    CudaLocalCommunicator& c = world.communicator(r);
    if (r == 0) c.post_send(1, MessageTag{}, ConstBytes(static_cast<const std::byte*>(a.data()), 1024));
    else c.post_recv(0, MessageTag{}, MutableBytes(static_cast<std::byte*>(b.data()), 2048));
    CHECK_THROWS_WITH_AS(c.commit().wait(5s),
                         "CUDA local communicator: message from rank 0 to rank 1 with tag (module 0, chunk 0, "
                         "activation) has 1024 bytes but the receive buffer has 2048 bytes",
                         Error);
  });
  // Rank 0 waits for a message rank 1 never sends (and sends one rank 1 never takes): the error names the
  // receive, what rank 0 waits for, though the send was posted first.
  CudaLocalCommunicator& c0 = world.communicator(0);
  c0.post_send(1, MessageTag{0, 5, Payload::activation}, ConstBytes(static_cast<const std::byte*>(a.data()), 1024));
  c0.post_recv(1, MessageTag{0, 3, Payload::gradient}, MutableBytes(static_cast<std::byte*>(b.data()), 2048));
  try {
    c0.commit().wait(100ms);
    FAIL("no timeout");
  } catch (const TimeoutError& e) {
    CHECK(std::string(e.what()).find("timed out after 100 ms") != std::string::npos);
    REQUIRE(e.has_transfer());  // the executor names the op from these
    CHECK(e.peer() == 1);
    CHECK(e.tag().chunk == 3);
    CHECK(e.tag().payload == Payload::gradient);
  }
  // An abort wakes a waiting rank with the origin.
  run_ranks(2, [&](int r) {
    CudaLocalCommunicator& c = world.communicator(r);
    if (r == 1) {
      FailureOrigin o;
      o.rank = 1;
      o.op = "F0.2";
      o.what = "boom";
      c.abort(o);
      return;
    }
    c.post_recv(1, MessageTag{0, 4, Payload::gradient}, MutableBytes(static_cast<std::byte*>(b.data()), 2048));
    CHECK_THROWS_WITH_AS(c.commit().wait(10s), doctest::Contains("boom"), CommAborted);
  });
  CHECK(world.aborted());
  run_ranks(2, [&](int r) { world.communicator(r).reset(5s); });
  CHECK_FALSE(world.aborted());
}

TEST_CASE("Gpu.CudaLocal.NoCopy" * doctest::timeout(60)) {
  CudaLocalWorld world(2, -1, CudaLocalOptions{false});
  DeviceBuffer<SyncAllocator> a(64 * 8, StreamRef()), b(64 * 8, StreamRef());
  gputest::iota(a.as<double>(), 64, 1.0, nullptr);
  DUALPIPE_CUDA_CHECK(cudaMemset(b.data(), 0, 64 * 8));
  DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
  run_ranks(2, [&](int r) {
    CudaLocalCommunicator& c = world.communicator(r);
    if (r == 0) c.post_send(1, MessageTag{}, ConstBytes(static_cast<const std::byte*>(a.data()), 64 * 8));
    else c.post_recv(0, MessageTag{}, MutableBytes(static_cast<std::byte*>(b.data()), 64 * 8));
    c.commit().wait(5s);
  });
  CHECK(to_host(b.data(), 64)[5] == 0.0);
  CHECK(world.copies() == 0);
}
