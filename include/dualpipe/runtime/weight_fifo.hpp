// dualpipe/runtime/weight_fifo.hpp: the FIFO of deferred weight-gradient groups (the reference's
// WeightGradStore). A `B<m>.<c>w` op runs a chunk's input gradient now and pushes one group, naming the
// (module, chunk) whose weight gradient is still owed; a `W` op pops the oldest group and runs it.
//
// The capacity is fixed when the FIFO is sized (from the schedule's peak depth), so pushing and popping
// never allocate; overflow and popping an empty FIFO are errors that name the op.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/trace.hpp"

namespace dualpipe {

/// One deferred weight-gradient group: the weight gradient of one chunk of one module.
struct WeightGroup {
  int module = -1;  ///< Module of the rank whose weight gradient is owed.
  int chunk = -1;   ///< The module's own chunk index.
  friend constexpr bool operator==(const WeightGroup&, const WeightGroup&) = default;
};

/// Fixed-capacity FIFO of deferred weight-gradient groups (a ring buffer).
class WeightFifo {
public:
  /// An empty FIFO that holds up to `capacity` groups (allocates once, here).
  explicit WeightFifo(std::size_t capacity = 0) : _ring(capacity) {}

  /// Changes the capacity; the FIFO must be empty. Allocates only when the capacity changes.
  void set_capacity(std::size_t capacity) {
    if (_size != 0)
      throw Error("weight-gradient FIFO: set_capacity on a FIFO holding " + std::to_string(_size) + " groups");
    if (capacity != _ring.size()) _ring.assign(capacity, WeightGroup{});
    _head = 0;
  }

  /// Appends the group of a deferred backward. Throws Error naming `op` when the FIFO is full.
  void push(WeightGroup group, const Op& op = Op::Bw(-1, -1)) {
    if (_size == _ring.size())
      throw Error("weight-gradient FIFO: " + to_token(op) + " pushes onto a full FIFO (capacity " +
                  std::to_string(_ring.size()) + ")");
    _ring[(_head + _size) % _ring.size()] = group;
    ++_size;
    if (_size > _peak) _peak = _size;
  }

  /// Removes and returns the oldest group. Throws Error naming `op` (and its index, when given) when the
  /// FIFO is empty: a `W` with no deferred backward before it.
  WeightGroup pop(const Op& op = Op::W(), int op_index = -1) {
    if (_size == 0)
      throw Error("weight-gradient FIFO: " + to_token(op) +
                  (op_index >= 0 ? " (op " + std::to_string(op_index) + ")" : std::string()) +
                  " pops an empty FIFO: no deferred backward (B<m>.<c>w) is waiting");
    const WeightGroup g = _ring[_head];
    _head = (_head + 1) % _ring.size();
    --_size;
    return g;
  }

  /// The oldest group, without removing it; the FIFO must not be empty.
  [[nodiscard]] const WeightGroup& front() const {
    if (_size == 0) throw Error("weight-gradient FIFO: front() of an empty FIFO");
    return _ring[_head];
  }

  /// Drops every group (after a failed step) and forgets the peak.
  void clear() noexcept {
    _head = 0;
    _size = 0;
    _peak = 0;
  }

  /// Groups waiting.
  [[nodiscard]] std::size_t size() const noexcept { return _size; }
  /// True when no group is waiting.
  [[nodiscard]] bool empty() const noexcept { return _size == 0; }
  /// Groups the FIFO can hold.
  [[nodiscard]] std::size_t capacity() const noexcept { return _ring.size(); }
  /// Most groups waiting at once since the last clear().
  [[nodiscard]] std::size_t peak() const noexcept { return _peak; }

private:
  std::vector<WeightGroup> _ring;
  std::size_t _head = 0;
  std::size_t _size = 0;
  std::size_t _peak = 0;
};

}  // namespace dualpipe
