// dualpipe/runtime/tensors.hpp: a chunk's boundary as several tensors whose sizes may change per chunk.
//
// A stage may declare its input and its output as a list of tensors (input_tensors(), output_tensors():
// runtime/stage.hpp), each a TensorSpec: bytes per row, the most rows a chunk may have, and whether the
// tensor carries a gradient back. Every boundary of the model has the same number of tensors T; a chunk's
// tensor t has rows(b, t) rows, given per step by a ChunkSizes table (or max_rows when no table is given).
// The library packs a chunk's tensors back to back in one chunk buffer (sized at the maxima, so nothing is
// allocated after the first step), sends exactly the chunk's bytes, and hands the stage a BytesList: one
// span per tensor, a view with no allocation. A gradient message carries only the tensors that need one;
// in the gradient lists, a tensor without a gradient is an empty span at its place.
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <string>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/error.hpp"

namespace dualpipe {

/// Most tensors one boundary may have (BytesList holds them inline: no allocation per op).
inline constexpr std::size_t max_boundary_tensors = 8;

/// One tensor of a stage's input or output.
struct TensorSpec {
  std::size_t row_bytes = 0;  ///< Bytes of one row (for example hidden x sizeof(element)).
  std::size_t max_rows = 1;   ///< The most rows a chunk may have: the buffers are sized for it.
  bool needs_grad = true;     ///< Whether the backward sends a gradient of it (a mask: false).
  /// Bytes of the tensor with `rows` rows.
  [[nodiscard]] constexpr std::size_t bytes(std::size_t rows) const noexcept { return rows * row_bytes; }
  /// Bytes of the tensor at its maximum.
  [[nodiscard]] constexpr std::size_t max_bytes() const noexcept { return max_rows * row_bytes; }
};

/// The per-step size table: chunk b's tensor t has rows[b * tensors + t] rows (b is the batch chunk).
/// Empty: every tensor of every chunk has its TensorSpec::max_rows (fixed sizes).
struct ChunkSizes {
  std::span<const std::size_t> rows;  ///< Batch chunk x tensor, row-major.
  std::size_t tensors = 1;            ///< T: tensors per boundary (the row length of the table).
  [[nodiscard]] bool empty() const noexcept { return rows.empty(); }
  /// Rows of chunk b's tensor t (the table must hold them).
  [[nodiscard]] std::size_t at(std::size_t b, std::size_t t) const noexcept { return rows[b * tensors + t]; }
};

/// A chunk's tensors as byte spans, packed back to back from one base: held inline (up to
/// max_boundary_tensors), so building one allocates nothing.
template <class Bytes>
class BytesList {
public:
  using value_type = Bytes;

  BytesList() = default;

  /// Appends the next tensor's span.
  void push_back(Bytes b) {
    if (_n == max_boundary_tensors)
      throw Error("BytesList: more than " + std::to_string(max_boundary_tensors) + " tensors");
    _items[_n++] = b;
  }
  /// Number of tensors.
  [[nodiscard]] std::size_t size() const noexcept { return _n; }
  [[nodiscard]] bool empty() const noexcept { return _n == 0; }
  /// Tensor i's bytes (empty for a tensor that carries no gradient, in a gradient list).
  [[nodiscard]] Bytes operator[](std::size_t i) const noexcept { return _items[i]; }
  [[nodiscard]] const Bytes* begin() const noexcept { return _items.data(); }
  [[nodiscard]] const Bytes* end() const noexcept { return _items.data() + _n; }
  /// Every tensor as one span (they are packed back to back): what a single-tensor stage is given.
  [[nodiscard]] Bytes packed() const noexcept { return _packed; }
  /// Sets the span that covers every tensor.
  void set_packed(Bytes b) noexcept { _packed = b; }

private:
  std::array<Bytes, max_boundary_tensors> _items{};
  std::size_t _n = 0;
  Bytes _packed{};
};

/// The tensors a stage reads.
using ConstBytesList = BytesList<ConstBytes>;
/// The tensors a stage writes.
using MutableBytesList = BytesList<MutableBytes>;

/// A stage's input or output layout: its tensors, at most max_boundary_tensors.
class TensorLayout {
public:
  TensorLayout() = default;
  /// The layout of `specs`. Throws ConfigError for more than max_boundary_tensors.
  explicit TensorLayout(std::span<const TensorSpec> specs) {
    if (specs.size() > max_boundary_tensors)
      throw ConfigError("a stage declares " + std::to_string(specs.size()) + " tensors, at most " +
                        std::to_string(max_boundary_tensors) + " are supported");
    for (const TensorSpec& s : specs) _specs[_n++] = s;
  }
  [[nodiscard]] std::size_t size() const noexcept { return _n; }
  [[nodiscard]] const TensorSpec& operator[](std::size_t i) const noexcept { return _specs[i]; }
  /// Bytes of the largest chunk (the buffer size), or of its gradient.
  [[nodiscard]] std::size_t max_bytes(bool grad = false) const noexcept {
    std::size_t n = 0;
    for (std::size_t t = 0; t < _n; ++t)
      if (!grad || _specs[t].needs_grad) n += _specs[t].max_bytes();
    return n;
  }
  /// Bytes of chunk b (its gradient when `grad`), from `sizes` (or the maxima when it is empty).
  [[nodiscard]] std::size_t bytes(const ChunkSizes& sizes, std::size_t b, bool grad = false) const noexcept {
    std::size_t n = 0;
    for (std::size_t t = 0; t < _n; ++t)
      if (!grad || _specs[t].needs_grad) n += _specs[t].bytes(rows(sizes, b, t));
    return n;
  }
  /// Rows of chunk b's tensor t.
  [[nodiscard]] std::size_t rows(const ChunkSizes& sizes, std::size_t b, std::size_t t) const noexcept {
    return sizes.empty() ? _specs[t].max_rows : sizes.at(b, t);
  }
  /// Splits `base` (a chunk buffer of at least bytes(sizes, b, grad)) into chunk b's tensors.
  template <class Bytes>
  [[nodiscard]] BytesList<Bytes> split(Bytes base, const ChunkSizes& sizes, std::size_t b, bool grad = false) const {
    BytesList<Bytes> list;
    if (base.empty() && bytes(sizes, b, grad) > 0) return list;  // no buffer here (first stage's input grad)
    std::size_t at = 0;
    for (std::size_t t = 0; t < _n; ++t) {
      const std::size_t n = !grad || _specs[t].needs_grad ? _specs[t].bytes(rows(sizes, b, t)) : 0;
      list.push_back(base.subspan(at, n));
      at += n;
    }
    list.set_packed(base.first(at));
    return list;
  }
  friend bool operator==(const TensorLayout& a, const TensorLayout& b) noexcept {
    if (a._n != b._n) return false;
    for (std::size_t t = 0; t < a._n; ++t)
      if (a._specs[t].row_bytes != b._specs[t].row_bytes || a._specs[t].max_rows != b._specs[t].max_rows ||
          a._specs[t].needs_grad != b._specs[t].needs_grad)
        return false;
    return true;
  }

private:
  std::array<TensorSpec, max_boundary_tensors> _specs{};
  std::size_t _n = 0;
};

}  // namespace dualpipe
