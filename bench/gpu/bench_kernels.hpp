// bench/gpu/bench_kernels.hpp: the benchmarks' device work (bench_kernels.cu) behind host functions.
#pragma once

#include <cuda_runtime_api.h>

namespace gpubench {

/// `blocks` blocks of 128 threads each busy-wait `ns` nanoseconds: compute that occupies that many block
/// slots for a known time. busy_blocks_per_sm() x SMs blocks fill the GPU: nothing else runs beside them.
void busy(unsigned ns, unsigned blocks, cudaStream_t s);

/// How many of busy()'s blocks one SM holds at once (the occupancy calculator's figure; 16 on Hopper,
/// whose SMs hold 2048 threads).
[[nodiscard]] unsigned busy_blocks_per_sm();

}  // namespace gpubench
