// The consumer of the nccl component (dualpipe::nccl, which brings dualpipe::cuda): compiles, links and
// calls libnccl; runs without a GPU.
#include <dualpipe/nccl.hpp>

#include <cstdio>

int main() {
  int version = 0;
  DUALPIPE_NCCL_CHECK(ncclGetVersion(&version));
  std::printf("consumer_nccl: NCCL %d, a unique id is %zu hex digits\n", version,
              dualpipe::to_hex(ncclUniqueId{}).size());
  return version > 0 ? 0 : 1;
}
