// dualpipe/nccl.hpp: the opt-in NCCL part (link dualpipe::nccl): NcclError, the NCCL communicator with its
// watchdog (owning or borrowing its ncclComm_t), the unique-id bootstrap from environment variables or a
// shared file, the NCCL process grid, the device gradient reduction and the expert group's all-to-all
// (NcclExpertComm). The MPI bootstrap (dualpipe/nccl/mpi_bootstrap.hpp) needs MPI and is included separately.
#pragma once

#include "dualpipe/cuda.hpp"
#include "dualpipe/nccl/bootstrap.hpp"
#include "dualpipe/nccl/communicator.hpp"
#include "dualpipe/nccl/error.hpp"
#include "dualpipe/nccl/expert_comm.hpp"
#include "dualpipe/nccl/gradient_reducer.hpp"
#include "dualpipe/nccl/grid.hpp"
