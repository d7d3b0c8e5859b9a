// The cuda_mlp example's device code (examples/cuda_mlp/mlp_kernels.hpp) for the CUDA emulator: the same
// functions on host threads, in stream order, with the accesses they make declared to the race checker.
// bf16 is stored as the top 16 bits of an fp32 (rounded to nearest even), as __nv_bfloat16 is.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_emulator.hpp"
#include "mlp_kernels.hpp"

namespace mlp {
namespace {

using cuda_emulator::Access;

using cuda_emulator::bf16_to_float;
using cuda_emulator::float_to_bf16;
float load(DType t, const void* p, std::size_t i) {
  return t == DType::f32 ? static_cast<const float*>(p)[i] : bf16_to_float(static_cast<const std::uint16_t*>(p)[i]);
}
void store(DType t, void* p, std::size_t i, float v) {
  if (t == DType::f32) static_cast<float*>(p)[i] = v;
  else static_cast<std::uint16_t*>(p)[i] = float_to_bf16(v);
}
std::uint64_t mix(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
float gelu(float z) { return 0.5f * z * (1.0f + std::erf(z * 0.70710678118654752f)); }
float gelu_grad(float z) {
  return 0.5f * (1.0f + std::erf(z * 0.70710678118654752f)) + z * 0.39894228040143268f * std::exp(-0.5f * z * z);
}

// Issues `work` on `s`; a failed issue is left for cudaGetLastError, as a failed kernel launch.
void issue(cudaStream_t s, std::function<void()> work, const char* name, std::vector<Access> accesses) {
  (void)cuda_emulator::launch(s, std::move(work), name, std::move(accesses));
}

}  // namespace

void fill_uniform(DType t, void* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t s) {
  issue(s,
        [=] {
          for (std::size_t i = 0; i < n; ++i) {
            const std::uint64_t bits = mix(seed ^ mix(static_cast<std::uint64_t>(i)));
            store(t, p, i, scale * (static_cast<float>(bits >> 40) * (1.0f / 8388608.0f) - 1.0f));
          }
        },
        "kernel fill_uniform", {{p, n * dtype_bytes(t), true}});
}

void gelu_forward(DType t, const void* z, void* a, std::size_t n, cudaStream_t s) {
  issue(s,
        [=] {
          for (std::size_t i = 0; i < n; ++i) store(t, a, i, gelu(load(t, z, i)));
        },
        "kernel gelu_forward", {{z, n * dtype_bytes(t), false}, {a, n * dtype_bytes(t), true}});
}

void gelu_backward(DType t, const void* z, const void* da, void* dz, std::size_t n, cudaStream_t s) {
  issue(s,
        [=] {
          for (std::size_t i = 0; i < n; ++i) store(t, dz, i, load(t, da, i) * gelu_grad(load(t, z, i)));
        },
        "kernel gelu_backward",
        {{z, n * dtype_bytes(t), false}, {da, n * dtype_bytes(t), false}, {dz, n * dtype_bytes(t), true}});
}

void mse_loss(DType t, const void* y, const void* labels, void* dy, double* loss, std::size_t n, double grad_scale,
              cudaStream_t s) {
  issue(s,
        [=] {
          double acc = 0;
          for (std::size_t i = 0; i < n; ++i) {
            const double d = static_cast<double>(load(t, y, i)) - static_cast<double>(load(t, labels, i));
            acc += d * d;
            store(t, dy, i, static_cast<float>(grad_scale * 2.0 * d / static_cast<double>(n)));
          }
          *loss = acc / static_cast<double>(n);
        },
        "kernel mse_loss",
        {{y, n * dtype_bytes(t), false},
         {labels, n * dtype_bytes(t), false},
         {dy, n * dtype_bytes(t), true},
         {loss, sizeof(double), true}});
}

void add_f32(float* acc, const float* x, std::size_t n, cudaStream_t s) {
  issue(s,
        [=] {
          for (std::size_t i = 0; i < n; ++i) acc[i] += x[i];
        },
        "kernel add_f32", {{x, n * 4, false}, {acc, n * 4, true}});
}

void sgd(DType t, void* w, const float* g, std::size_t n, float lr, cudaStream_t s) {
  issue(s,
        [=] {
          for (std::size_t i = 0; i < n; ++i) store(t, w, i, load(t, w, i) - lr * g[i]);
        },
        "kernel sgd", {{g, n * 4, false}, {w, n * dtype_bytes(t), true}});
}

double sumsq(const float* g, std::size_t n, cudaStream_t s) {
  double result = 0;
  issue(s,
        [=, &result] {
          double acc = 0;
          for (std::size_t i = 0; i < n; ++i) acc += static_cast<double>(g[i]) * g[i];
          result = acc;
        },
        "thrust transform_reduce", {{g, n * 4, false}});
  (void)cudaStreamSynchronize(s);  // as Thrust's reduction: it waits for its result
  return result;
}

void to_float(DType t, const void* src, float* dst, std::size_t n, cudaStream_t s) {
  issue(s,
        [=] {
          for (std::size_t i = 0; i < n; ++i) dst[i] = load(t, src, i);
        },
        "kernel to_float", {{src, n * dtype_bytes(t), false}, {dst, n * 4, true}});
}

}  // namespace mlp
