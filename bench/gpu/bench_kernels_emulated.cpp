// The GPU benchmarks' kernel (bench/gpu/bench_kernels.hpp) for the CUDA emulator: a busy wait becomes a
// sleep in stream order. With it, dualpipe-bench-gpu runs on the emulator as a smoke test of the benchmark
// code (it runs to the end, no CUDA error, no race); its figures mean nothing.
#include <chrono>
#include <thread>

#include "bench_kernels.hpp"
#include "cuda_emulator.hpp"

namespace gpubench {

void busy(unsigned ns, unsigned /*blocks*/, cudaStream_t s) {
  (void)cuda_emulator::launch(
      s, [ns] { std::this_thread::sleep_for(std::chrono::nanoseconds(ns)); }, "kernel busy");
}

unsigned busy_blocks_per_sm() { return 16; }  // as on Hopper: 2048 threads an SM, 128 a block

}  // namespace gpubench
