// tests/gpu/nccl_ranks.hpp: the ranks of a GPU test run on NcclCommunicator (rank r on device r), shared by
// the pipeline and the chunk-size tests.
#pragma once

#include <chrono>

#include "dualpipe/nccl.hpp"

namespace gputest {

/// The ranks of a run on NcclCommunicator: rank r on device r (NCCL puts one rank on a GPU).
struct NcclRanks {
  using Comm = dualpipe::NcclCommunicator;
  static constexpr bool resettable = false;  // an aborted NCCL communicator is dead
  explicit NcclRanks(int P) : size(P), id(dualpipe::make_unique_id()) {}
  [[nodiscard]] static int device(int rank) { return rank; }
  template <class F>
  void run(int rank, F&& f) {
    dualpipe::NcclOptions o;
    o.watchdog_period = std::chrono::milliseconds(10);
    dualpipe::NcclCommunicator comm(rank, size, id, rank, o);
    f(comm);
  }
  int size;
  ncclUniqueId id;
};

}  // namespace gputest
