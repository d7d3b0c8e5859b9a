// The consumer of dualpipe::mpi (built when the installed or added dualpipe has it): compiles and links.
#include <cstdio>

#include "dualpipe/mpi.hpp"

int main(int argc, char** argv) {
  dualpipe::MpiSession session(argc, argv);
  dualpipe::MpiCommunicator comm;
  std::printf("consumer_mpi: rank %d of %d\n", comm.rank(), comm.size());
  return 0;
}
