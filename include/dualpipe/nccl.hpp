// dualpipe/nccl.hpp: the opt-in NCCL part (link dualpipe::nccl): NcclError, the NCCL communicator with its
// watchdog, and the unique-id bootstrap from environment variables or a shared file. The MPI bootstrap
// (dualpipe/nccl/mpi_bootstrap.hpp) needs MPI and is included separately.
#pragma once

#include "dualpipe/nccl/bootstrap.hpp"
#include "dualpipe/nccl/communicator.hpp"
#include "dualpipe/cuda.hpp"
#include "dualpipe/nccl/error.hpp"
