// dualpipe/mpi/grid.hpp: a ProcessGrid over MPI: one sub-communicator per dimension (MPI_Comm_split), the
// pipeline's MpiCommunicator on the pp one.
//
//   MpiSession session(&argc, &argv);
//   MpiGrid grid(ProcessGrid(session.world_size(), {.pp = 4, .dp = 2}, "pp,dp"));   // collective
//   std::puts(grid.grid().describe(grid.rank()).c_str());
//   MpiCommunicator pipe = grid.communicator(GridDim::pp);       // the pipeline's (its own duplicate)
//   MpiCommunicator grads = grid.communicator(GridDim::pp);      // the gradient reduction's copies
//   MpiCommunicator replicas = grid.communicator(GridDim::dp);   // and replicas
//   Pipeline<DualPipe, MpiCommunicator, MyStage> pipeline(pipe, {&s0, &s1});
//
// Rank r of the parent is grid rank r; its rank in the group of dimension d is its coordinate along d
// (split with colour = ProcessGrid::group_index, key = the coordinate).
//
// Failure in a grid: MpiCommunicator::abort (what the runtime calls when a step fails) prints where the
// failure started, naming the rank in its communicator and in MPI_COMM_WORLD, and ends the WHOLE job with
// MPI_Abort(MPI_COMM_WORLD): every pipeline group, not only the failing one, exits non-zero.
#pragma once

#include <mpi.h>

#include <array>
#include <cstddef>
#include <string>
#include <utility>

#include "dualpipe/comm/process_grid.hpp"
#include "dualpipe/mpi/communicator.hpp"
#include "dualpipe/mpi/session.hpp"

namespace dualpipe {

/// An MPI communicator the object frees (MPI_Comm_free) when it goes, unless MPI was finalized already.
class MpiComm {
public:
  /// Holds nothing (MPI_COMM_NULL).
  MpiComm() = default;
  /// Takes ownership of `comm` (MPI_COMM_NULL allowed; never MPI_COMM_WORLD or MPI_COMM_SELF).
  explicit MpiComm(MPI_Comm comm) noexcept : _comm(comm) {}
  MpiComm(MpiComm&& other) noexcept : _comm(std::exchange(other._comm, MPI_COMM_NULL)) {}
  MpiComm& operator=(MpiComm&& other) noexcept {
    if (this != &other) {
      free();
      _comm = std::exchange(other._comm, MPI_COMM_NULL);
    }
    return *this;
  }
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;
  ~MpiComm() { free(); }

  /// The communicator (still owned).
  [[nodiscard]] MPI_Comm get() const noexcept { return _comm; }

private:
  void free() noexcept {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && _comm != MPI_COMM_NULL) MPI_Comm_free(&_comm);
    _comm = MPI_COMM_NULL;
  }
  MPI_Comm _comm = MPI_COMM_NULL;
};

/// Every dimension's sub-communicator of a ProcessGrid over `parent`'s ranks (this process's groups).
class MpiGrid {
public:
  /// Splits `parent` (collective over it) once per dimension. Throws ConfigError when the parent's size is
  /// not the grid's world size or MPI is not initialized.
  explicit MpiGrid(ProcessGrid grid, MPI_Comm parent = MPI_COMM_WORLD) : _grid(std::move(grid)) {
    int initialized = 0;
    detail::mpi_check(MPI_Initialized(&initialized), "MPI_Initialized");
    if (!initialized) throw ConfigError("MpiGrid needs MPI to be initialized: create an MpiSession first");
    int size = 0;
    detail::mpi_check(MPI_Comm_size(parent, &size), "MPI_Comm_size");
    detail::mpi_check(MPI_Comm_rank(parent, &_rank), "MPI_Comm_rank");
    if (size != _grid.world_size())
      throw ConfigError("MpiGrid: the grid has " + std::to_string(_grid.world_size()) +
                        " ranks but the MPI "
                        "communicator has " +
                        std::to_string(size) + " processes");
    for (GridDim d : all_grid_dims) {
      MPI_Comm sub = MPI_COMM_NULL;
      detail::mpi_check(MPI_Comm_split(parent, _grid.group_index(d, _rank), _grid.coord(_rank, d), &sub),
                        "MPI_Comm_split");
      _comms[static_cast<std::size_t>(d)] = MpiComm(sub);
    }
  }

  /// The layout.
  [[nodiscard]] const ProcessGrid& grid() const noexcept { return _grid; }
  /// This process's grid rank (its rank in the parent).
  [[nodiscard]] int rank() const noexcept { return _rank; }
  /// This process's coordinate along `d` (its rank in native(d)).
  [[nodiscard]] int coord(GridDim d) const { return _grid.coord(_rank, d); }
  /// This process's group of dimension `d`, as an MPI communicator (owned by the grid).
  [[nodiscard]] MPI_Comm native(GridDim d) const noexcept { return _comms[static_cast<std::size_t>(d)].get(); }
  /// A new MpiCommunicator on this process's group of dimension `d` (its own duplicate; collective over
  /// the group). Make one per use that commits on its own: the pipeline, the gradient reduction.
  [[nodiscard]] MpiCommunicator communicator(GridDim d, MpiOptions options = {}) const {
    return MpiCommunicator(native(d), options);
  }
  /// The grid's line for this process (ProcessGrid::describe).
  [[nodiscard]] std::string describe() const { return _grid.describe(_rank); }

private:
  ProcessGrid _grid;
  int _rank = 0;
  std::array<MpiComm, 4> _comms;  // by GridDim
};

}  // namespace dualpipe
