// RAII types and check macros on a GPU.
#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "gpu_test_kernels.hpp"

using namespace dualpipe;

TEST_CASE("Gpu.Raii.StreamAndEvent") {
  Stream s;
  CHECK(s.get() != nullptr);
  Event e;
  CHECK(e.ready());                    // never recorded
  gputest::spin(50'000'000, s.get());  // 50 ms: far longer than the host needs to look
  e.record(s);
  CHECK_FALSE(e.ready());  // the host issued and came back at once
  e.synchronize();
  CHECK(e.ready());
  CHECK(s.ready());

  Stream moved(std::move(s));
  CHECK(s.get() == nullptr);  // NOLINT: moved-from holds nothing
  CHECK(moved.get() != nullptr);
  Event e2(std::move(e));
  CHECK(e.get() == nullptr);  // NOLINT
  Stream other;
  other = std::move(moved);
  CHECK(other.get() != nullptr);

  // Ordering without the host: `b` waits for `a`'s 50 ms spin before its own event.
  Stream a, b;
  Event after_a;
  Event done_b;
  gputest::spin(50'000'000, a.get());
  after_a.record(a);
  b.wait(after_a);
  done_b.record(b);
  CHECK_FALSE(done_b.ready());
  done_b.synchronize();
  CHECK(after_a.ready());
}

TEST_CASE("Gpu.Raii.TimingEvents") {
  Stream s;
  Event t0(Event::timing), t1(Event::timing);
  t0.record(s);
  gputest::spin(1'000'000, s.get());
  t1.record(s);
  t1.synchronize();
  CHECK(t1.elapsed_ms_since(t0) > 0.0f);
}

TEST_CASE("Gpu.Raii.Memory") {
  Stream s;
  const std::size_t n = 1 << 20;
  DeviceBuffer<> buf(n * sizeof(double), s);
  CHECK(buf.size() == n * sizeof(double));
  gputest::iota(buf.as<double>(), n, 5.0, s.get());
  PinnedBuffer host(n * sizeof(double));
  DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(host.data(), buf.data(), buf.size(), cudaMemcpyDeviceToHost, s.get()));
  s.synchronize();
  CHECK(host.as<double>()[0] == 5.0);
  CHECK(host.as<double>()[n - 1] == 5.0 + static_cast<double>(n - 1));
  DeviceBuffer<> moved(std::move(buf));
  CHECK(buf.data() == nullptr);  // NOLINT
  CHECK(moved.data() != nullptr);
  moved.reset();
  CHECK(moved.data() == nullptr);
  DeviceBuffer<SyncAllocator> sync(64, StreamRef());
  CHECK(sync.data() != nullptr);
}

TEST_CASE("Gpu.Raii.DeviceGuard") {
  const int before = current_device();
  {
    DeviceGuard g(cuda_device_count() - 1);
    CHECK(current_device() == cuda_device_count() - 1);
  }
  CHECK(current_device() == before);
}

TEST_CASE("Gpu.Check.ErrorTextFromRealCalls") {
  try {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(cuda_device_count()));
    FAIL("no exception");
  } catch (const CudaError& e) {
    CHECK(e.code() == static_cast<int>(cudaErrorInvalidDevice));
    CHECK(std::string(e.what()).find(cudaGetErrorString(cudaErrorInvalidDevice)) != std::string::npos);
  }
  // A launch error is reported by DUALPIPE_CUDA_CHECK_LAST, and does not stick.
  void* p = nullptr;
  CHECK_THROWS_AS(DUALPIPE_CUDA_CHECK(cudaMemcpy(p, p, 16, cudaMemcpyDeviceToDevice)), CudaError);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK_NOTHROW(DUALPIPE_CUDA_CHECK_LAST());
}
