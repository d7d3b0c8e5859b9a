// The GPU tests' main: exits 77 (CTest: skipped) when there is no CUDA device, else runs doctest. Listing
// the test cases needs no device (the build lists them to register each case with CTest).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <string_view>

#include "dualpipe/cuda/stream.hpp"

namespace {
/// True for doctest's --list-test-cases (or -ltc, with or without the --dt- prefix).
bool lists_test_cases(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view a(argv[i]);
    for (std::string_view prefix : {"--dt-", "--", "-"})
      if (a.starts_with(prefix)) {
        a.remove_prefix(prefix.size());
        break;
      }
    if (a == "list-test-cases" || a == "ltc") return true;
  }
  return false;
}
}  // namespace

int main(int argc, char** argv) {
  if (!lists_test_cases(argc, argv) && !dualpipe::cuda_device_available()) {
    std::fprintf(stderr, "no CUDA device (%s): the GPU tests are skipped\n",
                 dualpipe::cuda_unavailable_reason().c_str());
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
