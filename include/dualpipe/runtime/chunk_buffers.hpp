// dualpipe/runtime/chunk_buffers.hpp: every chunk buffer of one rank, and the rules for when each is
// taken and given back.
//
// Each module has four pools (chunk_queue.hpp): its input activations (received), its output activations,
// the gradients of its output (received) and the gradients of its input (produced by its backward).
// A buffer is taken by the first op that needs it and given back as soon as the last one is done:
//   input        taken by rF, given back after the chunk's backward input part (forward mode: its forward);
//   output       taken by F, given back after the commit that completes its sF (the last stage: right after
//                the loss; a local hand-off: when the consuming module gives back its input);
//   output grad  taken by rB, given back after the chunk's backward input part;
//   input grad   taken by the backward, given back after the commit that completes its sB (a local
//                hand-off: when the consuming module gives back its output grad).
// The first stage reads the batch directly and the last stage starts from the loss, so those have no pool.
// DualPipeV's turn on the last rank is a local hand-off: module 1's input IS module 0's output buffer,
// and module 0's output grad IS module 1's input grad buffer; nothing is copied.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/runtime/chunk_queue.hpp"
#include "dualpipe/schedule/placement.hpp"

namespace dualpipe {

/// The four buffer pools of a module.
enum class BufferKind : unsigned char { input, output, output_grad, input_grad };

/// Names of the buffer kinds, for messages.
[[nodiscard]] constexpr const char* to_string(BufferKind k) noexcept {
  switch (k) {
    case BufferKind::input: return "input activations";
    case BufferKind::output: return "output activations";
    case BufferKind::output_grad: return "output gradients";
    case BufferKind::input_grad: return "input gradients";
  }
  return "?";
}

/// What the buffers of one module look like.
struct ModuleBuffersSpec {
  ModulePlacement placement;              ///< Where the module sits (which pools it needs, its hand-offs).
  std::size_t input_bytes = 0;            ///< One chunk's input (and input gradient).
  std::size_t output_bytes = 0;           ///< One chunk's output (and output gradient).
  std::array<std::size_t, 4> capacity{};  ///< Slots per BufferKind.
};

/// Every chunk buffer of one rank's step. Never allocates after construction.
class ChunkBuffers {
public:
  ChunkBuffers() = default;

  /// Pools for each module as `modules` describes; `pending_capacity` bounds the sends of one group. The
  /// slots are host memory, or `memory`'s (a device policy's) when given.
  ChunkBuffers(Mode mode, const std::vector<ModuleBuffersSpec>& modules, std::size_t pending_capacity,
               SlotMemory* memory = nullptr)
      : _mode(mode), _pending(pending_capacity) {
    _modules.reserve(modules.size());
    for (std::size_t m = 0; m < modules.size(); ++m) {
      const ModuleBuffersSpec& s = modules[m];
      Module mod;
      mod.placement = s.placement;
      const int chunks = s.placement.num_chunks;
      for (int k = 0; k < 4; ++k) {
        const auto kind = static_cast<BufferKind>(k);
        const bool input_side = kind == BufferKind::input || kind == BufferKind::input_grad;
        mod.pools[static_cast<std::size_t>(k)] =
            ChunkPool("module " + std::to_string(m) + " " + to_string(kind), s.capacity[static_cast<std::size_t>(k)],
                      input_side ? s.input_bytes : s.output_bytes, chunks, memory);
      }
      _modules.push_back(std::move(mod));
    }
  }

  // ---- Posts --------------------------------------------------------------------------------------
  /// rF: the buffer module m's input of chunk c is received into.
  [[nodiscard]] MutableBytes recv_input(int m, int c) { return acquire(m, BufferKind::input, c); }
  /// rB: the buffer module m's output gradient of chunk c is received into.
  [[nodiscard]] MutableBytes recv_output_grad(int m, int c) { return acquire(m, BufferKind::output_grad, c); }
  /// sF: module m's output of chunk c, given back when the next commit completes.
  [[nodiscard]] ConstBytes send_output(int m, int c) { return send(m, BufferKind::output, c); }
  /// sB: module m's input gradient of chunk c, given back when the next commit completes.
  [[nodiscard]] ConstBytes send_input_grad(int m, int c) { return send(m, BufferKind::input_grad, c); }
  /// After a commit's group is done: gives back the buffers it sent.
  void after_commit() noexcept {
    for (std::size_t i = 0; i < _pending_size; ++i) {
      _pending[i].first->release(_pending[i].second);
      --_in_use;
    }
    _pending_size = 0;
  }

  // ---- Forward ------------------------------------------------------------------------------------
  /// Module m's input of chunk c; empty at the first stage (the caller reads the batch there).
  [[nodiscard]] ConstBytes forward_input(int m, int c) {
    const ModulePlacement& p = placement(m);
    if (p.is_first_stage()) return {};
    if (p.local_prev_module >= 0) return pool(p.local_prev_module, BufferKind::output).get(c);
    return pool(m, BufferKind::input).get(c);
  }
  /// Module m's output buffer of chunk c (taken now).
  [[nodiscard]] MutableBytes forward_output(int m, int c) { return acquire(m, BufferKind::output, c); }
  /// After module m's forward (and loss) of chunk c.
  void after_forward(int m, int c) {
    const ModulePlacement& p = placement(m);
    if (p.is_last_stage()) release(m, BufferKind::output, c);
    if (_mode == Mode::forward) release_input(m, c);
  }

