// dualpipe/nccl/grid.hpp: a ProcessGrid over NCCL: one communicator per dimension for this rank's groups,
// split from a parent communicator (ncclCommSplit) or joined with one unique id per group, each owned by an
// RAII NcclComm; the pipeline borrows the pp one (NcclBorrow, nccl/communicator.hpp).
//
//   ncclComm_t world = ...;                                         // the framework's: rank r = grid rank r
//   NcclGrid grid(ProcessGrid(8, {.pp = 4, .dp = 2}, "pp,dp"), world);   // collective over `world`
//   NcclCommunicator pipe_comm(NcclBorrow{grid.communicator(GridDim::pp), my_comm_stream});
//   NcclComm grads = grid.split(GridDim::dp);                      // another one, of this rank's dp group
//
//   // without a parent: rank 0 makes one id per group, every rank gets the same table (MPI_Bcast, a file)
//   NcclGridIds ids = NcclGridIds::make(pgrid);                     // on rank 0
//   NcclGrid grid(pgrid, rank, ids, local_device);                  // every rank
//
// Rank r of the parent is grid rank r; its rank in the group of dimension d is its coordinate along d
// (colour = ProcessGrid::group_index, key = the coordinate), as MpiGrid has it. Every communicator here is
// made when the user asks (the constructor, split()): the library never makes one behind the user's back.
// New communicators are non-blocking by default (NcclGridOptions::blocking), as NcclCommunicator's own;
// the grid waits (bounded) until each is ready.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/comm/process_grid.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/nccl/bootstrap.hpp"
#include "dualpipe/nccl/detail/finalize.hpp"
#include "dualpipe/nccl/error.hpp"

namespace dualpipe {

/// An NCCL communicator this object owns: when it goes, it is finalised and destroyed (aborted when
/// finalising fails or takes over 10 s). Move-only. Lend it with get() (NcclBorrow).
class NcclComm {
public:
  /// Holds nothing.
  NcclComm() = default;
  /// Takes ownership of `comm` (null allowed).
  explicit NcclComm(ncclComm_t comm) noexcept : _comm(comm) {}
  NcclComm(NcclComm&& o) noexcept : _comm(std::exchange(o._comm, nullptr)) {}
  NcclComm& operator=(NcclComm&& o) noexcept {
    if (this != &o) {
      reset();
      _comm = std::exchange(o._comm, nullptr);
    }
    return *this;
  }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;
  ~NcclComm() { reset(); }

  /// The communicator (still owned), or null.
  [[nodiscard]] ncclComm_t get() const noexcept { return _comm; }
  /// Whether it holds one.
  explicit operator bool() const noexcept { return _comm != nullptr; }
  /// Gives the communicator up: the caller owns it now.
  [[nodiscard]] ncclComm_t release() noexcept { return std::exchange(_comm, nullptr); }
  /// Aborts it (ncclCommAbort: ends its kernels still waiting for a peer) and holds nothing afterwards: what
  /// an owner does after a borrower reported a failure under NcclFailurePolicy::report_only.
  void abort() noexcept {
    if (_comm) (void)ncclCommAbort(_comm);
    _comm = nullptr;
  }
  /// Finalises and destroys it now (aborts it when that fails); holds nothing afterwards.
  void reset() noexcept {
    if (!_comm) return;
    detail::finalize_or_abort(_comm);
    _comm = nullptr;
  }

private:
  ncclComm_t _comm = nullptr;
};

/// One NCCL unique id per group of each dimension: ids[d][group index] (ProcessGrid::group_index). Every
/// rank needs the same table: rank 0 makes it and sends its bytes to the others (it is plain data).
struct NcclGridIds {
  std::array<std::vector<ncclUniqueId>, 4> ids;  ///< By GridDim, by group index.

