// cuda_mlp/mlp_kernels.cu: see mlp_kernels.hpp.
#include "mlp_kernels.hpp"

#include <cuda_bf16.h>
#include <thrust/execution_policy.h>
#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/tabulate.h>
#include <thrust/transform_reduce.h>

#include <cstdint>

namespace mlp {
namespace {

template <class T>
__host__ __device__ inline float load(const T* p, std::size_t i);
template <>
__host__ __device__ inline float load<float>(const float* p, std::size_t i) {
  return p[i];
}
template <>
__host__ __device__ inline float load<__nv_bfloat16>(const __nv_bfloat16* p, std::size_t i) {
  return __bfloat162float(p[i]);
}

template <class T>
__host__ __device__ inline T from_float(float v);
template <>
__host__ __device__ inline float from_float<float>(float v) {
  return v;
}
template <>
__host__ __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

__host__ __device__ inline std::uint64_t mix(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <class T>
struct Uniform {
  std::uint64_t seed;
  float scale;
  __host__ __device__ T operator()(std::size_t i) const {
    const std::uint64_t bits = mix(seed ^ mix(static_cast<std::uint64_t>(i)));
    const float u = static_cast<float>(bits >> 40) * (1.0f / 8388608.0f) - 1.0f;  // 24 bits: [-1, 1)
    return from_float<T>(scale * u);
  }
};

struct Square {
  __host__ __device__ double operator()(float v) const { return static_cast<double>(v) * v; }
};

unsigned blocks_for(std::size_t n) {
  const std::size_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 4096 ? 4096 : b));
}

#define MLP_GRID_LOOP(i, n)                                                         \
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < (n); \
       i += std::size_t(gridDim.x) * blockDim.x)

__device__ inline float gelu(float z) { return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f)); }
__device__ inline float gelu_grad(float z) {
  return 0.5f * (1.0f + erff(z * 0.70710678118654752f)) + z * 0.39894228040143268f * expf(-0.5f * z * z);
}

template <class T>
__global__ void gelu_forward_kernel(const T* z, T* a, std::size_t n) {
  MLP_GRID_LOOP(i, n) a[i] = from_float<T>(gelu(load(z, i)));
}
template <class T>
__global__ void gelu_backward_kernel(const T* z, const T* da, T* dz, std::size_t n) {
  MLP_GRID_LOOP(i, n) dz[i] = from_float<T>(load(da, i) * gelu_grad(load(z, i)));
}

constexpr int loss_threads = 512;

template <class T>
__global__ void mse_kernel(const T* y, const T* t, T* dy, double* loss, std::size_t n, double grad_scale) {
  __shared__ double part[loss_threads];
  double acc = 0;
  for (std::size_t i = threadIdx.x; i < n; i += loss_threads) {
    const double d = static_cast<double>(load(y, i)) - static_cast<double>(load(t, i));
    acc += d * d;
    dy[i] = from_float<T>(static_cast<float>(grad_scale * 2.0 * d / static_cast<double>(n)));
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int w = loss_threads / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = part[0] / static_cast<double>(n);
}

__global__ void add_kernel(float* acc, const float* x, std::size_t n) { MLP_GRID_LOOP(i, n) acc[i] += x[i]; }

template <class T>
__global__ void sgd_kernel(T* w, const float* g, std::size_t n, float lr) {
  MLP_GRID_LOOP(i, n) w[i] = from_float<T>(load(w, i) - lr * g[i]);
}

template <class T>
__global__ void to_float_kernel(const T* src, float* dst, std::size_t n) {
  MLP_GRID_LOOP(i, n) dst[i] = load(src, i);
}

}  // namespace

void fill_uniform(DType t, void* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t s) {
  if (t == DType::f32) {
    float* q = static_cast<float*>(p);
    thrust::tabulate(thrust::cuda::par_nosync.on(s), q, q + n, Uniform<float>{seed, scale});
  } else {
    __nv_bfloat16* q = static_cast<__nv_bfloat16*>(p);
    thrust::tabulate(thrust::cuda::par_nosync.on(s), q, q + n, Uniform<__nv_bfloat16>{seed, scale});
  }
}

void gelu_forward(DType t, const void* z, void* a, std::size_t n, cudaStream_t s) {
  if (t == DType::f32)
    gelu_forward_kernel<<<blocks_for(n), 256, 0, s>>>(static_cast<const float*>(z), static_cast<float*>(a), n);
  else
    gelu_forward_kernel<<<blocks_for(n), 256, 0, s>>>(static_cast<const __nv_bfloat16*>(z),
                                                      static_cast<__nv_bfloat16*>(a), n);
}

void gelu_backward(DType t, const void* z, const void* da, void* dz, std::size_t n, cudaStream_t s) {
  if (t == DType::f32)
    gelu_backward_kernel<<<blocks_for(n), 256, 0, s>>>(static_cast<const float*>(z), static_cast<const float*>(da),
                                                       static_cast<float*>(dz), n);
  else
    gelu_backward_kernel<<<blocks_for(n), 256, 0, s>>>(static_cast<const __nv_bfloat16*>(z),
                                                       static_cast<const __nv_bfloat16*>(da),
                                                       static_cast<__nv_bfloat16*>(dz), n);
}

void mse_loss(DType t, const void* y, const void* labels, void* dy, double* loss, std::size_t n, double grad_scale,
              cudaStream_t s) {
  if (t == DType::f32)
    mse_kernel<<<1, loss_threads, 0, s>>>(static_cast<const float*>(y), static_cast<const float*>(labels),
                                          static_cast<float*>(dy), loss, n, grad_scale);
  else
    mse_kernel<<<1, loss_threads, 0, s>>>(static_cast<const __nv_bfloat16*>(y),
                                          static_cast<const __nv_bfloat16*>(labels), static_cast<__nv_bfloat16*>(dy),
                                          loss, n, grad_scale);
}

void add_f32(float* acc, const float* x, std::size_t n, cudaStream_t s) {
  add_kernel<<<blocks_for(n), 256, 0, s>>>(acc, x, n);
}

void sgd(DType t, void* w, const float* g, std::size_t n, float lr, cudaStream_t s) {
  if (t == DType::f32) sgd_kernel<<<blocks_for(n), 256, 0, s>>>(static_cast<float*>(w), g, n, lr);
  else sgd_kernel<<<blocks_for(n), 256, 0, s>>>(static_cast<__nv_bfloat16*>(w), g, n, lr);
}

double sumsq(const float* g, std::size_t n, cudaStream_t s) {
  return thrust::transform_reduce(thrust::cuda::par.on(s), g, g + n, Square{}, 0.0, thrust::plus<double>());
}

void to_float(DType t, const void* src, float* dst, std::size_t n, cudaStream_t s) {
  if (t == DType::f32) to_float_kernel<<<blocks_for(n), 256, 0, s>>>(static_cast<const float*>(src), dst, n);
  else to_float_kernel<<<blocks_for(n), 256, 0, s>>>(static_cast<const __nv_bfloat16*>(src), dst, n);
}

}  // namespace mlp