  // ---- Backward -----------------------------------------------------------------------------------
  /// Module m's output gradient of chunk c; empty at the last stage (backward starts from the loss).
  [[nodiscard]] ConstBytes backward_output_grad(int m, int c) {
    const ModulePlacement& p = placement(m);
    if (p.is_last_stage()) return {};
    if (p.local_next_module >= 0) return pool(p.local_next_module, BufferKind::input_grad).get(c);
    return pool(m, BufferKind::output_grad).get(c);
  }
  /// Module m's input gradient buffer of chunk c (taken now); empty at the first stage.
  [[nodiscard]] MutableBytes backward_input_grad(int m, int c) {
    if (placement(m).is_first_stage()) return {};
    return acquire(m, BufferKind::input_grad, c);
  }
  /// After module m's backward input part of chunk c: gives back its input and output gradient.
  void after_backward(int m, int c) {
    const ModulePlacement& p = placement(m);
    release_input(m, c);
    if (p.is_last_stage()) return;
    if (p.local_next_module >= 0) release(p.local_next_module, BufferKind::input_grad, c);
    else release(m, BufferKind::output_grad, c);
  }

  // ---- State --------------------------------------------------------------------------------------
  /// Frees every buffer and forgets peaks (start of a step). Never allocates.
  void reset() noexcept {
    for (Module& mod : _modules)
      for (ChunkPool& p : mod.pools) p.reset();
    _pending_size = 0;
    _pending_peak = 0;
    _in_use = 0;
    _peak = 0;
  }
  /// Buffers lent now, over every pool.
  [[nodiscard]] std::size_t in_use() const noexcept { return _in_use; }
  /// Most buffers lent at once since the last reset().
  [[nodiscard]] std::size_t peak() const noexcept { return _peak; }
  /// Most sends waiting for one commit since the last reset().
  [[nodiscard]] std::size_t pending_peak() const noexcept { return _pending_peak; }
  /// Most buffers of one pool lent at once since the last reset().
  [[nodiscard]] std::size_t pool_peak(int m, BufferKind k) const { return pool(m, k).peak(); }
  /// One pool (for tests and diagnostics).
  [[nodiscard]] const ChunkPool& pool(int m, BufferKind k) const {
    return _modules[static_cast<std::size_t>(m)].pools[static_cast<std::size_t>(k)];
  }
  /// Number of modules.
  [[nodiscard]] int modules() const noexcept { return static_cast<int>(_modules.size()); }
  /// Throws Error naming the pools still holding buffers (a step must end with none lent).
  void check_all_free() const {
    if (_in_use == 0 && _pending_size == 0) return;
    std::string held;
    for (const Module& mod : _modules)
      for (const ChunkPool& p : mod.pools)
        if (p.in_use() > 0) held += (held.empty() ? "" : ", ") + p.name() + " (" + std::to_string(p.in_use()) + ")";
    throw Error("step ended with chunk buffers still in use: " + held +
                (_pending_size ? "; " + std::to_string(_pending_size) + " sends never committed" : ""));
  }

private:
  struct Module {
    ModulePlacement placement;
    std::array<ChunkPool, 4> pools;
  };

  [[nodiscard]] const ModulePlacement& placement(int m) const {
    return _modules[static_cast<std::size_t>(m)].placement;
  }
  [[nodiscard]] ChunkPool& pool(int m, BufferKind k) {
    return _modules[static_cast<std::size_t>(m)].pools[static_cast<std::size_t>(k)];
  }
  MutableBytes acquire(int m, BufferKind k, int c) {
    MutableBytes b = pool(m, k).acquire(c);
    if (++_in_use > _peak) _peak = _in_use;
    return b;
  }
  void release(int m, BufferKind k, int c) {
    pool(m, k).release(c);
    --_in_use;
  }
  void release_input(int m, int c) {
    const ModulePlacement& p = placement(m);
    if (p.is_first_stage()) return;
    if (p.local_prev_module >= 0) release(p.local_prev_module, BufferKind::output, c);
    else release(m, BufferKind::input, c);
  }
  ConstBytes send(int m, BufferKind k, int c) {
    ChunkPool& p = pool(m, k);
    const ConstBytes b = p.get(c);
    if (_pending_size == _pending.size())
      throw Error("chunk buffers: more than " + std::to_string(_pending.size()) + " sends before one commit");
    _pending[_pending_size++] = {&p, c};
    if (_pending_size > _pending_peak) _pending_peak = _pending_size;
    return b;
  }

  Mode _mode = Mode::train;
  std::vector<Module> _modules;
  std::vector<std::pair<ChunkPool*, int>> _pending;  // sent buffers waiting for their commit
  std::size_t _pending_size = 0;
  std::size_t _pending_peak = 0;
  std::size_t _in_use = 0;
  std::size_t _peak = 0;
};

}  // namespace dualpipe
