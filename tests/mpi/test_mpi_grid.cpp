// MpiGrid and the gradient reduction between real MPI processes: a PP x DP grid of 4 processes (2 x 2, and
// 4 x 1 / 1 x 4 as the world allows), sub-communicators by MPI_Comm_split, and HostGradientReduction over
// MpiCommunicators leaving every copy of every stage bitwise equal to the sequential sum.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "dualpipe/dualpipe.hpp"
#include "dualpipe/mpi.hpp"

using namespace dualpipe;
using namespace std::chrono_literals;

namespace {
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Module m of pipeline rank r in replica d: values that need rounding to add.
std::vector<double> gradient_of(int d, int r, int m, std::size_t n) {
  std::vector<double> g(n);
  for (std::size_t i = 0; i < n; ++i)
    g[i] = 1.0 / (3.0 + static_cast<double>(d * 7 + r * 5 + m * 3) + 0.37 * static_cast<double>(i)) -
           0.1 * static_cast<double>((i + static_cast<std::size_t>(d + r)) % 5);
  return g;
}
}  // namespace

TEST_CASE("Mpi.Grid.SubCommunicatorsFollowTheGrid") {
  const int W = world_size();
  if (W % 2 != 0) return;  // needs an even world
  MpiGrid grid(ProcessGrid(W, {.pp = W / 2, .dp = 2}, "pp,dp"));
  const int r = grid.rank();
  int size = 0, rank = 0;
  MPI_Comm_size(grid.native(GridDim::pp), &size);
  MPI_Comm_rank(grid.native(GridDim::pp), &rank);
  CHECK(size == W / 2);
  CHECK(rank == r % (W / 2));
  MPI_Comm_size(grid.native(GridDim::dp), &size);
  MPI_Comm_rank(grid.native(GridDim::dp), &rank);
  CHECK(size == 2);
  CHECK(rank == r / (W / 2));
  MPI_Comm_size(grid.native(GridDim::tp), &size);
  CHECK(size == 1);
  CHECK(grid.coord(GridDim::pp) == r % (W / 2));
  CHECK(grid.describe().starts_with("grid: pp=" + std::to_string(W / 2) + " dp=2 ep=1 tp=1 order=pp,dp rank " +
                                    std::to_string(r) + " = "));
  // An exchange on the dp group reaches the same pipeline rank of the other replica.
  MpiCommunicator dp = grid.communicator(GridDim::dp);
  const int mine = r;
  int got = -1;
  dp.post_send(1 - dp.rank(), MessageTag{0, 0, Payload::activation}, std::as_bytes(std::span(&mine, 1)));
  dp.post_recv(1 - dp.rank(), MessageTag{0, 0, Payload::activation}, std::as_writable_bytes(std::span(&got, 1)));
  dp.commit().wait(20s);
  CHECK(got == (r + W / 2) % W);
}

TEST_CASE("Mpi.Grid.AWrongWorldSizeIsAConfigError") {
  const int W = world_size();
  try {
    MpiGrid grid(ProcessGrid(2 * W, {.pp = W, .dp = 2}, "pp,dp"));
    FAIL("no ConfigError");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("the grid has " + std::to_string(2 * W) + " ranks but the MPI communicator has " +
                                     std::to_string(W) + " processes") != std::string::npos);
  }
}

TEST_CASE("Mpi.Grid.ReductionOverCopiesAndReplicasIsBitwiseEqualEverywhere") {
  const int W = world_size();
  if (W % 4 != 0) return;  // DualPipe needs an even pipeline, times 2 replicas
  const int P = W / 2, D = 2, C = 2 * P;
  constexpr std::size_t n = 1000;
  MpiGrid grid(ProcessGrid(W, {.pp = P, .dp = D}, "pp,dp"));
  MpiCommunicator copies_comm = grid.communicator(GridDim::pp);
  MpiCommunicator replicas_comm = grid.communicator(GridDim::dp);
  const StageCopies copies = stage_copies<DualPipe>(P, C);
  const int r = grid.coord(GridDim::pp), d = grid.coord(GridDim::dp);
  std::vector<std::vector<double>> grads{gradient_of(d, r, 0, n), gradient_of(d, r, 1, n)};
  HostGradientReduction<double, MpiCommunicator> reduce(copies, copies_comm, {std::span(grads[0]), std::span(grads[1])},
                                                        {.timeout = 20s}, &replicas_comm);
  reduce.post(1);  // early, as from on_grads_ready
  reduce.finish();
  for (int m = 0; m < 2; ++m) {
    const int s = copies.stage(r, m);
    std::vector<double> want;
    for (int rd = 0; rd < D; ++rd) {
      std::vector<double> copy_sum;
      for (const StageCopy& h : copies.copies(s)) {
        const auto g = gradient_of(rd, h.rank, h.module, n);
        if (copy_sum.empty()) copy_sum = g;
        else
          for (std::size_t i = 0; i < n; ++i) copy_sum[i] += g[i];
      }
      if (want.empty()) want = copy_sum;
      else
        for (std::size_t i = 0; i < n; ++i) want[i] += copy_sum[i];
    }
    CHECK(std::memcmp(grads[static_cast<std::size_t>(m)].data(), want.data(), n * sizeof(double)) == 0);
  }
}
