// The doctest main of the MPI tests: every rank runs the same test cases in the same order inside one
// MpiSession; the test cases pair the ranks up themselves. mpirun fails the job when any rank fails.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "dualpipe/mpi.hpp"

int main(int argc, char** argv) {
  dualpipe::MpiSession session(argc, argv);
  doctest::Context context(argc, argv);
  // One summary is enough: ranks other than 0 report only their failures.
  if (session.world_rank() != 0) context.setOption("minimal", true);
  const int failed = context.run();
  // Agree on the outcome before finalizing, so that a rank that failed early is not left waiting alone.
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any_failed != 0 ? 1 : 0;
}
