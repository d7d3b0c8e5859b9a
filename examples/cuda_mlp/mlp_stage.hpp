// cuda_mlp/mlp_stage.hpp: one stage of the example's model on the GPU: Linear(h,4h) -> GELU -> Linear(4h,h),
// no bias, fp32 or bf16 (weight gradients in fp32), MSE loss at the last stage. The GEMMs are cuBLAS
// (cublasGemmEx, fp32 accumulation); the backward is split into its input part (backward_input: dX) and its
// weight part (backward_weight: dW1, dW2), so that the zero-bubble schedules' W ops do real work.
//
// Row-major tensors, per chunk of `rows` rows:
//   Z = X W1      [rows, 4h]    W1 [h, 4h]
//   A = gelu(Z)   [rows, 4h]
//   Y = A W2      [rows, h]     W2 [4h, h]
//   backward input:  dA = dY W2^T,  dZ = dA * gelu'(Z),  dX = dZ W1^T
//   backward weight: dW2 += A^T dY,  dW1 += X^T dZ
// A stage keeps X, Z, A, dY and dZ per chunk (ctx.chunk) in device memory, so that a chunk's weight part
// can run long after its input part. Every call issues its work to ctx.stream and returns at once; the loss
// is written asynchronously (loss_to), so nothing in a step waits for the GPU.
//
// MlpHookStage adds the overlapped forward_backward hook: it splits both halves of an FB into `pieces`
// row blocks and issues them alternately, forward piece i on the forward's stream, backward piece i on the
// backward's, the way an MoE layer interleaves its halves to hide all-to-all behind compute.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "dualpipe/cuda/cublas.hpp"
#include "mlp_kernels.hpp"

namespace mlp {

using dualpipe::ConstBytes;
using dualpipe::MutableBytes;
using dualpipe::StageContext;

/// The model's shape and numbers, shared by every stage and by the sequential run.
struct ModelConfig {
  int hidden = 256;          ///< h.
  int rows = 64;             ///< Rows of one chunk.
  DType dtype = DType::f32;  ///< Activations and weights.
  std::uint64_t seed = 233;  ///< Weights and batches derive from it.
  int pieces = 4;            ///< Row blocks of an FB in MlpHookStage.

