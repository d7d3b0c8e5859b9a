// dualpipe/cuda/device_options.hpp: the options of a CudaDevice (cuda/device.hpp): its device, where a
// step's batch comes from, GPU timelines, CUDA graph capture, its compute streams (its own, or a framework's)
// and their priorities.
#pragma once

#include <cuda_runtime_api.h>

#include "dualpipe/cuda/stream.hpp"

namespace dualpipe {

/// Whether a CudaDevice captures steps into CUDA graphs.
enum class GraphMode : unsigned char {
  off,      ///< Every step is issued op by op.
  capture,  ///< Capture a configuration's step after its warm-up steps, replay it afterwards.
};

/// Options of a CudaDevice.
struct CudaDeviceOptions {
  int device = -1;                        ///< CUDA device of the streams and buffers; -1: the current one.
  StreamRef origin{};                     ///< A step starts after the work issued here so far (the batch).
  bool gpu_timeline = false;              ///< StepResult::spans from CUDA events (compute ops, GPU time) instead of
                                          ///< the host clock; off while graphs are captured or replayed. A span
                                          ///< starts once the op has its data (an FB: both of its streams; the
                                          ///< wait for a transfer is idle time, not the op's) and ends with its
                                          ///< last work.
  const Event* timeline_epoch = nullptr;  ///< With gpu_timeline: a timing event recorded (and done) before
                                          ///< the step on this device; clock_start becomes the seconds from it
                                          ///< to the step's start, so that ranks of one device line up.
  GraphMode graph = GraphMode::off;       ///< CUDA graph capture of whole steps.
  int graph_warmup_steps = 1;             ///< Eager steps of a configuration before it is captured.
  int main_priority = 0;                  ///< Priority of the main stream (cudaStreamCreateWithPriority).
  int second_priority = 0;                ///< Priority of the second stream.
  cudaStream_t main_stream = nullptr;     ///< Compute on this stream (borrowed: never destroyed; on `device`);
                                          ///< null: the device makes its own (with main_priority).
  cudaStream_t second_stream = nullptr;   ///< The second (overlap) stream, borrowed likewise; null: its own. Must
                                          ///< differ from main_stream (an FB's halves run on both at once).
};

}  // namespace dualpipe
