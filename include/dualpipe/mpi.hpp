// dualpipe/mpi.hpp: the opt-in MPI part of the library (link dualpipe::mpi). One pipeline rank per process:
// MpiSession (MPI_Init_thread / MPI_Finalize guard), MpiCommunicator (the Communicator model over MPI) and
// MpiGrid (a ProcessGrid's sub-communicators); MpiProgress (who moves sends while a rank computes).
// The umbrella dualpipe/dualpipe.hpp does not include it, so programs without MPI never see mpi.h.
#pragma once

#include "dualpipe/mpi/communicator.hpp"
#include "dualpipe/mpi/expert_comm.hpp"
#include "dualpipe/mpi/grid.hpp"
#include "dualpipe/mpi/progress.hpp"
#include "dualpipe/mpi/session.hpp"