  [[nodiscard]] std::size_t h() const noexcept { return static_cast<std::size_t>(hidden); }
  [[nodiscard]] std::size_t n() const noexcept { return static_cast<std::size_t>(rows); }
  /// Elements of one chunk's activations (rows x h).
  [[nodiscard]] std::size_t chunk_elems() const noexcept { return n() * h(); }
  /// Parameters of one stage: W1 then W2, 8 h^2.
  [[nodiscard]] std::size_t params() const noexcept { return 8 * h() * h(); }
};

/// A seed from a base seed and two indices, well mixed.
[[nodiscard]] inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t a, std::uint64_t b = 0) noexcept {
  std::uint64_t z = seed ^ (a * 0xD1B54A32D192ED03ull) ^ (b * 0x8CB92BA72F3D8DD7ull);
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// cuBLAS handles of one rank, one per stream (each with its own workspace), made on first use.
class Blas {
public:
  /// The handle whose calls go to `s`. Throws CudaError.
  cublasHandle_t on(cudaStream_t s) {
    for (auto& h : _handles)
      if (h.stream() == s) return h.get();
    _handles.emplace_back(dualpipe::StreamRef(s));
    return _handles.back().get();
  }
  /// Destroys every handle: call it before the streams they are bound to go.
  void clear() noexcept { _handles.clear(); }

private:
  std::vector<dualpipe::CublasHandle> _handles;
};

/// Row-major C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C; A, B in `ab`, C in `c` (fp32 accumulation).
inline void gemm(cublasHandle_t h, bool trans_a, bool trans_b, std::size_t M, std::size_t N, std::size_t K,
                 const void* A, const void* B, cudaDataType_t ab, void* C, cudaDataType_t c, float beta) {
  // cuBLAS is column-major: a row-major X is its transpose there, so compute C^T = op(B)^T op(A)^T.
  const float alpha = 1.0f;
  const int lda = static_cast<int>(trans_a ? M : K);
  const int ldb = static_cast<int>(trans_b ? K : N);
  DUALPIPE_CUBLAS_CHECK(cublasGemmEx(h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                     static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B, ab, ldb,
                                     A, ab, lda, &beta, C, c, static_cast<int>(N), CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
}

/// One stage (see the file comment). Not copyable; device memory freed on destruction.
class MlpStage {
public:
  /// Model stage `stage` of `cfg`, for chunks 0..chunks-1 of its own numbering; weights from (seed, stage).
  MlpStage(const ModelConfig& cfg, int stage, int chunks, Blas& blas, cudaStream_t init_stream)
      : _cfg(cfg), _stage(stage), _chunks(chunks < 1 ? 1 : chunks), _blas(&blas) {
    const std::size_t e = dtype_bytes(cfg.dtype), h = cfg.h(), n = cfg.n(), c = static_cast<std::size_t>(_chunks);
    // One allocation: W (8h^2), per chunk X, dY, dY_last (n h each), Z, A, dZ (4 n h each); fp32 grads; losses.
    _per_chunk = 15 * n * h;
    const std::size_t act_bytes = (cfg.params() + c * _per_chunk) * e;
    const std::size_t bytes = align(act_bytes) + align(cfg.params() * sizeof(float)) + c * sizeof(double);
    DUALPIPE_CUDA_CHECK(cudaMalloc(&_mem, bytes));
    DUALPIPE_CUDA_CHECK(cudaMemsetAsync(_mem, 0, bytes, init_stream));
    auto* base = static_cast<std::byte*>(_mem);
    _w = base;
    _grad = reinterpret_cast<float*>(base + align(act_bytes));
    _loss = reinterpret_cast<double*>(base + align(act_bytes) + align(cfg.params() * sizeof(float)));
    fill_uniform(cfg.dtype, w1(), 4 * h * h, derive_seed(cfg.seed, 0x57A6E, static_cast<std::uint64_t>(stage) * 2),
                 1.0f / std::sqrt(static_cast<float>(h)), init_stream);
    fill_uniform(cfg.dtype, w2(), 4 * h * h, derive_seed(cfg.seed, 0x57A6E, static_cast<std::uint64_t>(stage) * 2 + 1),
                 1.0f / std::sqrt(4.0f * static_cast<float>(h)), init_stream);
    DUALPIPE_CUDA_CHECK_LAST();
  }
  MlpStage(const MlpStage&) = delete;
  MlpStage& operator=(const MlpStage&) = delete;
  ~MlpStage() { dualpipe::ignore_cuda_error(cudaFree(_mem)); }

  // ---- Stage --------------------------------------------------------------------------------------------
  void forward(const StageContext& ctx, ConstBytes in, MutableBytes out) {
    forward_rows(ctx, in, out, 0, _cfg.n());
    ++forward_calls;
  }
  /// The loss, waiting for it (used by the sequential run; the pipeline uses loss_to).
  double loss(const StageContext& ctx, ConstBytes out, ConstBytes labels) {
    double* pinned = nullptr;
    DUALPIPE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned), sizeof(double)));
    loss_to(ctx, out, labels, pinned);
    const cudaError_t e = cudaStreamSynchronize(dualpipe::cuda_stream(ctx));
    const double v = *pinned;
    dualpipe::ignore_cuda_error(cudaFreeHost(pinned));
    DUALPIPE_CUDA_CHECK(e);
    return v;
  }
  /// The loss of chunk ctx.chunk into *loss, asynchronously; also its output gradient for backward_input.
  void loss_to(const StageContext& ctx, ConstBytes out, ConstBytes labels, double* loss) {
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    double* d = _loss + ctx.chunk;
    mse_loss(_cfg.dtype, out.data(), labels.data(), dy_last(ctx.chunk), d, _cfg.chunk_elems(), ctx.loss_scale, s);
    DUALPIPE_CUDA_CHECK_LAST();
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(loss, d, sizeof(double), cudaMemcpyDeviceToHost, s));
  }
  void backward_input(const StageContext& ctx, ConstBytes grad, MutableBytes in_grad) {
    backward_input_rows(ctx, grad, in_grad, 0, _cfg.n());
  }
  void backward_weight(const StageContext& ctx) {
    backward_weight_rows(ctx, 0, _cfg.n());
    ++weight_calls;
  }
  [[nodiscard]] std::size_t input_bytes() const { return _cfg.chunk_elems() * dtype_bytes(_cfg.dtype); }
  [[nodiscard]] std::size_t output_bytes() const { return input_bytes(); }
  [[nodiscard]] std::size_t label_bytes() const { return input_bytes(); }

  // ---- Parameters and gradients --------------------------------------------------------------------------
  /// Model stage.
  [[nodiscard]] int stage() const noexcept { return _stage; }
  /// W1 then W2 (8 h^2 elements of the model's dtype), device memory.
  [[nodiscard]] void* params() const noexcept { return _w; }
  /// dW1 then dW2 (8 h^2 floats), device memory, accumulated since zero_grad.
  [[nodiscard]] float* grads() const noexcept { return _grad; }
  /// Zeroes the gradients (on `s`).
  void zero_grad(cudaStream_t s) { DUALPIPE_CUDA_CHECK(cudaMemsetAsync(_grad, 0, _cfg.params() * sizeof(float), s)); }
  /// W -= lr g (on `s`).
  void sgd_step(const float* g, float lr, cudaStream_t s) {
    sgd(_cfg.dtype, _w, g, _cfg.params(), lr, s);
    DUALPIPE_CUDA_CHECK_LAST();
  }

  long forward_calls = 0;  ///< forward() calls (a hook's pieces count once per chunk).
  long weight_calls = 0;   ///< backward_weight() calls, W ops included.
  long hook_calls = 0;     ///< FB ops run through the hook (MlpHookStage).

