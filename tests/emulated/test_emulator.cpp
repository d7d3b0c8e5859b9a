// The emulator itself, against CUDA's documented semantics: if it were lax, the tests built on it would
// prove nothing.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emulator.hpp"
#include "dualpipe/cuda.hpp"
#include "gpu_test_kernels.hpp"

using namespace dualpipe;

namespace {
// Runs `issue` on two fresh streams over one buffer and returns the races it reported.
template <class F>
std::vector<std::string> races_of(F issue) {
  Stream a, b;
  DeviceBuffer<SyncAllocator> x(8 * 64, StreamRef());
  cuda_emulator::RaceProbe probe;
  issue(a, b, x.as<double>());
  a.synchronize();
  b.synchronize();
  return probe.take();
}
}  // namespace

TEST_CASE("Emulator.RacesAreFoundWhateverTheTiming") {
  REQUIRE(cuda_emulator::take_races().empty());
  // Ordered by an event: no race.
  CHECK(races_of([](Stream& a, Stream& b, double* x) {
          Event e;
          gputest::iota(x, 64, 1.0, a.get());
          e.record(a);
          b.wait(e);
          gputest::scale(x, x, 2.0, 64, 0, b.get());
        }).empty());
  // No wait: a race, even though the writer is long done before the reader is issued.
  const auto missing = races_of([](Stream& a, Stream& b, double* x) {
    gputest::iota(x, 64, 1.0, a.get());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    gputest::scale(x, x, 2.0, 64, 0, b.get());
  });
  REQUIRE(!missing.empty());
  CHECK(missing.front().find("'kernel scale'") != std::string::npos);
  CHECK(missing.front().find("'kernel iota'") != std::string::npos);
  // A wait covers the record at the time of the call only: a later write on `a` is not ordered.
  CHECK(!races_of([](Stream& a, Stream& b, double* x) {
           Event e;
           gputest::iota(x, 64, 1.0, a.get());
           e.record(a);
           b.wait(e);
           gputest::iota(x, 64, 0.0, a.get());
           gputest::scale(x, x, 2.0, 64, 0, b.get());
         }).empty());
  // The host saw the writer finish: the reader it issues afterwards is ordered.
  CHECK(races_of([](Stream& a, Stream& b, double* x) {
          gputest::iota(x, 64, 1.0, a.get());
          a.synchronize();
          gputest::scale(x, x, 2.0, 64, 0, b.get());
        }).empty());
  // Two readers need no order between them; a copy is an access like a kernel.
  CHECK(races_of([](Stream& a, Stream& b, double* x) {
          Event e;
          gputest::iota(x, 64, 1.0, a.get());
          e.record(a);
          b.wait(e);
          gputest::scale(x, x + 32, 2.0, 32, 0, a.get());
          DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(x + 48, x, 8 * 8, cudaMemcpyDeviceToDevice, b.get()));
        }).size() == 1);                     // b's copy writes [48, 56) that a's scale writes too
  CHECK(cudaGetLastError() == cudaSuccess);  // a probe's races are not sticky
}

TEST_CASE("Emulator.LegacyStreamDoesNotWaitForNonBlockingStreams") {
  Stream s;  // non-blocking
  DeviceBuffer<SyncAllocator> x(8, StreamRef());
  DUALPIPE_CUDA_CHECK(cudaMemset(x.data(), 0, 8));
  DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
  gputest::spin(100'000'000, s.get());
  gputest::iota(x.as<double>(), 1, 7.0, s.get());
  double h = -1;
  // The copy does not wait for the 100 ms spin on the other stream: it reads the old value, and the
  // emulator reports the race (and fails the call, as every call until the race is taken).
  CHECK(cudaMemcpy(&h, x.data(), 8, cudaMemcpyDeviceToHost) == cudaErrorLaunchFailure);
  CHECK(h == 0.0);
  const auto races = cuda_emulator::take_races();
  REQUIRE(races.size() == 1);
  CHECK(races.front().find("read by 'cudaMemcpy'") != std::string::npos);
  s.synchronize();
  DUALPIPE_CUDA_CHECK(cudaMemcpy(&h, x.data(), 8, cudaMemcpyDeviceToHost));
  CHECK(h == 7.0);
}

