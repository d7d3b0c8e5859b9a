// The consumer of the cuda component (dualpipe::cuda): the CUDA headers the way a framework would use them;
// runs without a GPU too.
#include <dualpipe/cuda.hpp>

#include <cstdio>

int main() {
  static_assert(dualpipe::check_device_policy<dualpipe::CudaDevice>());
  std::printf("consumer_cuda: %d CUDA devices, NVTX %s\n", dualpipe::cuda_device_count(),
              dualpipe::nvtx_enabled ? "on" : "off");
  return 0;
}
