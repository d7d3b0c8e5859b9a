// bench/gpu/bench_kernels.cu: see bench_kernels.hpp.
#include "bench_kernels.hpp"

#include <cstdint>

namespace gpubench {
namespace {
__global__ void busy_kernel(unsigned ns) {
  std::uint64_t t0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  for (;;) {
    std::uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    if (t - t0 >= ns) break;
  }
}
}  // namespace

constexpr int busy_threads = 128;

void busy(unsigned ns, unsigned blocks, cudaStream_t s) {
  busy_kernel<<<(blocks < 1 ? 1 : blocks), busy_threads, 0, s>>>(ns);
}

unsigned busy_blocks_per_sm() {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, busy_kernel, busy_threads, 0) != cudaSuccess || n < 1) n = 16;
  return static_cast<unsigned>(n);
}

}  // namespace gpubench
