// dualpipe/comm/process_grid.hpp: ProcessGrid, the ranks of a job laid out as a PP x DP x EP x TP grid.
//
//   ProcessGrid grid(8, {.pp = 4, .dp = 2}, "pp,dp");
//   grid.describe(5)   == "grid: pp=4 dp=2 ep=1 tp=1 order=pp,dp rank 5 = (pp 1, dp 1)"
//   grid.group(GridDim::pp, 5) == {4, 5, 6, 7}     // rank 5's pipeline: its member i is pp coordinate i
//   grid.group(GridDim::dp, 5) == {1, 5}           // rank 5's data-parallel replicas of the same pp rank
//
// Order: the order lists the dimensions from the FASTEST-varying to the slowest (as Megatron's "tp-dp-pp"
// strings do): with "pp,dp", ranks 0..pp-1 are one pipeline (dp 0), the next pp ranks the next, so
//   rank = pp_coord + pp * (dp_coord + dp * (...)).
// The order must name every dimension of size > 1 and may name those of size 1; a dimension it leaves out
// has size 1 and sits after the named ones. A group of dimension d holds the ranks that differ only in their
// d coordinate, listed by that coordinate: a rank's index in its group IS its coordinate, so a communicator
// split with key = coordinate gives each rank the group rank the grid says.
// Pure arithmetic: no communicator here (comm/inprocess_grid.hpp, mpi/grid.hpp build them).
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/core/error.hpp"

namespace dualpipe {

/// A dimension of the grid: pipeline, data, expert and tensor parallel.
enum class GridDim { pp = 0, dp = 1, ep = 2, tp = 3 };

/// Every dimension, in the order the describe line prints their sizes.
inline constexpr std::array<GridDim, 4> all_grid_dims{GridDim::pp, GridDim::dp, GridDim::ep, GridDim::tp};

/// "pp", "dp", "ep", "tp".
[[nodiscard]] constexpr std::string_view grid_dim_name(GridDim d) noexcept {
  switch (d) {
    case GridDim::pp: return "pp";
    case GridDim::dp: return "dp";
    case GridDim::ep: return "ep";
    case GridDim::tp: return "tp";
  }
  return "?";
}

/// Sizes of the four dimensions (1 = not used).
struct GridSizes {
  int pp = 1;
  int dp = 1;
  int ep = 1;
  int tp = 1;
  [[nodiscard]] constexpr int operator[](GridDim d) const noexcept {
    switch (d) {
      case GridDim::pp: return pp;
      case GridDim::dp: return dp;
      case GridDim::ep: return ep;
      case GridDim::tp: return tp;
    }
    return 1;
  }
};

/// Where every rank of a world sits in a PP x DP x EP x TP grid, and which ranks share each group.
class ProcessGrid {
public:
  /// A grid of `world_size` ranks. `order` lists dimension names, fastest-varying first, separated by commas
  /// ("pp,dp"; spaces allowed). Throws ConfigError when a size is below 1, the sizes do not multiply to the
  /// world size, or the order names an unknown dimension, names one twice, or leaves out one of size > 1.
  ProcessGrid(int world_size, GridSizes sizes, std::string_view order = "pp,dp,ep,tp")
      : ProcessGrid(world_size, sizes, parse_order(order)) {}

  /// The same with the order as a list of dimensions, fastest-varying first.
  ProcessGrid(int world_size, GridSizes sizes, std::vector<GridDim> order)
      : _world(world_size), _sizes(sizes), _named(order.size()) {
    std::string shape;
    for (GridDim d : all_grid_dims) {
      if (!shape.empty()) shape += ' ';
      shape += grid_dim_name(d);
      shape += '=';
      shape += std::to_string(sizes[d]);
    }
    long long product = 1;
    for (GridDim d : all_grid_dims) {
      if (sizes[d] < 1)
        throw ConfigError("ProcessGrid: every dimension must have size at least 1 (got " +
                          std::string(grid_dim_name(d)) + "=" + std::to_string(sizes[d]) + " in " + shape + ")");
      product *= sizes[d];
    }
    if (world_size < 1 || product != world_size)
      throw ConfigError("ProcessGrid: the sizes must multiply to the world size: " + shape + " makes " +
                        std::to_string(product) + " ranks, the world has " + std::to_string(world_size));
    std::array<bool, 4> seen{};
    for (GridDim d : order) {
      const auto i = static_cast<std::size_t>(d);
      if (i >= 4) throw ConfigError("ProcessGrid: the order names an unknown dimension " + std::to_string(i));
      if (seen[i])
        throw ConfigError("ProcessGrid: the order names " + std::string(grid_dim_name(d)) +
                          " twice (order=" + join(order) + ")");
      seen[i] = true;
    }
    for (GridDim d : all_grid_dims)
      if (!seen[static_cast<std::size_t>(d)]) {
        if (sizes[d] > 1)
          throw ConfigError(
              "ProcessGrid: the order must name every dimension of size > 1: " + std::string(grid_dim_name(d)) + "=" +
              std::to_string(sizes[d]) + " is missing (order=" + join(order) + ")");
        order.push_back(d);  // size 1: anywhere; after the named ones
      }
    _order = order;
    int stride = 1;
    for (GridDim d : _order) {
      _stride[static_cast<std::size_t>(d)] = stride;
      stride *= sizes[d];
    }
  }

