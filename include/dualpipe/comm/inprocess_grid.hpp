// dualpipe/comm/inprocess_grid.hpp: a ProcessGrid of threads: one InProcessWorld per group of each
// dimension, so that thread-rank r gets its pipeline communicator, its data-parallel communicator, ...
//
//   InProcessGrid grid(ProcessGrid(8, {.pp = 4, .dp = 2}, "pp,dp"));
//   run_ranks(8, [&](int r) {
//     InProcessCommunicator& pp = grid.communicator(GridDim::pp, r);   // rank grid.grid().coord(r, pp) of 4
//     InProcessCommunicator& dp = grid.communicator(GridDim::dp, r);   // rank grid.grid().coord(r, dp) of 2
//     Pipeline<DualPipe, InProcessCommunicator, MyStage> pipe(pp, {&s0, &s1});
//     ...
//   });
//
// Each group is a world of its own: a message, commit, abort or reset on one never touches another (an
// abort of rank r's pipeline ends the steps of its pipeline group only; the other groups go on, as they
// would with MPI sub-communicators, until they wait on a rank of the failed group).
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/comm/process_grid.hpp"

namespace dualpipe {

/// Every group of every dimension of a ProcessGrid, as in-process worlds.
class InProcessGrid {
public:
  /// Builds groups(d) worlds of size(d) ranks for each dimension d. `spin` as InProcessWorld's.
  explicit InProcessGrid(ProcessGrid grid, int spin = 16) : _grid(std::move(grid)) {
    for (GridDim d : all_grid_dims) {
      auto& worlds = _worlds[static_cast<std::size_t>(d)];
      for (int g = 0; g < _grid.groups(d); ++g) worlds.push_back(std::make_unique<InProcessWorld>(_grid.size(d), spin));
    }
  }
  InProcessGrid(const InProcessGrid&) = delete;
  InProcessGrid& operator=(const InProcessGrid&) = delete;

  /// The layout.
  [[nodiscard]] const ProcessGrid& grid() const noexcept { return _grid; }
  /// Rank `rank`'s group of dimension `d` as a world (its members are the ranks grid().group(d, rank)).
  [[nodiscard]] InProcessWorld& world(GridDim d, int rank) {
    return *_worlds[static_cast<std::size_t>(d)][static_cast<std::size_t>(_grid.group_index(d, rank))];
  }
  /// Rank `rank`'s communicator in its group of dimension `d`: its rank there is grid().coord(rank, d).
  /// Throws ConfigError for a rank outside the world.
  [[nodiscard]] InProcessCommunicator& communicator(GridDim d, int rank) {
    return world(d, rank).communicator(_grid.coord(rank, d));
  }
  /// Resets every world (InProcessWorld::reset): call it only while no rank is inside a communicator.
  void reset() noexcept {
    for (auto& worlds : _worlds)
      for (auto& w : worlds) w->reset();
  }

private:
  ProcessGrid _grid;
  std::array<std::vector<std::unique_ptr<InProcessWorld>>, 4> _worlds;  // by GridDim, by group index
};

}  // namespace dualpipe
