// dualpipe/runtime/executor_step.hpp: ExecutorStep, what one run of the executor is given besides its
// program (the batch, the loss scale, the timeout, what to record). The Device policy's begin_step sees it
// too, so it lives apart from the executor.
#pragma once

#include <chrono>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/runtime/tensors.hpp"

namespace dualpipe {

/// What one run of the executor is given besides its program.
struct ExecutorStep {
  ConstBytes inputs;                          ///< The whole batch (read by first stages).
  ConstBytes labels;                          ///< The whole batch's labels (read by last stages); may be empty.
  double loss_scale = 1.0;                    ///< StageContext::loss_scale.
  std::chrono::milliseconds timeout{60'000};  ///< Bound on every wait.
  bool return_outputs = false;                ///< Copy last-stage outputs into StepResult::outputs.
  bool record_timeline = false;               ///< Fill StepResult::spans.
  int accumulation_step = 0;                  ///< StageContext::accumulation_step.
  int accumulation_steps = 1;                 ///< StageContext::accumulation_steps.
  bool overlap_phases = true;                 ///< An FB interleaves its chunks' phases (runtime/phases.hpp).
  int weight_fill_depth = 0;                  ///< PipelineOptions::weight_fill_depth (0: off).
  bool eager_transfers = false;               ///< PipelineOptions::eager_transfers.
  ChunkSizes sizes{};                         ///< Rows of each chunk's tensors (empty: the maxima); the same on
                                              ///< every rank (checked: runtime/tensors.hpp, executor.hpp).
};

}  // namespace dualpipe
