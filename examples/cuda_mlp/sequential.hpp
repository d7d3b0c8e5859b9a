// cuda_mlp/sequential.hpp: the batches and the reference: a sequential run of the same model on one stream
// of the GPU (every stage in turn, chunk by chunk: forward, loss, backward input and weight), with the same
// loss scale (1/C) and SGD update as the pipelined runs.
#pragma once

#include <cuda_runtime_api.h>

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "mlp_kernels.hpp"
#include "mlp_stage.hpp"

namespace mlp {

/// Every step's batch (inputs and labels, chunk after chunk) in device memory, the same on every rank.
class Batches {
public:
  Batches(const ModelConfig& cfg, int chunks, int steps)
      : _bytes(cfg.chunk_elems() * static_cast<std::size_t>(chunks) * dtype_bytes(cfg.dtype)) {
    dualpipe::Stream s;
    for (int step = 0; step < steps; ++step) {
      _inputs.emplace_back(_bytes, s.ref());
      _labels.emplace_back(_bytes, s.ref());
      const std::size_t n = cfg.chunk_elems() * static_cast<std::size_t>(chunks);
      fill_uniform(cfg.dtype, _inputs.back().data(), n, derive_seed(cfg.seed, 0xB17C, static_cast<std::uint64_t>(step)),
                   1.0f, s.get());
      fill_uniform(cfg.dtype, _labels.back().data(), n,
                   derive_seed(cfg.seed, 0x1ABE1, static_cast<std::uint64_t>(step)), 1.0f, s.get());
    }
    s.synchronize();
  }
  /// Step `step`'s inputs, as the Pipeline takes them.
  [[nodiscard]] dualpipe::ConstBytes inputs(int step) const { return view(_inputs[static_cast<std::size_t>(step)]); }
  /// Step `step`'s labels.
  [[nodiscard]] dualpipe::ConstBytes labels(int step) const { return view(_labels[static_cast<std::size_t>(step)]); }

private:
  [[nodiscard]] dualpipe::ConstBytes view(const dualpipe::DeviceBuffer<dualpipe::SyncAllocator>& b) const {
    return {static_cast<const std::byte*>(b.data()), _bytes};
  }
  std::size_t _bytes;
  std::vector<dualpipe::DeviceBuffer<dualpipe::SyncAllocator>> _inputs, _labels;
};

/// Device floats to the host (waits for the device).
[[nodiscard]] inline std::vector<float> to_host(const float* d, std::size_t n) {
  std::vector<float> h(n);
  DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
  DUALPIPE_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

/// A stage's parameters as floats on the host.
[[nodiscard]] inline std::vector<float> params_to_host(const ModelConfig& cfg, const MlpStage& st) {
  float* tmp = nullptr;
  DUALPIPE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&tmp), cfg.params() * sizeof(float)));
  to_float(cfg.dtype, st.params(), tmp, cfg.params(), nullptr);
  std::vector<float> h = to_host(tmp, cfg.params());
  dualpipe::ignore_cuda_error(cudaFree(tmp));
  return h;
}

/// Normwise relative error max|a-b| / max|b| (+inf for a size mismatch or a non-finite value).
[[nodiscard]] inline double relative_error(std::span<const float> got, std::span<const float> want) noexcept {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double d = 0, s = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i])) return std::numeric_limits<double>::infinity();
    d = std::max(d, std::abs(static_cast<double>(got[i]) - want[i]));
    s = std::max(s, std::abs(static_cast<double>(want[i])));
  }
  return d / std::max(s, static_cast<double>(FLT_MIN));
}
/// The same over doubles (the chunk losses).
[[nodiscard]] inline double relative_error(std::span<const double> got, std::span<const double> want) noexcept {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double d = 0, s = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i])) return std::numeric_limits<double>::infinity();
    d = std::max(d, std::abs(got[i] - want[i]));
    s = std::max(s, std::abs(want[i]));
  }
  return d / std::max(s, DBL_MIN);
}
/// A stage's gradients or parameters, W1 and W2 each at its own scale: the larger error.
[[nodiscard]] inline double stage_error(std::span<const float> got, std::span<const float> want) noexcept {
  if (got.size() != want.size() || got.size() % 2) return std::numeric_limits<double>::infinity();
  const std::size_t w = got.size() / 2;
  return std::max(relative_error(got.first(w), want.first(w)), relative_error(got.subspan(w), want.subspan(w)));
}

