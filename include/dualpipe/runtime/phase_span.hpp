// dualpipe/runtime/phase_span.hpp: the words of a stage's phases (runtime/phases.hpp) that a step's result
// also uses: what a phase does, which pass it belongs to, and a measured phase.
#pragma once

namespace dualpipe {

/// What a phase does.
enum class PhaseKind : unsigned char {
  compute,   ///< Local compute (compute_phase).
  exchange,  ///< An all-to-all with the expert group (exchange_phase, then the ExpertComm).
};

/// Which half of a chunk's work a phase belongs to.
enum class Pass : unsigned char {
  forward,   ///< The forward.
  backward,  ///< The input-gradient backward (the weight gradient is backward_weight).
};

/// A measured phase (StepResult::phase_spans, when the timeline is recorded): compute phases from begin to
/// end; exchanges from their start to the end of their wait, and their wait alone (blocked: not hidden).
struct PhaseSpan {
  enum class What : unsigned char { compute, exchange, wait };
  int index = -1;  ///< Index of the op in the rank's op list.
  int module = 0;
  int chunk = 0;
  int layer = 0;
  int phase = 0;  ///< Index in the stage's phase list.
  Pass pass = Pass::forward;
  What what = What::compute;
  bool second_lane = false;  ///< The backward half of an FB (the other chunk).
  const char* name = "";
  double start = 0;  ///< Seconds from the step's start (as Span).
  double end = 0;
};

}  // namespace dualpipe
