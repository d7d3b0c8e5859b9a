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

void busy(unsigned ns, unsigned blocks, cudaStream_t s) { busy_kernel<<<blocks < 1 ? 1 : blocks, 128, 0, s>>>(ns); }

}  // namespace gpubench
