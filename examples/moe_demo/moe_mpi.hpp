// moe_demo/moe_mpi.hpp: dualpipe-moe-demo with one grid rank per MPI process (--comm mpi). Built into the
// program when dualpipe::mpi is (DUALPIPE_HAS_MPI).
//
//   mpirun -np 4 dualpipe-moe-demo --comm mpi --ranks 2 --ep 2     same runs, same result lines as in-process
//
// The first P x E processes of MPI_COMM_WORLD form an MpiGrid (ep fastest, as moe_grid says); each runs
// run_rank with the pipeline's MpiCommunicator on its pp group and an MpiExpertComm (MPI_Ialltoallv) on its
// ep group, on the same modelled link. Every rank's summary goes to rank 0 (MpiCommunicator::gather), which
// alone builds the report and prints. A failing rank ends the whole job (MPI_Abort), naming the rank, chunk
// and phase on stderr.
#pragma once

#include <mpi.h>

#include <cstring>
#include <optional>
#include <vector>

#include "dualpipe/mpi.hpp"
#include "moe_run.hpp"

namespace dualpipe::moe_demo {

/// This process's rank in MPI_COMM_WORLD (0 when MPI is not initialized).
[[nodiscard]] inline int mpi_world_rank() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return 0;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

/// Runs `c` with one grid rank per process; collective over MPI_COMM_WORLD. The report on world rank 0,
/// nothing elsewhere. Throws ConfigError (on every process, before anything is sent) when the job is too small.
[[nodiscard]] inline std::optional<MoeReport> run_mpi(MoeConfig c) {
  c.comm = "mpi";
  validate(c);
  int world_rank = 0, world_size = 1;
  dualpipe::detail::mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank), "MPI_Comm_rank");
  dualpipe::detail::mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &world_size), "MPI_Comm_size");
  const int needed = c.ranks * c.spec.ep;
  if (needed > world_size)
    throw ConfigError("--comm mpi: " + std::to_string(c.ranks) + " ranks x ep " + std::to_string(c.spec.ep) + " need " +
                      std::to_string(needed) + " processes but the job has " + std::to_string(world_size) +
                      " (mpirun -np " + std::to_string(needed) + ")");
  MPI_Comm first = MPI_COMM_NULL;
  dualpipe::detail::mpi_check(
      MPI_Comm_split(MPI_COMM_WORLD, world_rank < needed ? 0 : MPI_UNDEFINED, world_rank, &first), "MPI_Comm_split");
  const MpiComm first_owned(first);
  if (first == MPI_COMM_NULL) return std::nullopt;
  const MpiGrid grid(moe_grid(c), first);
  MpiCommunicator pipeline = grid.communicator(GridDim::pp);
  pipeline.check_chunks(c.spec.chunks);
  MpiExpertComm experts(grid.native(GridDim::ep));
  LinkedExpertComm<MpiExpertComm> linked(experts, c.link);
  const MpiCommunicator all(first);
  return visit_schedule(c.schedule, [&](auto schedule) -> std::optional<MoeReport> {
    using Schedule = decltype(schedule);
    const RankRun run = run_rank<Schedule>(pipeline, linked, c, grid.rank());
    const std::vector<double> timeline = flatten_timeline(run.checked);
    const auto gathered = all.gather(std::as_bytes(std::span(run.summary)));
    const auto timelines = all.gather(std::as_bytes(std::span(timeline)));
    if (grid.rank() != 0) return std::nullopt;
    auto doubles = [](const std::vector<std::byte>& bytes) {
      std::vector<double> v(bytes.size() / sizeof(double));
      std::memcpy(v.data(), bytes.data(), v.size() * sizeof(double));
      return v;
    };
    std::vector<std::vector<double>> summaries;
    for (const auto& bytes : gathered) summaries.push_back(doubles(bytes));
    MoeReport r = make_report(c, Schedule::modules_per_rank, summaries, run_sequential(c.spec));
    for (const auto& bytes : timelines)
      r.checked.push_back(unflatten_timeline(doubles(bytes), &MoeStage<LinkedExpertComm<MpiExpertComm>>::phase_name));
    return r;
  });
}

}  // namespace dualpipe::moe_demo
