// The umbrella header must not pull in MPI: programs without MPI include it. Built without dualpipe::mpi,
// so mpi.h can only come in where the compiler finds it by itself (some installations put it on the
// default include path).
#include <doctest/doctest.h>

#include "dualpipe/dualpipe.hpp"

#if defined(MPI_VERSION) || defined(OMPI_MAJOR_VERSION) || defined(MPICH_VERSION)
#error "dualpipe/dualpipe.hpp includes mpi.h; MPI must stay opt-in (dualpipe/mpi.hpp)"
#endif

TEST_CASE("Mpi.UmbrellaHeaderHasNoMpi") {
#ifdef DUALPIPE_HAS_MPI
  FAIL("DUALPIPE_HAS_MPI is defined without linking dualpipe::mpi");
#endif
  CHECK(dualpipe::DualPipe::modules_per_rank == 2);
}
