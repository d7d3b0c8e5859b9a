// cpu_demo/mpi_run.hpp: the demo with one pipeline rank per MPI process (--comm mpi). Built into
// dualpipe-cpu-demo when dualpipe::mpi is (DUALPIPE_HAS_MPI); the rest of the demo does not know about MPI.
//
//   mpirun -np 4 dualpipe-cpu-demo --comm mpi        same runs, same result lines as without mpirun
//
// Each schedule runs on the first cfg.ranks processes of MPI_COMM_WORLD (DualPipeV on P/2 of them by
// default); the other processes sit that schedule out. The per-rank work is the in-process run's
// run_rank<Schedule>, with an MpiCommunicator instead of an InProcessCommunicator: the same ops on the same
// numbers in the same order, so the result line is the same bit for bit (only comm=mpi differs). Rank 0
// gathers every rank's summary over the communicator and alone prints.
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
  if (cfg.ranks > world_size)
    throw ConfigError("--comm mpi: " + name + " needs " + std::to_string(cfg.ranks) + " ranks but the job has " +
                      std::to_string(world_size) + " processes (mpirun -np " + std::to_string(cfg.ranks) +
                      " or more, or fewer --ranks)");

  // The first cfg.ranks processes, as a communicator of their own (MPI_COMM_NULL on the others).
  MPI_Comm first = MPI_COMM_NULL;
  const int color = world_rank < cfg.ranks ? 0 : MPI_UNDEFINED;
  dualpipe::detail::mpi_check(MPI_Comm_split(MPI_COMM_WORLD, color, world_rank, &first), "MPI_Comm_split");
  if (first == MPI_COMM_NULL) return std::nullopt;
  std::optional<MpiCommunicator> comm;
  try {
    comm.emplace(first);
  } catch (...) {
    MPI_Comm_free(&first);
    throw;
  }
  MPI_Comm_free(&first);  // the communicator holds its own duplicate
  comm->check_chunks(cfg.model.chunks);

  const SequentialRun seq = sequential_for(cfg);
  return visit_schedule(cfg.schedule, [&](auto schedule) -> std::optional<DemoReport> {
    return run_rank<decltype(schedule)>(*comm, cfg, seq);
  });
}

}  // namespace dualpipe::cpu_demo
