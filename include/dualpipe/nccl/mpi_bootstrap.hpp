// dualpipe/nccl/mpi_bootstrap.hpp: the NCCL unique id broadcast over MPI (optional: needs <mpi.h>
// and an MPI library at link time, e.g. the CMake target dualpipe::mpi or MPI::MPI_C).
//
//   MPI_Init(&argc, &argv);
//   const MpiLaunch who = mpi_launch_info(MPI_COMM_WORLD);          // rank, size, rank on this node
//   NcclCommunicator comm(who.rank, who.size, unique_id_via_mpi(MPI_COMM_WORLD), who.local_rank);
#pragma once

// Only MPI's C interface is used: keep the deprecated C++ bindings out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#include <nccl.h>

#include <string>

#include "dualpipe/core/error.hpp"
#include "dualpipe/nccl/bootstrap.hpp"

namespace dualpipe {

namespace detail {
inline void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(std::string("MPI error in ") + call + ": " + std::string(text, static_cast<std::size_t>(len)));
}
}  // namespace detail

/// Rank `root` makes a new id (ncclGetUniqueId) and broadcasts it over `comm`; every rank gets it. A
/// collective call. Throws NcclError (on root) or Error (MPI).
[[nodiscard]] inline ncclUniqueId unique_id_via_mpi(MPI_Comm comm, int root = 0) {
  int rank = 0;
  detail::check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  ncclUniqueId id{};
  if (rank == root) id = make_unique_id();
  detail::check_mpi(MPI_Bcast(&id, static_cast<int>(sizeof id), MPI_BYTE, root, comm), "MPI_Bcast");
  return id;
}

/// Rank and size in `comm`, and the rank among the processes of `comm` on this node (the GPU to use).
[[nodiscard]] inline LaunchInfo mpi_launch_info(MPI_Comm comm) {
  LaunchInfo li;
  detail::check_mpi(MPI_Comm_rank(comm, &li.rank), "MPI_Comm_rank");
  detail::check_mpi(MPI_Comm_size(comm, &li.size), "MPI_Comm_size");
  MPI_Comm node = MPI_COMM_NULL;
  detail::check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, li.rank, MPI_INFO_NULL, &node),
                    "MPI_Comm_split_type");
  detail::check_mpi(MPI_Comm_rank(node, &li.local_rank), "MPI_Comm_rank (node)");
  MPI_Comm_free(&node);
  return li;
}

}  // namespace dualpipe
