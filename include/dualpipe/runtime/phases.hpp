// dualpipe/runtime/phases.hpp: a stage's forward and backward as sequences of phases (compute, or an
// all-to-all with the expert-parallel group), which the executor interleaves inside an FB op.
//
// A stage opts in by offering, besides the Stage members (StageWithPhases):
//   phases(ctx, pass) -> std::span<const Phase>
//                              the phases of chunk ctx.chunk's forward (Pass::forward) or input-gradient
//                              backward (Pass::backward), in order; each is compute or exchange, and names its
//                              layer. The span stays valid for the op. Every rank of an expert group must
//                              list the same exchange phases (they meet in them).
//   compute_phase(ctx, pass, i, io)
//                              runs compute phase i. io: the op's buffers (forward: in = the chunk's input,
//                              out = its output; backward: in = output gradient, out = input gradient).
//   exchange_phase(ctx, pass, i, io) -> AllToAllBuffers
//                              prepares exchange phase i (packs what to send; may compute the counts) and
//                              says what to exchange; the executor starts it on expert_comm() and waits on it
//                              before this chunk's next phase, which reads `recv`.
//   expert_comm() -> E&        the expert group's ExpertComm (comm/expert_comm.hpp); every stage of a rank
//                              may return the same one.
// The stage's backward_weight stays as it is (a W op, or right after the backward phases of a B).
//
// How the executor runs them:
//   F (and the forward of a non-deferred B, the backward of B..w): the phases in order; an exchange is
//   started then waited at once.
//   FB (an F of one chunk with the B of another), overlap on (the default, PipelineOptions::overlap_phases):
//   ping-pong: run the backward chunk up to and including the start of its next exchange, then the forward
//   chunk likewise; then wait the backward's exchange (it ran while the forward computed) and go on with the
//   backward up to its next exchange start, then the forward's... until both are done; the backward's weight
//   gradient is its last compute, run as soon as its phases are done. The backward goes first because its
//   first compute (the combine's backward) and the forward's last (the output) are the small ones: this way
//   they hide nothing, while the forward's first compute and the backward's tail with its weight gradient
//   (large) hide the first and the last exchange. The order depends only on the two phase lists, never on timing, so the
//   results are bitwise those of overlap off (and every run's). Overlap off: all of the forward chunk's
//   phases, then all of the backward's (the baseline).
// A failure in a phase is named in the StepError's op: "FB0.3/1.1, forward phase 2 (dispatch) of layer 0".
// Device hooks (optional, DeviceWithPhaseHooks in runtime/device.hpp's sense, detected here): around every
// compute phase and exchange the executor calls
//   device.phase_begin(lane, tag, kind) / device.phase_end(lane, tag, kind)
// (for an exchange: begin before start_all_to_all, end after its wait), so that a GPU device can order the
// communication stream against the lane's compute stream; HostDevice has none, nothing is called.
// An exchange's AllToAllBuffers::after_stream is set to the lane's stream (StageContext::stream) when the
// stage left it null.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <type_traits>

#include "dualpipe/comm/expert_comm.hpp"
#include "dualpipe/core/bytes.hpp"
#include "dualpipe/runtime/device.hpp"
#include "dualpipe/runtime/phase_span.hpp"
#include "dualpipe/runtime/stage.hpp"

