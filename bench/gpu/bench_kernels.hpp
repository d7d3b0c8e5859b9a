// bench/gpu/bench_kernels.hpp: the benchmarks' device work (bench_kernels.cu) behind host functions.
#pragma once

#include <cuda_runtime_api.h>

namespace gpubench {

/// `blocks` blocks of 128 threads each busy-wait `ns` nanoseconds: compute that occupies that many SMs'
/// worth of threads for a known time (blocks >= 2 x SMs fills the GPU: nothing else runs beside it).
void busy(unsigned ns, unsigned blocks, cudaStream_t s);

}  // namespace gpubench