  /// A fresh id for every group of every dimension of `grid` (ncclGetUniqueId). Throws NcclError.
  [[nodiscard]] static NcclGridIds make(const ProcessGrid& grid) {
    NcclGridIds out;
    for (GridDim d : all_grid_dims)
      for (int g = 0; g < grid.groups(d); ++g) out.ids[static_cast<std::size_t>(d)].push_back(make_unique_id());
    return out;
  }
};

/// Options of an NcclGrid.
struct NcclGridOptions {
  std::vector<GridDim> dims;  ///< Dimensions to make communicators for; empty: every one of size > 1.
  bool blocking = false;      ///< ncclConfig_t::blocking of the new communicators.
  std::chrono::milliseconds init_timeout{120'000};  ///< Bound on each communicator's creation.
};

/// This rank's communicator of every chosen dimension of a ProcessGrid (see the file comment). Owns them
/// (NcclComm); borrows the parent, which must outlive it for split().
class NcclGrid {
public:
  /// Splits `parent` (its rank r is grid rank r) once per dimension. Collective over the parent: every rank
  /// calls it with the same grid and options. Throws ConfigError (the parent's size is not the grid's world
  /// size, a null parent), NcclError, TimeoutError.
  NcclGrid(ProcessGrid grid, ncclComm_t parent, NcclGridOptions options = {})
      : _grid(std::move(grid)), _parent(parent), _options(std::move(options)) {
    if (!parent) throw ConfigError("NcclGrid: the parent communicator is null");
    int size = 0, device = 0;
    DUALPIPE_NCCL_CHECK(ncclCommCount(parent, &size));
    DUALPIPE_NCCL_CHECK(ncclCommUserRank(parent, &_rank));
    DUALPIPE_NCCL_CHECK(ncclCommCuDevice(parent, &device));
    _device = device;
    if (size != _grid.world_size())
      throw ConfigError("NcclGrid: the grid has " + std::to_string(_grid.world_size()) +
                        " ranks but the parent NCCL communicator has " + std::to_string(size));
    for (GridDim d : chosen_dims()) _comms[index(d)] = split(d);
  }

  /// Joins rank `rank`'s group of each dimension with the group's id from `ids` (every rank of the grid
  /// calls it), on CUDA device `device` (-1: the current one). Throws ConfigError (a rank outside the grid,
  /// an id table of the wrong shape), NcclError, TimeoutError.
  NcclGrid(ProcessGrid grid, int rank, const NcclGridIds& ids, int device = -1, NcclGridOptions options = {})
      : _grid(std::move(grid)), _rank(rank), _options(std::move(options)) {
    (void)_grid.coord(rank, GridDim::pp);  // ConfigError for a rank outside the grid
    _device = device >= 0 ? device : current_device();
    DeviceGuard on(_device);
    for (GridDim d : chosen_dims()) {
      const auto& table = ids.ids[index(d)];
      if (static_cast<int>(table.size()) != _grid.groups(d))
        throw ConfigError("NcclGrid: the id table has " + std::to_string(table.size()) + " ids for dimension " +
                          std::string(grid_dim_name(d)) + ", the grid " + std::to_string(_grid.groups(d)) +
                          " groups (make it with NcclGridIds::make on the same grid)");
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = _options.blocking ? 1 : 0;
      ncclComm_t c = nullptr;
      const ncclResult_t r =
          ncclCommInitRankConfig(&c, _grid.size(d), table[static_cast<std::size_t>(_grid.group_index(d, rank))],
                                 _grid.coord(rank, d), &config);
      NcclComm owned(c);
      if (r != ncclSuccess && r != ncclInProgress) {
        owned.abort();
        throw NcclError(format_nccl_error(r, "ncclCommInitRankConfig (NcclGrid)", __FILE__, __LINE__),
                        static_cast<int>(r));
      }
      wait_ready(owned, d);
      _comms[index(d)] = std::move(owned);
    }
  }

  NcclGrid(const NcclGrid&) = delete;
  NcclGrid& operator=(const NcclGrid&) = delete;

