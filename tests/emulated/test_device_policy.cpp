// CudaDevice's ordering contract, op by op, on the emulator's race checker: each case also runs without
// the call under test and expects the race, so that it shows the call is what orders the streams.
#include <doctest/doctest.h>

#include <span>
#include <string>
#include <vector>

#include "cuda_emulator.hpp"
#include "dualpipe/cuda.hpp"
#include "gpu_test_kernels.hpp"

using namespace dualpipe;

namespace {

cudaStream_t lane_stream(CudaDevice& d, ComputeLane l) { return static_cast<cudaStream_t>(d.stream(l)); }

// Races found while `issue` ran (the device is drained before returning).
template <class F>
std::vector<std::string> races_of(F issue) {
  cuda_emulator::RaceProbe probe;
  issue();
  DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
  return probe.take();
}

}  // namespace

TEST_CASE("DevicePolicy.ForkOrdersTheSecondStreamAfterTheMain") {
  for (const bool fork : {true, false}) {
    CAPTURE(fork);
    CudaDevice d;
    DeviceBuffer<SyncAllocator> x(8 * 64, StreamRef());
    const auto races = races_of([&] {
      gputest::iota(x.as<double>(), 64, 1.0, lane_stream(d, ComputeLane::main));  // e.g. a loss on main
      if (fork) d.fork();
      gputest::scale(x.as<double>(), x.as<double>(), 2.0, 64, 0, lane_stream(d, ComputeLane::second));  // FB's backward
      d.join();
    });
    CHECK(races.empty() == fork);
  }
}

TEST_CASE("DevicePolicy.JoinOrdersTheMainStreamAfterTheSecond") {
  for (const bool join : {true, false}) {
    CAPTURE(join);
    CudaDevice d;
    DeviceBuffer<SyncAllocator> x(8 * 64, StreamRef());
    const auto races = races_of([&] {
      d.fork();
      gputest::iota(x.as<double>(), 64, 1.0, lane_stream(d, ComputeLane::second));
      if (join) d.join();
      gputest::scale(x.as<double>(), x.as<double>(), 2.0, 64, 0, lane_stream(d, ComputeLane::main));
    });
    CHECK(races.empty() == join);
  }
}

TEST_CASE("DevicePolicy.SlotEventsOrderUsesOnOtherStreams") {
  for (const bool use : {true, false}) {
    CAPTURE(use);
    CudaDevice d;
    std::byte* slots = d.slot_memory()->allocate_slots(8 * 64, 2);
    const ConstBytes slot0(slots, 8 * 64);
    auto* p = reinterpret_cast<double*>(slots);
    const auto races = races_of([&] {
      gputest::iota(p, 64, 1.0, lane_stream(d, ComputeLane::main));  // produced on main
      d.used(ComputeLane::main, slot0);
      if (use) d.use(ComputeLane::second, slot0);
      gputest::scale(p, p, 2.0, 64, 0, lane_stream(d, ComputeLane::second));  // consumed on second
      d.used(ComputeLane::second, slot0);
      d.use(ComputeLane::main, slot0);
      gputest::iota(p, 64, 0.0, lane_stream(d, ComputeLane::main));  // reused on main: waits for second
    });
    CHECK(races.empty() == use);
    if (use) CHECK(d.slot_waits() == 2);
  }
}
