// dualpipe/runtime/gradient_reduction.hpp: sums each stage's gradients over its copies (DualPipe holds every
// stage on two ranks) and over the data-parallel replicas, on host buffers, over any Communicator.
//
//   StageCopies copies = stage_copies<DualPipe>(P, C);
//   HostGradientReduction<double, InProcessCommunicator> reduce(copies, copy_comm, {grad0, grad1}, {}, &dp_comm);
//   ... pipeline.step(...)   // MyStage::on_grads_ready(ctx) calls reduce.post(ctx.module) (optional)
//   reduce.finish();          // every module's gradient is now the sum over copies and replicas
//
// Two rounds, each one commit and one wait:
//   1. copies: every copy of stage s sends its gradient to every other copy of s in its pipeline (over
//      `copy_comm`, whose rank r is pipeline rank r) and adds all of them in the canonical copy order
//      (StageCopies: by rank, then module), starting from the first;
//   2. replicas: when there is more than one replica, every rank sends that copy sum to the same (rank,
//      module) of every other replica (over `replicas`, whose rank d is replica d) and adds them in replica
//      order, starting from replica 0.
// Every rank adds the same values in the same order, so every copy of every stage in every replica ends
// with the same bits: sum = (S_0 + S_1 + ...) with S_d = (g_{d,copy 0} + g_{d,copy 1} + ...).
//
// Messages: MessageTag{tag_module, stage, gradient} (round 1) and {tag_module, stage, activation} (round 2),
// with tag_module (GradientReductionOptions) by default the schedule's modules_per_rank, a module index no
// pipeline message uses: the reduction may share the pipeline's communicator BETWEEN steps. Posting from
// on_grads_ready, i.e. during a step, needs communicators of its own (a second InProcessWorld of the same
// group, a second MpiCommunicator on the same MPI_Comm): a commit launches everything posted on its
// communicator, and the pipeline's commits must not carry the reduction's messages or the reverse.
// With MpiCommunicator a post starts the send at once (MPI_Isend): posting from on_grads_ready overlaps
// the copies' exchange with the pipeline's cool-down; with the in-process one posts only queue.
//
// A failure (TimeoutError, a size mismatch, ...) aborts both communicators, so that every other rank's
// reduction ends too, and is rethrown; a CommAborted (another rank's failure) is rethrown as it is.
//
// The device reducer (NcclGradientReducer in nccl/gradient_reducer.hpp: device buffers over NCCL) sits
// beside this one with the same two calls, post(module) and finish(): the GradientReducer concept.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <exception>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/core/message_tag.hpp"
#include "dualpipe/schedule/stage_copies.hpp"

