// The GPU tests' model: stage s computes y = a_s x + b_s on chunks of n doubles (MSE loss at the last
// stage), on the GPU (GpuAffineStage: kernels on ctx.stream, state per chunk in device memory, the loss
// written asynchronously) and on the host (CpuAffineStage: the same arithmetic). Each GPU call is recorded
// with the stream it was given, and every kernel can busy-wait first, so that a missing event wait between
// streams would let a reader see stale data and the comparison with the host run fail.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "gpu_test_kernels.hpp"

namespace gputest {

/// Parameters of model stage s (exact in binary, different per stage).
[[nodiscard]] inline double param_a(int s) { return 1.0 + 0.125 * s; }
[[nodiscard]] inline double param_b(int s) { return 0.0625 * (s + 1); }

/// One recorded call of a GPU stage: F forward, L loss, I backward input, W backward weight, H the hook.
struct Call {
  char kind;
  int chunk;
  void* stream;
};

/// The GPU stage; `Hook` adds the overlapped forward_backward hook (forward on fctx.stream, backward on
/// bctx.stream).
template <bool Hook>
class GpuAffineStage {
public:
  /// `spin_ns`: every kernel busy-waits that long first; `backward_spin_ns` (when > 0) instead for the kernel
  /// that makes the gradient sent on (backward_input), so that gradients come late against activations.
  GpuAffineStage(int stage, int chunks, std::size_t n, unsigned spin_ns = 0, unsigned backward_spin_ns = 0)
      : _stage(stage), _n(n), _spin(spin_ns), _backward_spin(backward_spin_ns > 0 ? backward_spin_ns : spin_ns),
        _a(param_a(stage)), _b(param_b(stage)) {
    const std::size_t c = static_cast<std::size_t>(chunks < 1 ? 1 : chunks);
    DUALPIPE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&_mem), (3 * c * n + c + 2) * sizeof(double)));
    DUALPIPE_CUDA_CHECK(cudaMemset(_mem, 0, (3 * c * n + c + 2) * sizeof(double)));
    _x = _mem;
    _dy = _x + c * n;
    _dy_last = _dy + c * n;
    _loss = _dy_last + c * n;
    _grad = _loss + c;
    _chunks = static_cast<int>(c);
  }
  GpuAffineStage(const GpuAffineStage&) = delete;
  GpuAffineStage& operator=(const GpuAffineStage&) = delete;
  ~GpuAffineStage() { dualpipe::ignore_cuda_error(cudaFree(_mem)); }

  void forward(const dualpipe::StageContext& ctx, dualpipe::ConstBytes in, dualpipe::MutableBytes out) {
    check(ctx, in.size(), out.size());
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(x(ctx), in.data(), bytes(), cudaMemcpyDeviceToDevice, s));
    affine(x(ctx), reinterpret_cast<double*>(out.data()), _a, _b, _n, _spin, s);
    DUALPIPE_CUDA_CHECK_LAST();
    calls.push_back({'F', ctx.chunk, ctx.stream});
    if (fail_forward_of_chunk == ctx.chunk) throw std::runtime_error("injected failure in forward");
  }
  double loss(const dualpipe::StageContext& ctx, dualpipe::ConstBytes out, dualpipe::ConstBytes labels) {
    double h = 0;
    loss_to(ctx, out, labels, &h);
    DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(dualpipe::cuda_stream(ctx)));
    return h;
  }
  void loss_to(const dualpipe::StageContext& ctx, dualpipe::ConstBytes out, dualpipe::ConstBytes labels, double* l) {
    check(ctx, out.size(), labels.size());
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    double* loss = _loss + ctx.chunk;
    mse(reinterpret_cast<const double*>(out.data()), reinterpret_cast<const double*>(labels.data()), dy_last(ctx), loss,
        _n, ctx.loss_scale, s);
    DUALPIPE_CUDA_CHECK_LAST();
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(l, loss, sizeof(double), cudaMemcpyDeviceToHost, s));
    calls.push_back({'L', ctx.chunk, ctx.stream});
  }
  void backward_input(const dualpipe::StageContext& ctx, dualpipe::ConstBytes grad, dualpipe::MutableBytes in_grad) {
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    const double* g = ctx.is_last_stage ? dy_last(ctx) : reinterpret_cast<const double*>(grad.data());
    if (!ctx.is_last_stage) check(ctx, grad.size(), bytes());
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(dy(ctx), g, bytes(), cudaMemcpyDeviceToDevice, s));
    if (!in_grad.empty()) {
      check(ctx, in_grad.size(), bytes());
      scale(g, reinterpret_cast<double*>(in_grad.data()), _a, _n, _backward_spin, s);
      DUALPIPE_CUDA_CHECK_LAST();
    }
    calls.push_back({'I', ctx.chunk, ctx.stream});
  }
  void backward_weight(const dualpipe::StageContext& ctx) {
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    dot_add(dy(ctx), x(ctx), _grad, _n, s);
    dot_add(dy(ctx), nullptr, _grad + 1, _n, s);
    DUALPIPE_CUDA_CHECK_LAST();
    calls.push_back({'W', ctx.chunk, ctx.stream});
  }
  static void forward_backward(GpuAffineStage& f, const dualpipe::StageContext& fctx, dualpipe::ConstBytes in,
                               dualpipe::MutableBytes out, GpuAffineStage& b, const dualpipe::StageContext& bctx,
                               dualpipe::ConstBytes grad, dualpipe::MutableBytes in_grad) requires Hook {
    f.calls.push_back({'H', fctx.chunk, fctx.stream});
    f.forward(fctx, in, out);
    b.backward_input(bctx, grad, in_grad);
    b.backward_weight(bctx);
  }
  [[nodiscard]] std::size_t input_bytes() const { return bytes(); }
  [[nodiscard]] std::size_t output_bytes() const { return bytes(); }
  [[nodiscard]] std::size_t label_bytes() const { return bytes(); }

  /// (d/da, d/db) accumulated so far (waits for the device).
  [[nodiscard]] std::vector<double> grads() const {
    std::vector<double> g(2);
    DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
    DUALPIPE_CUDA_CHECK(cudaMemcpy(g.data(), _grad, 2 * sizeof(double), cudaMemcpyDeviceToHost));
    return g;
  }
  void zero_grad() {
    DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
    DUALPIPE_CUDA_CHECK(cudaMemset(_grad, 0, 2 * sizeof(double)));
  }
  [[nodiscard]] int stage() const noexcept { return _stage; }
  /// The device gradient (d/da, d/db): two doubles, for a device reduction.
  [[nodiscard]] double* grad_data() const noexcept { return _grad; }

  std::vector<Call> calls;         ///< Every call, in order.
  int fail_forward_of_chunk = -1;  ///< Forward of this chunk throws (after issuing its work).

