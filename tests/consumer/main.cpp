// Uses the umbrella header the way a framework would; prints the DualPipe op count of rank 0.
#include <dualpipe/dualpipe.hpp>

#include <cstdio>

int main() {
  const auto trace = dualpipe::make_trace<dualpipe::DualPipe>(4, 8);
  std::printf("consumer: dualpipe 4x8 rank 0 issues %zu ops\n", trace.ops[0].size());
  return trace.ops[0].empty() ? 1 : 0;
}