namespace dualpipe {

/// Something that reduces a rank's module gradients: post(module) may start module `module`'s part early
/// (from Stage::on_grads_ready), finish() completes every module's and leaves the reduced gradients in place.
template <class R>
concept GradientReducer = requires(R& r, int module) {
  r.post(module);
  r.finish();
};

/// Knobs of a gradient reduction.
struct GradientReductionOptions {
  std::chrono::milliseconds timeout{60'000};  ///< Bound on each round's wait.
  int tag_module = -1;                        ///< MessageTag::module of its messages; -1: modules_per_rank.
};

/// The reduction of one rank's module gradients over their stage's copies and the data-parallel replicas.
/// Used by one thread (the rank's). T is the gradient's element type (double, float, ...).
template <class T, class CopyComm, class ReplicaComm = CopyComm>
class HostGradientReduction {
  static_assert(std::is_arithmetic_v<T>, "HostGradientReduction sums arithmetic values (double, float, ...)");
  static_assert(check_communicator<CopyComm>(), "HostGradientReduction's CopyComm must model dualpipe::Communicator");
  static_assert(check_communicator<ReplicaComm>(),
                "HostGradientReduction's ReplicaComm must model dualpipe::Communicator");

public:
  /// `grads[m]`: module m's gradient of this rank, reduced in place (not owned; stays valid and is not
  /// written by anyone else from post(m) to the end of finish()). `copy_comm`: this rank's pipeline group,
  /// rank r = pipeline rank r. `replicas`: its data-parallel group (rank d = replica d), or null for one
  /// replica. Throws ConfigError when the sizes do not match the copies (communicator size, module count,
  /// a stage whose copies have different sizes on this rank's side is caught at the first wait), or when a
  /// rank holds two copies of one stage.
  HostGradientReduction(StageCopies copies, CopyComm& copy_comm, std::vector<std::span<T>> grads,
                        GradientReductionOptions options = {}, ReplicaComm* replicas = nullptr)
      : _copies(std::move(copies)), _comm(copy_comm), _replicas(replicas), _grads(std::move(grads)), _options(options) {
    const int rank = static_cast<int>(_comm.rank());
    if (static_cast<int>(_comm.size()) != _copies.ranks)
      throw ConfigError("HostGradientReduction: the copy communicator has " + std::to_string(_comm.size()) +
                        " ranks, the schedule " + std::to_string(_copies.ranks));
    if (static_cast<int>(_grads.size()) != _copies.modules_per_rank)
      throw ConfigError("HostGradientReduction: " + std::to_string(_grads.size()) + " gradient buffers given, rank " +
                        std::to_string(rank) + " has " + std::to_string(_copies.modules_per_rank) + " modules");
    if (_options.timeout.count() <= 0)
      throw ConfigError("HostGradientReduction: timeout must be positive (got " +
                        std::to_string(_options.timeout.count()) + " ms)");
    if (_options.tag_module < 0) _options.tag_module = _copies.modules_per_rank;
    const std::size_t modules = _grads.size();
    _posted.assign(modules, false);
    _peers.resize(modules);
    _received.resize(modules);
    _sum.resize(modules);
    for (std::size_t m = 0; m < modules; ++m) {
      const int s = _copies.stage(rank, static_cast<int>(m));
      int mine = 0;
      for (const StageCopy& c : _copies.copies(s)) {
        if (c.rank == rank) {
          ++mine;
          continue;
        }
        _peers[m].push_back(c.rank);
      }
      if (mine != 1)
        throw ConfigError("HostGradientReduction: rank " + std::to_string(rank) + " holds " + std::to_string(mine) +
                          " copies of stage " + std::to_string(s) + " (the reduction handles one per rank)");
      const std::size_t n = _grads[m].size();
      _received[m].assign(_copies.copies(s).size() + replica_count(), std::vector<T>(n));
      _sum[m].resize(n);
    }
  }

  /// Posts module `module`'s exchange with the other copies of its stage (round 1), once per reduction;
  /// from then on its gradient buffer must not change. Throws ConfigError for a module out of range.
  void post(int module) {
    const auto m = checked_module(module);
    if (_posted[m]) return;
    _posted[m] = true;
    const int s = stage(m);
    for (std::size_t k = 0; k < _peers[m].size(); ++k) {
      _comm.post_send(_peers[m][k], MessageTag{_options.tag_module, s, Payload::gradient},
                      ConstBytes(std::as_bytes(_grads[m])));
      _comm.post_recv(_peers[m][k], MessageTag{_options.tag_module, s, Payload::gradient},
                      MutableBytes(std::as_writable_bytes(std::span<T>(_received[m][k]))));
    }
  }

  /// Posts what was not posted, waits, and sums: afterwards every module's gradient buffer holds its stage's
  /// sum over copies and replicas (the same bits on every copy). Collective over both communicators.
  void finish() {
    try {
      for (std::size_t m = 0; m < _grads.size(); ++m) post(static_cast<int>(m));
      std::fill(_posted.begin(), _posted.end(), false);
      bool any = false;
      for (const auto& p : _peers) any = any || !p.empty();
      if (any) _comm.commit().wait(_options.timeout);
      for (std::size_t m = 0; m < _grads.size(); ++m) sum_copies(m);
      if (replica_count() > 1) reduce_replicas();
    } catch (const CommAborted&) {
      throw;
    } catch (const std::exception& e) {
      abort_all(e.what());
      throw;
    }
  }

  /// Points module `module`'s gradient at another buffer of the same size (a stage that reallocates).
  void set_buffer(int module, std::span<T> grad) {
    const auto m = checked_module(module);
    if (grad.size() != _grads[m].size())
      throw ConfigError("HostGradientReduction: module " + std::to_string(module) + "'s new buffer has " +
                        std::to_string(grad.size()) + " values, the old one " + std::to_string(_grads[m].size()));
    _grads[m] = grad;
  }

