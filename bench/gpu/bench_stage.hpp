// bench/gpu/bench_stage.hpp: a synthetic GPU stage whose ops cost what it is told. Each half of the work is
// a busy kernel (compute: `ns` on `blocks` blocks) plus a device-to-device copy of `copy_bytes` (memory
// traffic, the stand-in for an MoE layer's dispatch and combine), and the chunk's message is copied from
// input to output, so that every buffer dependency is real.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "bench_kernels.hpp"
#include "dualpipe/cuda.hpp"

namespace gpubench {

/// What one op of the stage costs.
struct StageCost {
  unsigned forward_ns = 100'000;         ///< F compute.
  unsigned backward_input_ns = 100'000;  ///< The input part of B.
  unsigned weight_ns = 100'000;          ///< W (the weight part of B).
  unsigned blocks = 16;                  ///< Blocks of every busy kernel.
  std::size_t copy_bytes = 0;            ///< Extra device copy in F and in the input part of B.
  std::size_t message_bytes = 1 << 20;   ///< A chunk's activations (and gradients).
};

/// The synthetic stage. Its loss is 0 (written asynchronously).
class BenchStage {
public:
  explicit BenchStage(StageCost cost) : _cost(cost) {
    const std::size_t scratch = cost.copy_bytes > 0 ? 2 * cost.copy_bytes : 0;
    DUALPIPE_CUDA_CHECK(cudaMalloc(&_mem, scratch + sizeof(double)));
    DUALPIPE_CUDA_CHECK(cudaMemset(_mem, 0, scratch + sizeof(double)));
    DUALPIPE_CUDA_CHECK(
        cudaDeviceSynchronize());  // the legacy stream's memset is not ordered with non-blocking streams
    _zero = reinterpret_cast<double*>(static_cast<std::byte*>(_mem) + scratch);
  }
  BenchStage(const BenchStage&) = delete;
  BenchStage& operator=(const BenchStage&) = delete;
  ~BenchStage() { dualpipe::ignore_cuda_error(cudaFree(_mem)); }

  void forward(const dualpipe::StageContext& ctx, dualpipe::ConstBytes in, dualpipe::MutableBytes out) {
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    half(_cost.forward_ns, s, 0);
    if (!in.empty())
      DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(out.data(), in.data(), out.size(), cudaMemcpyDeviceToDevice, s));
  }
  double loss(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::ConstBytes) { return 0; }
  void loss_to(const dualpipe::StageContext& ctx, dualpipe::ConstBytes, dualpipe::ConstBytes, double* l) {
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(l, _zero, sizeof(double), cudaMemcpyDeviceToHost, dualpipe::cuda_stream(ctx)));
  }
  void backward_input(const dualpipe::StageContext& ctx, dualpipe::ConstBytes grad, dualpipe::MutableBytes in_grad) {
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    half(_cost.backward_input_ns, s, 1);
    if (!grad.empty() && !in_grad.empty())
      DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(in_grad.data(), grad.data(), in_grad.size(), cudaMemcpyDeviceToDevice, s));
  }
  void backward_weight(const dualpipe::StageContext& ctx) {
    gpubench::busy(_cost.weight_ns, _cost.blocks, dualpipe::cuda_stream(ctx));
  }
  [[nodiscard]] std::size_t input_bytes() const { return _cost.message_bytes; }
  [[nodiscard]] std::size_t output_bytes() const { return _cost.message_bytes; }

private:
  void half(unsigned ns, cudaStream_t s, int which) {
    gpubench::busy(ns, _cost.blocks, s);
    if (_cost.copy_bytes > 0) {
      // Forward and backward each copy within their own half of the scratch memory, so that two halves in
      // flight at once (an FB) touch no common bytes.
      std::byte* base = static_cast<std::byte*>(_mem) + (which ? _cost.copy_bytes : 0);
      const std::size_t n = _cost.copy_bytes / 2;
      DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(base + n, base, n, cudaMemcpyDeviceToDevice, s));
    }
  }

  StageCost _cost;
  void* _mem = nullptr;
  double* _zero = nullptr;
};

}  // namespace gpubench