  /// The layout.
  [[nodiscard]] const ProcessGrid& grid() const noexcept { return _grid; }
  /// This process's grid rank.
  [[nodiscard]] int rank() const noexcept { return _rank; }
  /// The CUDA device of its communicators.
  [[nodiscard]] int device() const noexcept { return _device; }
  /// Whether it made a communicator for dimension `d`.
  [[nodiscard]] bool has(GridDim d) const noexcept { return static_cast<bool>(_comms[index(d)]); }
  /// This rank's communicator of dimension `d` (owned by the grid; lend it): its rank there is
  /// grid().coord(rank(), d). Throws ConfigError when the grid made none for `d`.
  [[nodiscard]] ncclComm_t communicator(GridDim d) const {
    if (!has(d))
      throw ConfigError("NcclGrid: no communicator for dimension " + std::string(grid_dim_name(d)) +
                        " (NcclGridOptions::dims leaves it out, or its size is 1)");
    return _comms[index(d)].get();
  }

  /// Another communicator of this rank's group of dimension `d`, split from the parent: e.g. a gradient
  /// reduction's own, beside the pipeline's. Collective over the parent. Throws ConfigError for a grid made
  /// from ids (no parent), NcclError, TimeoutError.
  [[nodiscard]] NcclComm split(GridDim d) {
    return split(_grid.group_index(d, _rank), _grid.coord(_rank, d), grid_dim_name(d));
  }

  /// A communicator split from the parent with `colour` and `key` (ncclCommSplit; NCCL_SPLIT_NOCOLOR: none,
  /// an empty NcclComm). Collective over the parent. Throws as split(GridDim).
  [[nodiscard]] NcclComm split(int colour, int key, std::string_view what = "a group") {
    if (!_parent)
      throw ConfigError("NcclGrid: split needs the parent communicator; this grid was made from unique ids");
    DeviceGuard on(_device);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = _options.blocking ? 1 : 0;
    ncclComm_t c = nullptr;
    const ncclResult_t r = ncclCommSplit(_parent, colour, key, &c, &config);
    NcclComm owned(c);
    if (r != ncclSuccess && r != ncclInProgress) {
      owned.abort();
      throw NcclError(
          format_nccl_error(r, ("ncclCommSplit (NcclGrid, " + std::string(what) + ")").c_str(), __FILE__, __LINE__),
          static_cast<int>(r));
    }
    if (owned) wait_ready(owned, what);
    return owned;
  }

private:
  static std::size_t index(GridDim d) noexcept { return static_cast<std::size_t>(d); }

  [[nodiscard]] std::vector<GridDim> chosen_dims() const {
    if (!_options.dims.empty()) return _options.dims;
    std::vector<GridDim> out;
    for (GridDim d : all_grid_dims)
      if (_grid.size(d) > 1) out.push_back(d);
    return out;
  }

  void wait_ready(NcclComm& c, GridDim d) { wait_ready(c, grid_dim_name(d)); }
  // Polls a non-blocking communicator until it is ready (bounded); aborts it on an error or timeout.
  void wait_ready(NcclComm& c, std::string_view what) {
    const auto deadline = deadline_after(_options.init_timeout);
    for (;;) {
      ncclResult_t st = ncclSuccess;
      const ncclResult_t q = ncclCommGetAsyncError(c.get(), &st);
      if (q != ncclSuccess) st = q;
      if (st == ncclSuccess) return;
      if (st != ncclInProgress) {
        c.abort();
        throw NcclError(format_nccl_error(st, ("NcclGrid: creating the " + std::string(what) + " communicator").c_str(),
                                          __FILE__, __LINE__),
                        static_cast<int>(st));
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        c.abort();
        throw TimeoutError("NcclGrid: rank " + std::to_string(_rank) + ": the " + std::string(what) +
                           " communicator was not ready within " + std::to_string(_options.init_timeout.count()) +
                           " ms (does every rank of the group create it?)");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  ProcessGrid _grid;
  ncclComm_t _parent = nullptr;  // borrowed; null for a grid made from ids
  int _rank = 0;
  int _device = 0;
  NcclGridOptions _options;
  std::array<NcclComm, 4> _comms;  // by GridDim
};

}  // namespace dualpipe
