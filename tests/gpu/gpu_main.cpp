// The GPU tests' main: exits 77 (CTest: skipped) when there is no CUDA device, else runs doctest.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "dualpipe/cuda/stream.hpp"

int main(int argc, char** argv) {
  if (!dualpipe::cuda_device_available()) {
    std::fprintf(stderr, "no CUDA device (%s): the GPU tests are skipped\n", dualpipe::cuda_unavailable_reason().c_str());
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