protected:
  // Rows [r0, r0 + rows) of a chunk's forward.
  void forward_rows(const StageContext& ctx, ConstBytes in, MutableBytes out, std::size_t r0, std::size_t rows) {
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    cublasHandle_t h = _blas->on(s);
    const std::size_t e = dtype_bytes(_cfg.dtype), H = _cfg.h(), c = static_cast<std::size_t>(ctx.chunk);
    std::byte* xs = x(c) + r0 * H * e;
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(xs, in.data() + r0 * H * e, rows * H * e, cudaMemcpyDeviceToDevice, s));
    std::byte* zc = z(c) + r0 * 4 * H * e;
    std::byte* ac = a(c) + r0 * 4 * H * e;
    gemm(h, false, false, rows, 4 * H, H, xs, w1(), type(), zc, type(), 0.0f);
    gelu_forward(_cfg.dtype, zc, ac, rows * 4 * H, s);
    DUALPIPE_CUDA_CHECK_LAST();
    gemm(h, false, false, rows, H, 4 * H, ac, w2(), type(), out.data() + r0 * H * e, type(), 0.0f);
  }
  // Rows [r0, r0 + rows) of a chunk's backward input part.
  void backward_input_rows(const StageContext& ctx, ConstBytes grad, MutableBytes in_grad, std::size_t r0,
                           std::size_t rows) {
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    cublasHandle_t h = _blas->on(s);
    const std::size_t e = dtype_bytes(_cfg.dtype), H = _cfg.h(), c = static_cast<std::size_t>(ctx.chunk);
    const std::byte* g = (ctx.is_last_stage ? dy_last(ctx.chunk) : grad.data()) + r0 * H * e;
    std::byte* dys = dy(c) + r0 * H * e;
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(dys, g, rows * H * e, cudaMemcpyDeviceToDevice, s));
    std::byte* dzc = dz(c) + r0 * 4 * H * e;
    gemm(h, false, true, rows, 4 * H, H, dys, w2(), type(), dzc, type(), 0.0f);   // dA = dY W2^T
    gelu_backward(_cfg.dtype, z(c) + r0 * 4 * H * e, dzc, dzc, rows * 4 * H, s);  // dZ = dA gelu'(Z)
    DUALPIPE_CUDA_CHECK_LAST();
    if (!in_grad.empty())
      gemm(h, false, true, rows, H, 4 * H, dzc, w1(), type(), in_grad.data() + r0 * H * e, type(), 0.0f);  // dX
  }
  // Rows [r0, r0 + rows) of a chunk's weight part: accumulates into the fp32 gradients.
  void backward_weight_rows(const StageContext& ctx, std::size_t r0, std::size_t rows) {
    const cudaStream_t s = dualpipe::cuda_stream(ctx);
    cublasHandle_t h = _blas->on(s);
    const std::size_t e = dtype_bytes(_cfg.dtype), H = _cfg.h(), c = static_cast<std::size_t>(ctx.chunk);
    gemm(h, true, false, 4 * H, H, rows, a(c) + r0 * 4 * H * e, dy(c) + r0 * H * e, type(), _grad + 4 * H * H,
         CUDA_R_32F, 1.0f);  // dW2 += A^T dY
    gemm(h, true, false, H, 4 * H, rows, x(c) + r0 * H * e, dz(c) + r0 * 4 * H * e, type(), _grad, CUDA_R_32F,
         1.0f);  // dW1 += X^T dZ
  }

  ModelConfig _cfg;