TEST_CASE("Emulator.MemoryIsCheckedAndStartsAsNaN") {
  DeviceBuffer<SyncAllocator> x(16, StreamRef());
  double h[2] = {0, 0};
  DUALPIPE_CUDA_CHECK(cudaMemcpy(h, x.data(), 16, cudaMemcpyDeviceToHost));
  CHECK(std::isnan(h[0]));
  CHECK(cudaMemcpy(h, h + 1, 8, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);  // host as device
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaSuccess);                                             // not sticky
  CHECK(cudaMemcpy(x.data(), h, 32, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);  // past the end
  CHECK(cudaFree(h) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
  CHECK(cuda_emulator::is_device_memory(x.data(), 16));
  CHECK_FALSE(cuda_emulator::is_device_memory(x.data(), 17));
}

TEST_CASE("Emulator.CaptureRules") {
  Stream origin, side;
  Event fork, join, outside;
  DeviceBuffer<SyncAllocator> x(8 * 16, StreamRef());
  outside.record(side);
  DUALPIPE_CUDA_CHECK(cudaStreamBeginCapture(origin.get(), cudaStreamCaptureModeRelaxed));
  // Waiting inside the capture on work outside it crosses the capture's boundary.
  CHECK(cudaStreamWaitEvent(origin.get(), outside.get(), 0) == cudaErrorStreamCaptureIsolation);
  cudaGraph_t g = nullptr;
  CHECK(cudaStreamEndCapture(origin.get(), &g) == cudaErrorStreamCaptureInvalidated);
  CHECK(g == nullptr);
  (void)cudaGetLastError();

  // A fork that is not joined back.
  DUALPIPE_CUDA_CHECK(cudaStreamBeginCapture(origin.get(), cudaStreamCaptureModeRelaxed));
  fork.record(origin);
  side.wait(fork);
  gputest::iota(x.as<double>(), 16, 0.0, side.get());
  CHECK(cudaStreamEndCapture(origin.get(), &g) == cudaErrorStreamCaptureUnjoined);
  (void)cudaGetLastError();

  // Querying a capturing stream invalidates the capture.
  DUALPIPE_CUDA_CHECK(cudaStreamBeginCapture(origin.get(), cudaStreamCaptureModeRelaxed));
  CHECK(cudaStreamQuery(origin.get()) == cudaErrorStreamCaptureUnsupported);
  CHECK(cudaStreamEndCapture(origin.get(), &g) == cudaErrorStreamCaptureInvalidated);
  (void)cudaGetLastError();

  // A proper fork and join: the graph replays both branches, in order.
  DUALPIPE_CUDA_CHECK(cudaStreamBeginCapture(origin.get(), cudaStreamCaptureModeRelaxed));
  gputest::iota(x.as<double>(), 16, 1.0, origin.get());
  fork.record(origin);
  side.wait(fork);
  gputest::scale(x.as<double>(), x.as<double>(), 3.0, 16, 1'000'000, side.get());
  join.record(side);
  origin.wait(join);
  CHECK(cudaEventQuery(join.get()) == cudaErrorCapturedEvent);
  (void)cudaGetLastError();
  gputest::scale(x.as<double>(), x.as<double>(), 2.0, 16, 0, origin.get());
  DUALPIPE_CUDA_CHECK(cudaStreamEndCapture(origin.get(), &g));
  REQUIRE(g != nullptr);
  double h[16];
  DUALPIPE_CUDA_CHECK(cudaMemcpy(h, x.data(), sizeof h, cudaMemcpyDeviceToHost));
  CHECK(std::isnan(h[0]));  // captured, not run
  cudaGraphExec_t exec = nullptr;
  DUALPIPE_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
  DUALPIPE_CUDA_CHECK(cudaGraphDestroy(g));
  for (int i = 0; i < 2; ++i) DUALPIPE_CUDA_CHECK(cudaGraphLaunch(exec, origin.get()));
  origin.synchronize();
  DUALPIPE_CUDA_CHECK(cudaGraphExecDestroy(exec));
  DUALPIPE_CUDA_CHECK(cudaMemcpy(h, x.data(), sizeof h, cudaMemcpyDeviceToHost));
  CHECK(h[0] == 6.0);
  CHECK(h[15] == 96.0);
  CHECK(cuda_emulator::counters().graph_launches >= 2);
}

TEST_CASE("Emulator.EventsAndTiming") {
  Stream s;
  Event t0(Event::timing), t1(Event::timing), plain;
  CHECK(plain.ready());
  t0.record(s);
  gputest::spin(2'000'000, s.get());
  t1.record(s);
  plain.record(s);
  t1.synchronize();
  CHECK(t1.elapsed_ms_since(t0) >= 1.5f);
  CHECK_THROWS_AS((void)plain.elapsed_ms_since(t0), CudaError);  // a plain event has no time
}

TEST_CASE("Emulator.GraphLaunchesAreRaceChecked") {
  // Two branches of a captured graph write the same bytes with nothing ordering them: the launch reports
  // it (the capture itself is legal: the side stream is joined back at the end).
  Stream origin, side;
  Event fork, join;
  DeviceBuffer<SyncAllocator> x(8 * 16, StreamRef());
  for (const bool ordered : {true, false}) {
    CAPTURE(ordered);
    DUALPIPE_CUDA_CHECK(cudaStreamBeginCapture(origin.get(), cudaStreamCaptureModeRelaxed));
    gputest::iota(x.as<double>(), 16, 1.0, origin.get());
    fork.record(origin);
    side.wait(fork);
    gputest::scale(x.as<double>(), x.as<double>(), 3.0, 16, 0, side.get());
    if (ordered) {
      join.record(side);
      origin.wait(join);
    }
    gputest::scale(x.as<double>(), x.as<double>(), 2.0, 16, 0, origin.get());
    if (!ordered) {
      join.record(side);
      origin.wait(join);
    }
    cudaGraph_t g = nullptr;
    DUALPIPE_CUDA_CHECK(cudaStreamEndCapture(origin.get(), &g));
    cudaGraphExec_t exec = nullptr;
    DUALPIPE_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    DUALPIPE_CUDA_CHECK(cudaGraphDestroy(g));
    cuda_emulator::RaceProbe probe;
    DUALPIPE_CUDA_CHECK(cudaGraphLaunch(exec, origin.get()));
    origin.synchronize();
    DUALPIPE_CUDA_CHECK(cudaGraphExecDestroy(exec));
    const auto races = probe.take();
    CHECK(races.empty() == ordered);
  }
}
