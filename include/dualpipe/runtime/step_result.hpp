// dualpipe/runtime/step_result.hpp: what a step returns on one rank, and the per-step options.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "dualpipe/core/timeline.hpp"
#include "dualpipe/runtime/phase_span.hpp"
#include "dualpipe/runtime/tensors.hpp"

namespace dualpipe {

/// Options of one step.
struct StepOptions {
  bool return_outputs = false;  ///< Copy the last stage's outputs into StepResult::outputs.
  ChunkSizes sizes{};           ///< Rows of each chunk's tensors, batch chunk x tensor (a StageWithTensors
                                ///< only; empty: every chunk at the declared maxima). Every rank gives the
                                ///< same table: the step checks that they agree and that no chunk exceeds a
                                ///< maximum, with one small exchange, and throws the same ConfigError on every
                                ///< rank otherwise. Inputs and outputs are then packed chunk after chunk at
                                ///< their actual sizes; labels split in proportion to tensor 0's rows.
};

/// One rank's result of one step.
struct StepResult {
  int rank = 0;                         ///< Pipeline rank.
  int chunks = 0;                       ///< Batch chunks C.
  std::vector<double> losses;           ///< Size C, indexed by batch chunk; NaN where this rank computed none.
                                        ///< The stage's loss as it returned it (before loss_scale).
  std::vector<std::byte> outputs;       ///< When return_outputs: last-stage outputs of this rank, batch-chunk order.
  std::vector<int> output_chunks;       ///< Batch chunk index of each output piece in `outputs`.
  std::vector<Span> spans;              ///< This rank's timeline spans, in seconds from `clock_start`.
  std::vector<PhaseSpan> phase_spans;   ///< A phased stage's phases (runtime/phases.hpp), same clock as spans.
  std::size_t peak_buffers_in_use = 0;  ///< Most library-owned chunk buffers lent at once during the step.
  double step_seconds = 0;              ///< Wall time of the step on this rank.
  double clock_start = 0;               ///< When this rank's step started: seconds on std::chrono::steady_clock,
                                        ///< a clock common to every rank of the process (and of the host);
                                        ///< merge_timelines() aligns ranks with it.

  /// Sum of the non-NaN losses.
  [[nodiscard]] double loss_sum() const {
    double s = 0;
    for (double l : losses)
      if (!std::isnan(l)) s += l;
    return s;
  }
};

}  // namespace dualpipe
