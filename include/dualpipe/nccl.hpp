// dualpipe/nccl.hpp: the opt-in NCCL part (link dualpipe::nccl): NcclError, the NCCL communicator with its
// watchdog, and the unique-id bootstrap from environment variables or a shared file. The MPI bootstrap
// (dualpipe/comm/nccl_mpi_bootstrap.hpp) needs MPI and is included separately.
#pragma once

#include "dualpipe/comm/nccl_bootstrap.hpp"
#include "dualpipe/comm/nccl_communicator.hpp"
#include "dualpipe/cuda.hpp"
#include "dualpipe/cuda/nccl_error.hpp"