namespace dualpipe {

/// One phase of a stage's forward or backward.
struct Phase {
  PhaseKind kind = PhaseKind::compute;
  int layer = 0;          ///< The stage's layer it belongs to (for tags, messages and pictures).
  const char* name = "";  ///< Short name for messages and pictures ("dispatch", "experts"); static storage.
};

/// The buffers of the op a phase belongs to (forward: input and output; backward: output gradient and
/// input gradient, either empty at the last or first stage).
struct PhaseIo {
  ConstBytes in;
  MutableBytes out;
};

namespace detail {
template <class S>
concept stage_has_phase_list = requires(S& s, const StageContext& ctx, Pass pass) {
  { s.phases(ctx, pass) } -> std::convertible_to<std::span<const Phase>>;
};
template <class S>
concept stage_has_compute_phase = requires(S& s, const StageContext& ctx, Pass pass, int i, PhaseIo io) {
  s.compute_phase(ctx, pass, i, io);
};
template <class S>
concept stage_has_exchange_phase = requires(S& s, const StageContext& ctx, Pass pass, int i, PhaseIo io) {
  { s.exchange_phase(ctx, pass, i, io) } -> std::convertible_to<AllToAllBuffers>;
};
template <class S>
concept stage_has_expert_comm = requires(S& s) {
  { s.expert_comm() } -> std::same_as<std::remove_cvref_t<decltype(s.expert_comm())>&>;
  requires ExpertComm<std::remove_cvref_t<decltype(s.expert_comm())>>;
};
template <class D>
concept device_has_phase_hooks = requires(D& d, ComputeLane lane, const ExpertTag& tag, PhaseKind kind) {
  d.phase_begin(lane, tag, kind);
  d.phase_end(lane, tag, kind);
};
}  // namespace detail

/// A Stage whose forward and backward are phases the executor runs (see the contract above).
template <class S>
concept StageWithPhases = Stage<S> && detail::stage_has_phase_list<S> && detail::stage_has_compute_phase<S> &&
    detail::stage_has_exchange_phase<S> && detail::stage_has_expert_comm<S>;

/// A device policy told about every phase (see the contract above).
template <class D>
concept DeviceWithPhaseHooks = DevicePolicy<D> && detail::device_has_phase_hooks<D>;

/// Compile-time check with messages in plain words: `static_assert(check_phased_stage<MyStage>())`.
template <class S>
consteval bool check_phased_stage() {
  static_assert(detail::stage_has_phase_list<S>,
                "A stage with phases needs: std::span<const dualpipe::Phase> phases(const StageContext&, "
                "dualpipe::Pass)");
  static_assert(detail::stage_has_compute_phase<S>,
                "A stage with phases needs: compute_phase(const StageContext&, dualpipe::Pass, int phase, "
                "dualpipe::PhaseIo)");
  static_assert(detail::stage_has_exchange_phase<S>,
                "A stage with phases needs: dualpipe::AllToAllBuffers exchange_phase(const StageContext&, "
                "dualpipe::Pass, int phase, dualpipe::PhaseIo)");
  static_assert(detail::stage_has_expert_comm<S>,
                "A stage with phases needs: E& expert_comm() where E models dualpipe::ExpertComm");
  return StageWithPhases<S>;
}

/// "forward phase 2 (dispatch) of layer 0".
[[nodiscard]] inline std::string describe_phase(Pass pass, int index, const Phase& p) {
  return std::string(pass == Pass::forward ? "forward" : "backward") + " phase " + std::to_string(index) + " (" +
         p.name + ") of layer " + std::to_string(p.layer);
}

/// The ExpertTag of phase i of a chunk's pass.
[[nodiscard]] inline ExpertTag phase_tag(const StageContext& ctx, Pass pass, int i, const Phase& p) noexcept {
  return ExpertTag{ctx.module, ctx.chunk, p.layer, i, pass == Pass::backward};
}

namespace detail {
/// What the executor's phase runner calls around each phase; the free run_phases() below uses this one.
struct NoPhaseObserver {
  void begin(int, const Phase&, bool) noexcept {}
  void compute_end(int, const Phase&) noexcept {}
  void exchange_started(int, const Phase&) noexcept {}
  void wait_begin(int, const Phase&) noexcept {}
  void wait_end(int, const Phase&) noexcept {}
};

/// One chunk's walk through its phases: run up to the next exchange's start, wait it, go on. The executor
/// holds two (an FB's forward and backward chunk) and alternates them.
template <class S>
class PhaseCursor {
public:
  using Comm = std::remove_cvref_t<decltype(std::declval<S&>().expert_comm())>;
  using Handle = decltype(std::declval<Comm&>().start_all_to_all(ExpertTag{}, AllToAllBuffers{}));

  PhaseCursor(S& stage, const StageContext& ctx, Pass pass, PhaseIo io)
      : _stage(stage), _ctx(ctx), _pass(pass), _io(io), _phases(stage.phases(ctx, pass)) {}

  /// Whether every phase ran and nothing is in flight.
  [[nodiscard]] bool done() const noexcept { return _next >= _phases.size() && !_handle; }
  /// Whether an exchange is in flight.
  [[nodiscard]] bool in_flight() const noexcept { return _handle.has_value(); }
  [[nodiscard]] const StageContext& context() const noexcept { return _ctx; }

  /// Runs compute phases up to and including the start of the next exchange (or to the end).
  template <class Obs>
  void advance(Obs& obs) {
    while (_next < _phases.size() && !_handle) {
      _current = _next++;
      const Phase& p = _phases[_current];
      const int i = static_cast<int>(_current);
      obs.begin(i, p, p.kind == PhaseKind::exchange);
      if (p.kind == PhaseKind::compute) {
        _stage.compute_phase(_ctx, _pass, i, _io);
        obs.compute_end(i, p);
      } else {
        AllToAllBuffers b = _stage.exchange_phase(_ctx, _pass, i, _io);
        if (b.after_stream == nullptr) b.after_stream = _ctx.stream;
        _handle.emplace(_stage.expert_comm().start_all_to_all(phase_tag(_ctx, _pass, i, p), b));
        obs.exchange_started(i, p);
        return;
      }
    }
  }

  /// Waits on the exchange in flight, if any.
  template <class Obs>
  void wait(Obs& obs, std::chrono::milliseconds timeout) {
    if (!_handle) return;
    const Phase& p = _phases[_current];
    const int i = static_cast<int>(_current);
    obs.wait_begin(i, p);
    _handle->wait(timeout);
    _handle.reset();
    obs.wait_end(i, p);
  }

  /// Every phase in order, each exchange waited at once.
  template <class Obs>
  void run_all(Obs& obs, std::chrono::milliseconds timeout) {
    while (!done()) {
      advance(obs);
      wait(obs, timeout);
    }
  }

private:
  S& _stage;
  StageContext _ctx;
  Pass _pass;
  PhaseIo _io;
  std::span<const Phase> _phases;
  std::size_t _next = 0;
  std::size_t _current = static_cast<std::size_t>(-1);
  std::optional<Handle> _handle;
};
}  // namespace detail

/// Runs a chunk's phases of `pass` in order, each exchange waited at once with `timeout`: what a phased
/// stage's own forward() / backward_input() can be (the executor itself never calls those for it).
template <class S>
  requires StageWithPhases<S>
void run_phases(S& stage, const StageContext& ctx, Pass pass, PhaseIo io, std::chrono::milliseconds timeout) {
  detail::PhaseCursor<S> cursor(stage, ctx, pass, io);
  detail::NoPhaseObserver obs;
  cursor.run_all(obs, timeout);
}

}  // namespace dualpipe