private:
  [[nodiscard]] std::size_t bytes() const noexcept { return _n * sizeof(double); }
  void check(const dualpipe::StageContext& ctx, std::size_t got, std::size_t want) const {
    if (got != want || ctx.chunk < 0 || ctx.chunk >= _chunks || ctx.stream == nullptr)
      throw std::runtime_error("GpuAffineStage " + std::to_string(_stage) + ": bad call (chunk " +
                               std::to_string(ctx.chunk) + ", " + std::to_string(got) + " bytes, expected " +
                               std::to_string(want) + ", stream " + (ctx.stream ? "set" : "null") + ")");
  }
  double* x(const dualpipe::StageContext& c) const { return _x + static_cast<std::size_t>(c.chunk) * _n; }
  double* dy(const dualpipe::StageContext& c) const { return _dy + static_cast<std::size_t>(c.chunk) * _n; }
  double* dy_last(const dualpipe::StageContext& c) const { return _dy_last + static_cast<std::size_t>(c.chunk) * _n; }

  int _stage;
  std::size_t _n;
  unsigned _spin;
  unsigned _backward_spin;
  double _a, _b;
  int _chunks = 0;
  double* _mem = nullptr;
  double *_x = nullptr, *_dy = nullptr, *_dy_last = nullptr, *_loss = nullptr, *_grad = nullptr;
};

/// The same model on the host.
class CpuAffineStage {
public:
  CpuAffineStage(int stage, int chunks, std::size_t n)
      : _stage(stage), _n(n), _a(param_a(stage)), _b(param_b(stage)), _x(static_cast<std::size_t>(chunks) * n),
        _dy(_x.size()), _dy_last(_x.size()) {}

  void forward(const dualpipe::StageContext& ctx, dualpipe::ConstBytes in, dualpipe::MutableBytes out) {
    const auto* xi = reinterpret_cast<const double*>(in.data());
    auto* y = reinterpret_cast<double*>(out.data());
    for (std::size_t i = 0; i < _n; ++i) {
      x(ctx)[i] = xi[i];
      y[i] = _a * xi[i] + _b;
    }
  }
  double loss(const dualpipe::StageContext& ctx, dualpipe::ConstBytes out, dualpipe::ConstBytes labels) {
    const auto* y = reinterpret_cast<const double*>(out.data());
    const auto* t = reinterpret_cast<const double*>(labels.data());
    double acc = 0;
    for (std::size_t i = 0; i < _n; ++i) {
      const double d = y[i] - t[i];
      acc += d * d;
      dy_last(ctx)[i] = ctx.loss_scale * d / static_cast<double>(_n);
    }
    return acc / (2.0 * static_cast<double>(_n));
  }
  void backward_input(const dualpipe::StageContext& ctx, dualpipe::ConstBytes grad, dualpipe::MutableBytes in_grad) {
    const double* g = ctx.is_last_stage ? dy_last(ctx) : reinterpret_cast<const double*>(grad.data());
    for (std::size_t i = 0; i < _n; ++i) dy(ctx)[i] = g[i];
    if (!in_grad.empty())
      for (std::size_t i = 0; i < _n; ++i) reinterpret_cast<double*>(in_grad.data())[i] = _a * g[i];
  }
  void backward_weight(const dualpipe::StageContext& ctx) {
    for (std::size_t i = 0; i < _n; ++i) {
      _grad[0] += dy(ctx)[i] * x(ctx)[i];
      _grad[1] += dy(ctx)[i];
    }
  }
  [[nodiscard]] std::size_t input_bytes() const { return _n * sizeof(double); }
  [[nodiscard]] std::size_t output_bytes() const { return _n * sizeof(double); }
  [[nodiscard]] std::size_t label_bytes() const { return _n * sizeof(double); }
  [[nodiscard]] std::vector<double> grads() const { return {_grad[0], _grad[1]}; }
  void zero_grad() { _grad[0] = _grad[1] = 0; }
  [[nodiscard]] int stage() const noexcept { return _stage; }

private:
  double* x(const dualpipe::StageContext& c) { return _x.data() + static_cast<std::size_t>(c.chunk) * _n; }
  double* dy(const dualpipe::StageContext& c) { return _dy.data() + static_cast<std::size_t>(c.chunk) * _n; }
  double* dy_last(const dualpipe::StageContext& c) { return _dy_last.data() + static_cast<std::size_t>(c.chunk) * _n; }

  int _stage;
  std::size_t _n;
  double _a, _b;
  std::vector<double> _x, _dy, _dy_last;
  double _grad[2] = {0, 0};
};

}  // namespace gputest
