// dualpipe/runtime/chunk_queue.hpp: a fixed-capacity pool of chunk buffers.
//
// The executor keeps one pool per (module, activation/gradient, input/output). A pool owns `capacity`
// equal slots, allocated once; a chunk takes a slot when the first op that needs its buffer runs and gives
// it back when the last one is done. The capacity comes from the schedule's peak in-flight count (a dry
// run of the op list), so the steady state allocates nothing; running out of slots is an error, never a
// silent allocation. The slots are host memory unless a SlotMemory (a device policy's, e.g. CUDA device
// memory) provides them.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/error.hpp"

namespace dualpipe {

/// Where the slots of a pool live when they are not host memory (a device policy provides one). Called
/// only while a step's buffers are built (never during a step).
class SlotMemory {
public:
  virtual ~SlotMemory() = default;
  /// Storage for `slots` slots of `stride` bytes each (stride is a multiple of ChunkPool::alignment),
  /// alive as long as this object. Never null; throws on failure.
  virtual std::byte* allocate_slots(std::size_t stride, std::size_t slots) = 0;
};

/// Fixed-capacity pool of equal byte buffers, each lent to one module-local chunk at a time.
class ChunkPool {
public:
  /// Slots are aligned (and strided) to this many bytes, enough for any element type and for vector loads.
  static constexpr std::size_t alignment = 64;

  /// An empty pool with no slots.
  ChunkPool() = default;

  /// `capacity` slots of `slot_bytes` bytes for chunks 0..chunks-1; `name` appears in error messages.
  /// Allocates here, once: host memory, or `memory`'s when given (not owned; it owns what it hands out).
  ChunkPool(std::string name, std::size_t capacity, std::size_t slot_bytes, int chunks, SlotMemory* memory = nullptr)
      : _name(std::move(name)), _capacity(capacity), _slot_bytes(slot_bytes),
        _stride((slot_bytes + alignment - 1) / alignment * alignment), _free(capacity),
        _slot_of(static_cast<std::size_t>(chunks < 0 ? 0 : chunks), -1) {
    if (_stride * _capacity > 0) {
      if (memory) {
        _base = memory->allocate_slots(_stride, _capacity);
      } else {
        _storage.reset(static_cast<std::byte*>(::operator new (_stride* _capacity, std::align_val_t{alignment})));
        _base = _storage.get();
      }
    }
    reset();
  }

  /// Lends a free slot to `chunk`. Throws Error when the chunk already holds one or every slot is in use.
  MutableBytes acquire(int chunk) {
    int& slot = slot_ref(chunk, "acquire");
    if (slot >= 0)
      throw Error("buffer pool '" + _name + "': chunk " + std::to_string(chunk) + " already holds a buffer");
    if (_free_top == 0)
      throw Error("buffer pool '" + _name + "': no free buffer for chunk " + std::to_string(chunk) + " (all " +
                  std::to_string(_capacity) + " in use)");
    slot = _free[--_free_top];
    if (++_in_use > _peak) _peak = _in_use;
    return bytes_of(slot);
  }

  /// The buffer `chunk` holds. Throws Error when it holds none (an op reads a chunk nobody produced).
  [[nodiscard]] MutableBytes get(int chunk) {
    const int slot = slot_ref(chunk, "get");
    if (slot < 0) throw Error("buffer pool '" + _name + "': chunk " + std::to_string(chunk) + " holds no buffer");
    return bytes_of(slot);
  }

  /// Gives `chunk`'s buffer back. Throws Error when it holds none.
  void release(int chunk) {
    int& slot = slot_ref(chunk, "release");
    if (slot < 0)
      throw Error("buffer pool '" + _name + "': release of chunk " + std::to_string(chunk) + " which holds no buffer");
    _free[_free_top++] = slot;
    slot = -1;
    --_in_use;
  }

  /// Whether `chunk` holds a buffer now.
  [[nodiscard]] bool holds(int chunk) const noexcept {
    return chunk >= 0 && static_cast<std::size_t>(chunk) < _slot_of.size() &&
           _slot_of[static_cast<std::size_t>(chunk)] >= 0;
  }

  /// Frees every slot and forgets the peak (start of a step, or after a failed one). Never allocates.
  void reset() noexcept {
    // Slot 0 is handed out first, so a step's slot assignment is the same every time.
    for (std::size_t i = 0; i < _capacity; ++i) _free[i] = static_cast<int>(_capacity - 1 - i);
    _free_top = _capacity;
    for (int& s : _slot_of) s = -1;
    _in_use = 0;
    _peak = 0;
  }

  /// Slots lent now.
  [[nodiscard]] std::size_t in_use() const noexcept { return _in_use; }
  /// Most slots lent at once since the last reset().
  [[nodiscard]] std::size_t peak() const noexcept { return _peak; }
  /// Number of slots.
  [[nodiscard]] std::size_t capacity() const noexcept { return _capacity; }
  /// Bytes of one buffer.
  [[nodiscard]] std::size_t slot_bytes() const noexcept { return _slot_bytes; }
  /// Chunks the pool can be asked about (0..chunks()-1).
  [[nodiscard]] int chunks() const noexcept { return static_cast<int>(_slot_of.size()); }
  /// Bytes from one slot's start to the next's (slot_bytes rounded up to the alignment).
  [[nodiscard]] std::size_t stride() const noexcept { return _stride; }
  /// The name used in error messages.
  [[nodiscard]] const std::string& name() const noexcept { return _name; }

private:
  struct AlignedDelete {
    void operator()(std::byte* p) const noexcept { ::operator delete (p, std::align_val_t{alignment}); }
  };

  int& slot_ref(int chunk, const char* what) {
    if (chunk < 0 || static_cast<std::size_t>(chunk) >= _slot_of.size())
      throw Error("buffer pool '" + _name + "': " + what + " of chunk " + std::to_string(chunk) + " outside [0, " +
                  std::to_string(_slot_of.size()) + ")");
    return _slot_of[static_cast<std::size_t>(chunk)];
  }
  [[nodiscard]] MutableBytes bytes_of(int slot) const noexcept {
    if (!_base) return {};
    return {_base + static_cast<std::size_t>(slot) * _stride, _slot_bytes};
  }

  std::string _name;
  std::size_t _capacity = 0;
  std::size_t _slot_bytes = 0;
  std::size_t _stride = 0;
  std::unique_ptr<std::byte[], AlignedDelete> _storage;  // host slots (when no SlotMemory was given)
  std::byte* _base = nullptr;                            // first slot: _storage or the SlotMemory's
  std::vector<int> _free;                                // stack of free slots; _free[0.._free_top) are free
  std::size_t _free_top = 0;
  std::vector<int> _slot_of;  // chunk -> slot, -1 when none
  std::size_t _in_use = 0;
  std::size_t _peak = 0;
};

}  // namespace dualpipe
