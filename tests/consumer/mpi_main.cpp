// The consumer of the mpi component (dualpipe::mpi): compiles, links, and runs as one rank without mpirun.
#include <cstdio>

#include "dualpipe/mpi.hpp"

int main(int argc, char** argv) {
  dualpipe::MpiSession session(argc, argv);
  dualpipe::MpiCommunicator comm;
  std::printf("consumer_mpi: rank %d of %d\n", comm.rank(), comm.size());
  return 0;
}
