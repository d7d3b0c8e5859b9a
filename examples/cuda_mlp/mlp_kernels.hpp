// cuda_mlp/mlp_kernels.hpp: the example's device code (mlp_kernels.cu, the one CUDA translation unit) behind
// plain host functions: element-wise kernels, the loss, Thrust for initialisation and reductions. Every
// function issues its work to stream `s` and returns at once, except sumsq (a Thrust reduction: it waits).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace mlp {

/// Element type of activations and weights (weight gradients are always fp32).
enum class DType { f32, bf16 };

/// Bytes of one element.
[[nodiscard]] inline std::size_t dtype_bytes(DType t) noexcept { return t == DType::f32 ? 4 : 2; }
/// "fp32" or "bf16".
[[nodiscard]] inline const char* dtype_name(DType t) noexcept { return t == DType::f32 ? "fp32" : "bf16"; }

/// p[i] = scale * u(seed, i), u uniform in [-1, 1) from a counter-based hash (Thrust tabulate): the same
/// values on every rank and every run.
void fill_uniform(DType t, void* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t s);
/// a = gelu(z) (exact, erf form), computed in fp32.
void gelu_forward(DType t, const void* z, void* a, std::size_t n, cudaStream_t s);
/// dz = da * gelu'(z), in place allowed (dz == da).
void gelu_backward(DType t, const void* z, const void* da, void* dz, std::size_t n, cudaStream_t s);
/// *loss = mean((y - labels)^2) (fp64 accumulation, one block: deterministic); dy = grad_scale * 2 (y - labels) / n.
void mse_loss(DType t, const void* y, const void* labels, void* dy, double* loss, std::size_t n, double grad_scale,
              cudaStream_t s);
/// acc += x (fp32).
void add_f32(float* acc, const float* x, std::size_t n, cudaStream_t s);
/// w -= lr g (w in `t`, g fp32; the update in fp32, rounded once).
void sgd(DType t, void* w, const float* g, std::size_t n, float lr, cudaStream_t s);
/// Sum of squares of an fp32 array, accumulated in fp64 (Thrust transform_reduce; waits for the result).
[[nodiscard]] double sumsq(const float* g, std::size_t n, cudaStream_t s);
/// dst = float(src), for checks on the host.
void to_float(DType t, const void* src, float* dst, std::size_t n, cudaStream_t s);

}  // namespace mlp