  /// Forgets what was posted and not finished (after a failed step; the communicators' own reset drops
  /// their messages).
  void cancel() noexcept { std::fill(_posted.begin(), _posted.end(), false); }

  /// The copies it reduces over.
  [[nodiscard]] const StageCopies& copies() const noexcept { return _copies; }

private:
  [[nodiscard]] std::size_t replica_count() const {
    return _replicas ? static_cast<std::size_t>(_replicas->size()) : 1;
  }
  [[nodiscard]] int stage(std::size_t m) const {
    return _copies.stage(static_cast<int>(_comm.rank()), static_cast<int>(m));
  }
  [[nodiscard]] std::size_t checked_module(int module) const {
    if (module < 0 || module >= static_cast<int>(_grads.size()))
      throw ConfigError("HostGradientReduction: module must be in [0, " + std::to_string(_grads.size()) + ") (got " +
                        std::to_string(module) + ")");
    return static_cast<std::size_t>(module);
  }

  // Adds `parts` in order (the first is copied, the others added one after another) into grads[m].
  void add_in_order(std::size_t m, const std::vector<const T*>& parts) {
    std::vector<T>& sum = _sum[m];
    const std::size_t n = sum.size();
    std::copy(parts[0], parts[0] + n, sum.begin());
    for (std::size_t k = 1; k < parts.size(); ++k)
      for (std::size_t i = 0; i < n; ++i) sum[i] += parts[k][i];
    std::copy(sum.begin(), sum.end(), _grads[m].begin());
  }

  void sum_copies(std::size_t m) {
    if (_peers[m].empty()) return;
    const int rank = static_cast<int>(_comm.rank());
    std::vector<const T*> parts;
    std::size_t k = 0;
    for (const StageCopy& c : _copies.copies(stage(m)))
      parts.push_back(c.rank == rank ? _grads[m].data() : _received[m][k++].data());
    add_in_order(m, parts);
  }

  void reduce_replicas() {
    const int me = static_cast<int>(_replicas->rank());
    const int n = static_cast<int>(_replicas->size());
    for (std::size_t m = 0; m < _grads.size(); ++m) {
      const MessageTag tag{_options.tag_module, stage(m), Payload::activation};
      for (int d = 0; d < n; ++d) {
        if (d == me) continue;
        _replicas->post_send(d, tag, ConstBytes(std::as_bytes(_grads[m])));
        _replicas->post_recv(d, tag, MutableBytes(std::as_writable_bytes(std::span<T>(replica_slot(m, d)))));
      }
    }
    _replicas->commit().wait(_options.timeout);
    for (std::size_t m = 0; m < _grads.size(); ++m) {
      std::vector<const T*> parts;
      for (int d = 0; d < n; ++d) parts.push_back(d == me ? _grads[m].data() : replica_slot(m, d).data());
      add_in_order(m, parts);
    }
  }

  // Where replica d's copy sum of module m arrives: after the copies' slots.
  std::vector<T>& replica_slot(std::size_t m, int d) {
    return _received[m][_peers[m].size() + static_cast<std::size_t>(d)];
  }

  void abort_all(const std::string& what) noexcept {
    FailureOrigin o;
    o.rank = static_cast<int>(_comm.rank());
    o.op = "gradient reduction";
    o.what = what;
    try {
      if (_replicas) _replicas->abort(o);
    } catch (...) {}
    try {
      _comm.abort(o);
    } catch (...) {}
  }

  StageCopies _copies;
  CopyComm& _comm;
  ReplicaComm* _replicas;
  std::vector<std::span<T>> _grads;
  GradientReductionOptions _options;
  std::vector<bool> _posted;                           // [module]: round 1 posted
  std::vector<std::vector<int>> _peers;                // [module]: ranks of the other copies, canonical order
  std::vector<std::vector<std::vector<T>>> _received;  // [module]: the other copies', then each replica's
  std::vector<std::vector<T>> _sum;                    // [module]: where a sum is built
};

}  // namespace dualpipe
