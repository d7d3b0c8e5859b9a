// dualpipe/runtime/scatter.hpp: split a batch tensor into chunks along its batch dimension, and put the
// chunks back together (the reference's scatter / gather for one tensor).
//
// A tensor here is dense and row-major: `shape` (outermost first) and an element size in bytes. The batch
// dimension may be any dimension; chunk i is the tensor with the same shape except shape[batch_dim] /
// chunks rows along it, stored densely, and the chunks lie one after another: the layout Pipeline::step
// expects (chunk i = bytes [i*n, (i+1)*n)). gather() is scatter()'s inverse.
#pragma once

#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/error.hpp"

namespace dualpipe {

namespace detail {
struct SplitGeometry {
  std::size_t outer = 1;      // product of the dimensions before the batch dimension
  std::size_t chunk_run = 0;  // bytes of one chunk's rows under one outer index
  std::size_t row_run = 0;    // bytes of all rows under one outer index
  std::size_t total = 0;      // bytes of the whole tensor
};

inline SplitGeometry split_geometry(const char* who, std::span<const std::size_t> shape, std::size_t element_size,
                                    int batch_dim, int chunks) {
  const int rank = static_cast<int>(shape.size());
  const std::string fn = who;
  if (rank == 0) throw ConfigError(fn + ": a tensor with no dimensions has no batch dimension");
  const int dim = batch_dim < 0 ? batch_dim + rank : batch_dim;
  if (dim < 0 || dim >= rank)
    throw ConfigError(fn + ": batch_dim " + std::to_string(batch_dim) + " is outside a tensor of " +
                      std::to_string(rank) + " dimensions");
  if (chunks < 1) throw ConfigError(fn + ": chunks must be at least 1 (got chunks=" + std::to_string(chunks) + ")");
  if (element_size == 0) throw ConfigError(fn + ": element_size must be positive");
  const std::size_t rows = shape[static_cast<std::size_t>(dim)];
  if (rows % static_cast<std::size_t>(chunks) != 0)
    throw ConfigError(fn + ": dimension " + std::to_string(dim) + " has " + std::to_string(rows) +
                      " rows, not a multiple of chunks=" + std::to_string(chunks));
  SplitGeometry g;
  std::size_t inner = element_size;
  for (int d = 0; d < dim; ++d) g.outer *= shape[static_cast<std::size_t>(d)];
  for (int d = dim + 1; d < rank; ++d) inner *= shape[static_cast<std::size_t>(d)];
  g.row_run = rows * inner;
  g.chunk_run = rows / static_cast<std::size_t>(chunks) * inner;
  g.total = g.outer * g.row_run;
  return g;
}

inline void check_bytes(const char* who, const char* what, std::size_t expected, std::size_t got) {
  if (expected != got)
    throw ConfigError(std::string(who) + ": " + what + " must have " + std::to_string(expected) + " bytes, got " +
                      std::to_string(got));
}
}  // namespace detail

/// Writes `batch` (a tensor of `shape`, `element_size`-byte elements) into `out` as `chunks` equal chunks
/// along `batch_dim` (negative counts from the end), chunk after chunk. Throws ConfigError when the batch
/// dimension does not split evenly or a size does not match.
inline void scatter(ConstBytes batch, std::span<const std::size_t> shape, std::size_t element_size, int batch_dim,
                    int chunks, MutableBytes out) {
  const auto g = detail::split_geometry("scatter", shape, element_size, batch_dim, chunks);
  detail::check_bytes("scatter", "the batch", g.total, batch.size());
  detail::check_bytes("scatter", "the output", g.total, out.size());
  const std::size_t chunk_bytes = g.outer * g.chunk_run;
  for (std::size_t i = 0; i < static_cast<std::size_t>(chunks); ++i)
    for (std::size_t o = 0; o < g.outer; ++o)
      std::memcpy(out.data() + i * chunk_bytes + o * g.chunk_run, batch.data() + o * g.row_run + i * g.chunk_run,
                  g.chunk_run);
}

/// scatter() into a new buffer.
[[nodiscard]] inline std::vector<std::byte> scatter(ConstBytes batch, std::span<const std::size_t> shape,
                                                    std::size_t element_size, int batch_dim, int chunks) {
  std::vector<std::byte> out(batch.size());
  scatter(batch, shape, element_size, batch_dim, chunks, out);
  return out;
}

/// The inverse of scatter(): `chunked` holds `chunks` chunks one after another; `batch` receives the tensor
/// of `shape` (the whole batch's shape).
inline void gather(ConstBytes chunked, std::span<const std::size_t> shape, std::size_t element_size, int batch_dim,
                   int chunks, MutableBytes batch) {
  const auto g = detail::split_geometry("gather", shape, element_size, batch_dim, chunks);
  detail::check_bytes("gather", "the chunks", g.total, chunked.size());
  detail::check_bytes("gather", "the batch", g.total, batch.size());
  const std::size_t chunk_bytes = g.outer * g.chunk_run;
  for (std::size_t i = 0; i < static_cast<std::size_t>(chunks); ++i)
    for (std::size_t o = 0; o < g.outer; ++o)
      std::memcpy(batch.data() + o * g.row_run + i * g.chunk_run, chunked.data() + i * chunk_bytes + o * g.chunk_run,
                  g.chunk_run);
}

/// gather() into a new buffer.
[[nodiscard]] inline std::vector<std::byte> gather(ConstBytes chunked, std::span<const std::size_t> shape,
                                                   std::size_t element_size, int batch_dim, int chunks) {
  std::vector<std::byte> out(chunked.size());
  gather(chunked, shape, element_size, batch_dim, chunks, out);
  return out;
}

}  // namespace dualpipe