private:
  static std::size_t align(std::size_t b) noexcept { return (b + 255) / 256 * 256; }
  [[nodiscard]] cudaDataType_t type() const noexcept { return _cfg.dtype == DType::f32 ? CUDA_R_32F : CUDA_R_16BF; }
  [[nodiscard]] std::byte* w1() const noexcept { return static_cast<std::byte*>(_w); }
  [[nodiscard]] std::byte* w2() const noexcept { return w1() + 4 * _cfg.h() * _cfg.h() * dtype_bytes(_cfg.dtype); }
  // Per-chunk tensors, in elements from the chunk's block: X, dY, dY_last (n h each), then Z, A, dZ (4 n h).
  [[nodiscard]] std::byte* block(std::size_t c, std::size_t elems_in) const noexcept {
    const std::size_t e = dtype_bytes(_cfg.dtype);
    return static_cast<std::byte*>(_w) + (_cfg.params() + c * _per_chunk + elems_in) * e;
  }
  [[nodiscard]] std::byte* x(std::size_t c) const noexcept { return block(c, 0); }
  [[nodiscard]] std::byte* dy(std::size_t c) const noexcept { return block(c, _cfg.chunk_elems()); }
  [[nodiscard]] std::byte* dy_last(int c) const noexcept {
    return block(static_cast<std::size_t>(c), 2 * _cfg.chunk_elems());
  }
  [[nodiscard]] std::byte* z(std::size_t c) const noexcept { return block(c, 3 * _cfg.chunk_elems()); }
  [[nodiscard]] std::byte* a(std::size_t c) const noexcept { return block(c, 7 * _cfg.chunk_elems()); }
  [[nodiscard]] std::byte* dz(std::size_t c) const noexcept { return block(c, 11 * _cfg.chunk_elems()); }

  int _stage;
  int _chunks;
  Blas* _blas;
  std::size_t _per_chunk = 0;
  void* _mem = nullptr;
  void* _w = nullptr;
  float* _grad = nullptr;
  double* _loss = nullptr;
};

/// MlpStage with the overlapped forward_backward hook (see the file comment).
class MlpHookStage : public MlpStage {
public:
  using MlpStage::MlpStage;

  /// Forward of (fctx) and backward (input and weight parts) of (bctx), in `pieces` row blocks issued
  /// alternately on fctx.stream and bctx.stream.
  static void forward_backward(MlpHookStage& f, const StageContext& fctx, ConstBytes in, MutableBytes out,
                               MlpHookStage& b, const StageContext& bctx, ConstBytes grad, MutableBytes in_grad) {
    const std::size_t rows = f._cfg.n();
    const std::size_t pieces =
        std::max<std::size_t>(1, std::min<std::size_t>(rows, static_cast<std::size_t>(f._cfg.pieces)));
    for (std::size_t p = 0; p < pieces; ++p) {
      const std::size_t r0 = rows * p / pieces, r1 = rows * (p + 1) / pieces;
      f.forward_rows(fctx, in, out, r0, r1 - r0);
      b.backward_input_rows(bctx, grad, in_grad, r0, r1 - r0);
      b.backward_weight_rows(bctx, r0, r1 - r0);
    }
    ++f.forward_calls;
    ++b.weight_calls;
    ++f.hook_calls;
  }
};

static_assert(dualpipe::check_stage<MlpStage>());
static_assert(dualpipe::StageWithAsyncLoss<MlpStage> && !dualpipe::StageWithOverlap<MlpStage>);
static_assert(dualpipe::StageWithOverlap<MlpHookStage>);

}  // namespace mlp