/// What the sequential run saw.
struct SequentialRun {
  std::vector<std::vector<double>> losses;             ///< [step][batch chunk]
  std::vector<std::vector<std::vector<float>>> grads;  ///< [step][stage]: dW1 then dW2
  std::vector<std::vector<float>> final_params;        ///< [stage], after the last update
};

/// Runs `steps` steps of the `stages`-stage model chunk by chunk on one stream.
[[nodiscard]] inline SequentialRun run_sequential(const ModelConfig& cfg, int stages, int chunks, int steps, float lr,
                                                  const Batches& batches) {
  dualpipe::Stream s;
  Blas blas;
  std::vector<std::unique_ptr<MlpStage>> model;
  for (int st = 0; st < stages; ++st) model.push_back(std::make_unique<MlpStage>(cfg, st, chunks, blas, s.get()));
  const std::size_t bytes = cfg.chunk_elems() * dtype_bytes(cfg.dtype);
  dualpipe::DeviceBuffer<dualpipe::SyncAllocator> act_a(bytes, s.ref()), act_b(bytes, s.ref()), grad_a(bytes, s.ref()),
      grad_b(bytes, s.ref());
  auto mut = [&](auto& b) { return dualpipe::MutableBytes(static_cast<std::byte*>(b.data()), bytes); };
  SequentialRun run;
  for (int step = 0; step < steps; ++step) {
    std::vector<double> losses(static_cast<std::size_t>(chunks));
    for (int c = 0; c < chunks; ++c) {
      dualpipe::StageContext ctx;
      ctx.chunk = c;
      ctx.batch_chunk = c;
      ctx.num_batch_chunks = chunks;
      ctx.num_stages = stages;
      ctx.loss_scale = 1.0 / chunks;
      ctx.stream = s.get();
      const dualpipe::ConstBytes x = batches.inputs(step).subspan(static_cast<std::size_t>(c) * bytes, bytes);
      const dualpipe::ConstBytes t = batches.labels(step).subspan(static_cast<std::size_t>(c) * bytes, bytes);
      for (int st = 0; st < stages; ++st) {
        ctx.stage = st;
        ctx.is_first_stage = st == 0;
        ctx.is_last_stage = st == stages - 1;
        model[static_cast<std::size_t>(st)]->forward(ctx, st == 0 ? x : dualpipe::ConstBytes(mut(act_a)), mut(act_b));
        std::swap(act_a, act_b);
      }
      losses[static_cast<std::size_t>(c)] = model.back()->loss(ctx, mut(act_a), t);
      for (int st = stages - 1; st >= 0; --st) {
        ctx.stage = st;
        ctx.is_first_stage = st == 0;
        ctx.is_last_stage = st == stages - 1;
        MlpStage& m = *model[static_cast<std::size_t>(st)];
        m.backward_input(ctx, st == stages - 1 ? dualpipe::ConstBytes{} : dualpipe::ConstBytes(mut(grad_a)),
                         st == 0 ? dualpipe::MutableBytes{} : mut(grad_b));
        m.backward_weight(ctx);
        std::swap(grad_a, grad_b);
      }
    }
    run.losses.push_back(std::move(losses));
    std::vector<std::vector<float>> grads;
    for (auto& m : model) {
      grads.push_back(to_host(m->grads(), cfg.params()));
      m->sgd_step(m->grads(), lr, s.get());
      m->zero_grad(s.get());
    }
    run.grads.push_back(std::move(grads));
  }
  for (auto& m : model) run.final_params.push_back(params_to_host(cfg, *m));
  s.synchronize();
  return run;
}

}  // namespace mlp
