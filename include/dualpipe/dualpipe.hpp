// dualpipe/dualpipe.hpp: the umbrella header. Pulls in no CUDA, MPI or NCCL header; those are opt-in
// (dualpipe/cuda.hpp, dualpipe/nccl.hpp, dualpipe/mpi.hpp).
#pragma once

#include "dualpipe/analysis/activations.hpp"
#include "dualpipe/analysis/costs.hpp"
#include "dualpipe/analysis/render_chrome.hpp"
#include "dualpipe/analysis/render_grid.hpp"
#include "dualpipe/analysis/render_svg.hpp"
#include "dualpipe/analysis/simulator.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/analysis/validation_result.hpp"
#include "dualpipe/analysis/validator.hpp"
#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/comm/inprocess_grid.hpp"
#include "dualpipe/comm/null.hpp"
#include "dualpipe/comm/process_grid.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/trace.hpp"
#include "dualpipe/runtime/chunk_buffers.hpp"
#include "dualpipe/runtime/chunk_queue.hpp"
#include "dualpipe/runtime/device.hpp"
#include "dualpipe/runtime/executor.hpp"
<<<<<<< HEAD
#include "dualpipe/runtime/executor_step.hpp"
=======
#include "dualpipe/runtime/gradient_reduction.hpp"
>>>>>>> grid
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/runtime/plan.hpp"
#include "dualpipe/analysis/profile.hpp"
#include "dualpipe/runtime/recorder.hpp"
#include "dualpipe/runtime/run_ranks.hpp"
#include "dualpipe/runtime/scatter.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/runtime/step_result.hpp"
#include "dualpipe/runtime/weight_fifo.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/dualpipev.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/registry.hpp"
<<<<<<< HEAD
#include "dualpipe/schedule/schedule_policy.hpp"
=======
#include "dualpipe/schedule/stage_copies.hpp"
>>>>>>> grid
#include "dualpipe/schedule/zb1p.hpp"
