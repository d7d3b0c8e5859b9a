// Uses the opt-in CUDA (and NCCL) headers the way a framework would; runs without a GPU too.
#include <dualpipe/cuda.hpp>
#ifdef CONSUMER_NCCL
#include <dualpipe/nccl.hpp>
#endif

#include <cstdio>

int main() {
  static_assert(dualpipe::check_device_policy<dualpipe::CudaDevice>());
  std::printf("consumer_cuda: %d CUDA devices, NVTX %s", dualpipe::cuda_device_count(), dualpipe::nvtx_enabled ? "on" : "off");
#ifdef CONSUMER_NCCL
  std::printf(", NCCL id text %zu hex digits", dualpipe::to_hex(ncclUniqueId{}).size());
#endif
  std::printf("\n");
  return 0;
}
