// cpu_demo/mpi_run.hpp: the demo with one grid rank per MPI process (--comm mpi). Built into
// dualpipe-cpu-demo when dualpipe::mpi is (DUALPIPE_HAS_MPI); the rest of the demo does not know about MPI.
//
//   mpirun -np 4 dualpipe-cpu-demo --comm mpi                  same runs, same result lines as without mpirun
//   mpirun -np 8 dualpipe-cpu-demo --comm mpi --ranks 4 --dp 2  two pipelines of 4 ranks
//
// Each schedule runs on the first P x D processes of MPI_COMM_WORLD (DualPipeV on P/2 x D of them by
// default); the other processes sit that schedule out. They form an MpiGrid (pp fastest: processes
// [d*P, (d+1)*P) are replica d's pipeline) with three MpiCommunicators per process: the pipeline's and the
// gradient reduction's on the pp group, the reduction's replicas on the dp group. The per-rank work is the
// in-process run's run_rank<Schedule>: the same ops on the same numbers in the same order, so the result
// line is the same bit for bit (only comm=mpi differs). Grid rank 0 gathers every rank's summary and alone
// prints. A failing rank ends the whole job (MpiCommunicator::abort: MPI_Abort of MPI_COMM_WORLD, every
// pipeline group included), naming itself on stderr (its pipeline rank, and its world rank in a grid).
#pragma once

#include <mpi.h>

#include <optional>
#include <string>

#include "demo.hpp"
#include "dualpipe/mpi.hpp"

namespace dualpipe::cpu_demo {

/// Whether this process prints (world rank 0; every process when MPI is not initialized).
[[nodiscard]] inline bool mpi_prints() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return true;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank == 0;
}

/// Runs `cfg` with one rank per process; every process of MPI_COMM_WORLD must call it (collective). Returns
/// the report on world rank 0 and nothing elsewhere. Throws ConfigError on every process (before anything
/// is sent) when the job has fewer processes than cfg.ranks or the chunks do not fit the MPI tags. A failing
/// rank ends the whole job (MpiCommunicator::abort), naming itself on stderr.
[[nodiscard]] inline std::optional<DemoReport> run_demo_mpi(const DemoConfig& config) {
  DemoConfig cfg = config;
  cfg.comm = "mpi";
  validate(cfg);
  int world_rank = 0, world_size = 1;
  dualpipe::detail::mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank), "MPI_Comm_rank");
  dualpipe::detail::mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &world_size), "MPI_Comm_size");
  const std::string name(schedule_name(cfg.schedule));
  const int needed = grid_ranks(cfg);
  if (needed > world_size)
    throw ConfigError("--comm mpi: " + name + " needs " + std::to_string(needed) + " ranks" +
                      (cfg.dp > 1 ? " (" + std::to_string(cfg.ranks) + " x dp " + std::to_string(cfg.dp) + ")" : "") +
                      " but the job has " + std::to_string(world_size) + " processes (mpirun -np " +
                      std::to_string(needed) + " or more, or fewer --ranks)");

  // The first P x D processes, as a communicator of their own (MPI_COMM_NULL on the others).
  MPI_Comm first = MPI_COMM_NULL;
  const int color = world_rank < needed ? 0 : MPI_UNDEFINED;
  dualpipe::detail::mpi_check(MPI_Comm_split(MPI_COMM_WORLD, color, world_rank, &first), "MPI_Comm_split");
  const MpiComm first_owned(first);
  if (first == MPI_COMM_NULL) return std::nullopt;
  const MpiGrid grid(demo_grid(cfg), first);
  MpiCommunicator pipeline = grid.communicator(GridDim::pp);
  MpiCommunicator copies = grid.communicator(GridDim::pp);
  MpiCommunicator replicas = grid.communicator(GridDim::dp);
  pipeline.check_chunks(cfg.model.chunks);

  const SequentialRun seq = sequential_for(cfg);
  RankComms<MpiCommunicator> comms{pipeline, copies, cfg.dp > 1 ? &replicas : nullptr, grid.coord(GridDim::dp)};
  return visit_schedule(cfg.schedule, [&](auto schedule) -> std::optional<DemoReport> {
    return run_rank<decltype(schedule)>(comms, cfg, seq);
  });
}

}  // namespace dualpipe::cpu_demo