  /// Ranks in the world.
  [[nodiscard]] int world_size() const noexcept { return _world; }
  /// Size of dimension `d`.
  [[nodiscard]] int size(GridDim d) const noexcept { return _sizes[d]; }
  /// All four sizes.
  [[nodiscard]] const GridSizes& sizes() const noexcept { return _sizes; }
  /// The dimensions, fastest-varying first (the named ones, then those left out).
  [[nodiscard]] const std::vector<GridDim>& order() const noexcept { return _order; }

  /// Rank `rank`'s coordinate along `d`. Throws ConfigError for a rank outside the world.
  [[nodiscard]] int coord(int rank, GridDim d) const {
    check_rank(rank);
    const auto i = static_cast<std::size_t>(d);
    return (rank / _stride[i]) % _sizes[d];
  }
  /// Rank `rank`'s coordinates, indexed by GridDim.
  [[nodiscard]] std::array<int, 4> coords(int rank) const {
    std::array<int, 4> c{};
    for (GridDim d : all_grid_dims) c[static_cast<std::size_t>(d)] = coord(rank, d);
    return c;
  }
  /// The rank at coordinates `c` (indexed by GridDim). Throws ConfigError for a coordinate out of range.
  [[nodiscard]] int rank_of(const std::array<int, 4>& c) const {
    int r = 0;
    for (GridDim d : all_grid_dims) {
      const int v = c[static_cast<std::size_t>(d)];
      if (v < 0 || v >= _sizes[d])
        throw ConfigError("ProcessGrid: coordinate " + std::string(grid_dim_name(d)) + " " + std::to_string(v) +
                          " is outside [0, " + std::to_string(_sizes[d]) + ")");
      r += v * _stride[static_cast<std::size_t>(d)];
    }
    return r;
  }

  /// Groups of dimension `d` (world size / size(d)).
  [[nodiscard]] int groups(GridDim d) const noexcept { return _world / _sizes[d]; }
  /// Which group of dimension `d` rank `rank` is in, in [0, groups(d)): its other coordinates, numbered in
  /// the grid's order (the colour of an MPI_Comm_split).
  [[nodiscard]] int group_index(GridDim d, int rank) const {
    check_rank(rank);
    int index = 0, stride = 1;
    for (GridDim e : _order) {
      if (e == d) continue;
      index += coord(rank, e) * stride;
      stride *= _sizes[e];
    }
    return index;
  }
  /// The ranks of rank `rank`'s group of dimension `d`, by their coordinate along d (so rank `rank` is
  /// member coord(rank, d)).
  [[nodiscard]] std::vector<int> group(GridDim d, int rank) const {
    std::array<int, 4> c = coords(rank);
    std::vector<int> out;
    out.reserve(static_cast<std::size_t>(_sizes[d]));
    for (int v = 0; v < _sizes[d]; ++v) {
      c[static_cast<std::size_t>(d)] = v;
      out.push_back(rank_of(c));
    }
    return out;
  }

  /// One line a person can check: "grid: pp=4 dp=2 ep=1 tp=1 order=pp,dp rank 5 = (pp 1, dp 1)". The order
  /// and the coordinates are the named dimensions' (all four when the order named them all).
  [[nodiscard]] std::string describe(int rank) const {
    check_rank(rank);
    // Appends one piece at a time: GCC 12 warns falsely (-Wrestrict) on some inlined `"literal" + string&&`.
    std::string s = "grid:";
    for (GridDim d : all_grid_dims) {
      s += ' ';
      s += grid_dim_name(d);
      s += '=';
      s += std::to_string(_sizes[d]);
    }
    const std::vector<GridDim> named(_order.begin(), _order.begin() + static_cast<std::ptrdiff_t>(_named));
    s += " order=";
    s += join(named);
    s += " rank ";
    s += std::to_string(rank);
    s += " = (";
    for (std::size_t i = 0; i < named.size(); ++i) {
      if (i) s += ", ";
      s += grid_dim_name(named[i]);
      s += ' ';
      s += std::to_string(coord(rank, named[i]));
    }
    return s + ")";
  }

  /// Parses "pp,dp" (names separated by commas, spaces ignored). Throws ConfigError naming an unknown name.
  [[nodiscard]] static std::vector<GridDim> parse_order(std::string_view text) {
    std::vector<GridDim> out;
    std::size_t at = 0;
    while (at <= text.size()) {
      std::size_t comma = text.find(',', at);
      if (comma == std::string_view::npos) comma = text.size();
      std::string_view name = text.substr(at, comma - at);
      while (!name.empty() && name.front() == ' ') name.remove_prefix(1);
      while (!name.empty() && name.back() == ' ') name.remove_suffix(1);
      bool found = false;
      for (GridDim d : all_grid_dims)
        if (grid_dim_name(d) == name) {
          out.push_back(d);
          found = true;
        }
      if (!found)
        throw ConfigError("ProcessGrid: unknown dimension '" + std::string(name) + "' in order '" + std::string(text) +
                          "' (choose from pp, dp, ep, tp)");
      at = comma + 1;
    }
    return out;
  }

private:
  void check_rank(int rank) const {
    if (rank < 0 || rank >= _world)
      throw ConfigError("ProcessGrid: rank must be in [0, " + std::to_string(_world) + ") (got rank " +
                        std::to_string(rank) + ")");
  }
  static std::string join(const std::vector<GridDim>& order) {
    std::string s;
    for (GridDim d : order) {
      if (!s.empty()) s += ',';
      s += grid_dim_name(d);
    }
    return s;
  }

  int _world;
  GridSizes _sizes;
  std::size_t _named;            // dimensions the order named (the first _named of _order)
  std::vector<GridDim> _order;   // fastest-varying first
  std::array<int, 4> _stride{};  // by GridDim
};

}  // namespace dualpipe
