// cpu_demo/sequential.hpp: the demo's data and its independent check, a sequential run of the same model.
//
// The sequential run uses one copy of every stage on one thread and takes the batch chunk by chunk: the
// forward through stage 0..S-1, the loss, then for stage S-1..0 backward_input and backward_weight. It
// applies the same loss scale and the same SGD update as the pipelined runs, so every step's chunk losses
// and summed stage gradients are what a correct pipeline must reproduce (up to the order in which the
// gradients of different chunks are added).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "example_cli.hpp"
#include "mlp_stage.hpp"

namespace dualpipe::cpu_demo {

/// The model and training settings that the pipelined runs and the sequential run share.
struct ModelSpec {
  int hidden = 64;             ///< h: a stage is Linear(h,4h) -> GELU -> Linear(4h,h).
  int rows = 32;               ///< Rows of one batch chunk.
  int chunks = 8;              ///< Batch chunks per step (C).
  int steps = 3;               ///< Training steps.
  std::uint64_t seed = 233;    ///< Seed of the weights and of the batches.
  double lr = 0.1;             ///< SGD learning rate.
  bool variable_rows = false;  ///< --variable-lengths: chunk b has its own rows in [1, rows] and carries a second
                               ///< tensor, A (AuxMlpStage).

  /// Loss scale of every step: 1/C, so that the summed gradient is the gradient of the mean chunk loss.
  [[nodiscard]] double loss_scale() const noexcept { return 1.0 / static_cast<double>(chunks); }
  /// Doubles of one chunk's activations (rows * h).
  [[nodiscard]] std::size_t chunk_values() const noexcept {
    return static_cast<std::size_t>(rows) * static_cast<std::size_t>(hidden);
  }
  /// Parameters of one stage (8 h^2: W1 then W2).
  [[nodiscard]] std::size_t stage_params() const noexcept {
    return 8 * static_cast<std::size_t>(hidden) * static_cast<std::size_t>(hidden);
  }
};

/// One step's batch: `chunks` chunks of `rows` x `hidden` inputs and labels, chunk after chunk. With variable
/// rows, chunk b has rows[b] rows and its inputs are X (rows[b] x hidden) then A (rows[b] values).
struct Batch {
  std::vector<double> inputs;
  std::vector<double> labels;
  std::vector<std::size_t> rows;          ///< Rows of each chunk.
  std::vector<std::size_t> input_offset;  ///< Chunk -> first input value (chunks + 1 entries).
  std::vector<std::size_t> label_offset;  ///< Chunk -> first label value (chunks + 1 entries).
};

/// The batch of step `step`: a function of (seed, step) alone, so every rank and every run sees the same data.
[[nodiscard]] inline Batch make_batch(const ModelSpec& spec, int step) {
  Batch b;
  SplitMix64 gr(derive_seed(spec.seed, 0x5EC5u, static_cast<std::uint64_t>(step)));
  const auto h = static_cast<std::size_t>(spec.hidden);
  b.input_offset.push_back(0);
  b.label_offset.push_back(0);
  for (int c = 0; c < spec.chunks; ++c) {
    const std::size_t rows = spec.variable_rows
                                 ? 1 + static_cast<std::size_t>(gr.next() % static_cast<std::uint64_t>(spec.rows))
                                 : static_cast<std::size_t>(spec.rows);
    b.rows.push_back(rows);
    b.input_offset.push_back(b.input_offset.back() + rows * h + (spec.variable_rows ? rows : 0));
    b.label_offset.push_back(b.label_offset.back() + rows * h);
  }
  b.inputs.resize(b.input_offset.back());
  b.labels.resize(b.label_offset.back());
  SplitMix64 gi(derive_seed(spec.seed, 0xB17Cu, static_cast<std::uint64_t>(step)));
  SplitMix64 gl(derive_seed(spec.seed, 0x1ABE1u, static_cast<std::uint64_t>(step)));
  for (double& v : b.inputs) v = gi.uniform_pm1();
  for (double& v : b.labels) v = gl.uniform_pm1();
  return b;
}

/// View of doubles as the bytes a Stage or Pipeline takes.
[[nodiscard]] inline ConstBytes as_bytes(std::span<const double> v) noexcept { return std::as_bytes(v); }

/// Normwise relative error: max |got - want| / max |want| (common/example_cli.hpp).
using examples::relative_error;

/// Relative error of one stage's parameters or gradients, taking W1 and W2 as separate tensors (so that a
/// small tensor next to a large one is still checked at its own scale): the larger of the two.
[[nodiscard]] inline double stage_relative_error(std::span<const double> got, std::span<const double> want) noexcept {
  if (got.size() != want.size() || got.size() % 2 != 0) return std::numeric_limits<double>::infinity();
  const std::size_t w = got.size() / 2;  // W1 and W2 have 4h^2 values each
  return std::max(relative_error(got.first(w), want.first(w)), relative_error(got.subspan(w), want.subspan(w)));
}

/// What the sequential run saw at every step.
struct SequentialRun {
  int stages = 0;
  std::vector<std::vector<double>> losses;              ///< [step][batch chunk]
  std::vector<std::vector<std::vector<double>>> grads;  ///< [step][stage]: the stage's gradient of that step
  std::vector<std::vector<double>> final_params;        ///< [stage]: parameters after the last SGD step
};

/// Bytes the sequential run keeps (all steps' gradients), to refuse configurations that would not fit.
[[nodiscard]] inline double sequential_run_bytes(const ModelSpec& spec, int stages) noexcept {
  return static_cast<double>(spec.steps) * stages * static_cast<double>(spec.stage_params()) * sizeof(double);
}

/// Runs `spec.steps` training steps of the `stages`-stage model on one thread.
[[nodiscard]] inline SequentialRun run_sequential(const ModelSpec& spec, int stages) {
  if (stages < 1)
    throw ConfigError("sequential run: stages must be at least 1 (got stages=" + std::to_string(stages) + ")");
  std::vector<MlpStage> model;
  model.reserve(static_cast<std::size_t>(stages));
  for (int s = 0; s < stages; ++s) model.emplace_back(spec.hidden, spec.rows, spec.seed, s);

  SequentialRun run;
  run.stages = stages;
  const std::size_t max_values = spec.chunk_values();
  std::vector<double> act_a(max_values), act_b(max_values), grad_a(max_values), grad_b(max_values);
  std::vector<double> aux, shifted(max_values);
  for (int step = 0; step < spec.steps; ++step) {
    const Batch batch = make_batch(spec, step);
    std::vector<double> losses(static_cast<std::size_t>(spec.chunks));
    for (int c = 0; c < spec.chunks; ++c) {
      StageContext ctx;
      ctx.chunk = c;
      ctx.batch_chunk = c;
      ctx.num_batch_chunks = spec.chunks;
      ctx.num_stages = stages;
      ctx.loss_scale = spec.loss_scale();
      const auto cc = static_cast<std::size_t>(c);
      const std::size_t n = batch.rows[cc] * static_cast<std::size_t>(spec.hidden);
      const std::span<const double> x = std::span<const double>(batch.inputs).subspan(batch.input_offset[cc], n);
      const std::span<const double> t = std::span<const double>(batch.labels).subspan(batch.label_offset[cc], n);
      if (spec.variable_rows) {
        const auto a = std::span<const double>(batch.inputs).subspan(batch.input_offset[cc] + n, batch.rows[cc]);
        aux.assign(a.begin(), a.end());
      }
      for (int s = 0; s < stages; ++s) {
        ctx.stage = s;
        ctx.is_first_stage = s == 0;
        ctx.is_last_stage = s == stages - 1;
        std::span<const double> in = s == 0 ? x : std::span<const double>(act_a).first(n);
        if (spec.variable_rows) {  // AuxMlpStage: the MLP of X + A, and A / 2 + 1/4 handed on
          const auto h = static_cast<std::size_t>(spec.hidden);
          for (std::size_t r = 0; r < batch.rows[cc]; ++r) {
            for (std::size_t j = 0; j < h; ++j) shifted[r * h + j] = in[r * h + j] + aux[r];
            aux[r] = aux[r] / 2 + 0.25;
          }
          in = std::span<const double>(shifted).first(n);
        }
        model[static_cast<std::size_t>(s)].forward(ctx, as_bytes(in),
                                                   std::as_writable_bytes(std::span<double>(act_b).first(n)));
        act_a.swap(act_b);
      }
      ctx.stage = stages - 1;
      ctx.is_first_stage = stages == 1;
      ctx.is_last_stage = true;
      losses[cc] = model.back().loss(ctx, as_bytes(std::span<const double>(act_a).first(n)), as_bytes(t));
      for (int s = stages - 1; s >= 0; --s) {
        ctx.stage = s;
        ctx.is_first_stage = s == 0;
        ctx.is_last_stage = s == stages - 1;
        MlpStage& st = model[static_cast<std::size_t>(s)];
        const ConstBytes out_grad = s == stages - 1 ? ConstBytes{} : as_bytes(std::span<const double>(grad_a).first(n));
        const MutableBytes in_grad =
            s == 0 ? MutableBytes{} : std::as_writable_bytes(std::span<double>(grad_b).first(n));
        st.backward_input(ctx, out_grad, in_grad);
        st.backward_weight(ctx);
        grad_a.swap(grad_b);
      }
    }
    run.losses.push_back(std::move(losses));
    std::vector<std::vector<double>> grads;
    grads.reserve(static_cast<std::size_t>(stages));
    for (MlpStage& st : model) {
      grads.emplace_back(st.gradients().begin(), st.gradients().end());
      st.sgd_step(grads.back(), spec.lr);
      st.zero_grad();
    }
    run.grads.push_back(std::move(grads));
  }
  for (const MlpStage& st : model) run.final_params.emplace_back(st.parameters().begin(), st.parameters().end());
  return run;
}

}  // namespace dualpipe::cpu_demo
