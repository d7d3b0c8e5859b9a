// Kernels of the GPU tests; see gpu_test_kernels.hpp.
#include "gpu_test_kernels.hpp"

#include <cstdint>

namespace gputest {
namespace {

__device__ std::uint64_t global_ns() {
  std::uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ void busy_wait(unsigned ns) {
  if (ns == 0) return;
  const std::uint64_t end = global_ns() + ns;
  while (global_ns() < end) {}
}

__global__ void affine_kernel(const double* x, double* y, double a, double b, std::size_t n, unsigned spin_ns) {
  busy_wait(spin_ns);
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    y[i] = a * x[i] + b;
}

__global__ void scale_kernel(const double* in, double* out, double a, std::size_t n, unsigned spin_ns) {
  busy_wait(spin_ns);
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    out[i] = a * in[i];
}

constexpr int reduce_threads = 256;

// One block: each thread adds a strided slice in order, then a fixed tree: the same bits every run.
__device__ double block_sum(double v) {
  __shared__ double part[reduce_threads];
  part[threadIdx.x] = v;
  __syncthreads();
  for (int w = reduce_threads / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  return part[0];
}

__global__ void mse_kernel(const double* y, const double* t, double* dy, double* loss, std::size_t n, double scale) {
  double acc = 0;
  for (std::size_t i = threadIdx.x; i < n; i += reduce_threads) {
    const double d = y[i] - t[i];
    acc += d * d;
    dy[i] = scale * d / static_cast<double>(n);
  }
  const double s = block_sum(acc);
  if (threadIdx.x == 0) *loss = s / (2.0 * static_cast<double>(n));
}

__global__ void dot_add_kernel(const double* u, const double* v, double* out, std::size_t n) {
  double acc = 0;
  for (std::size_t i = threadIdx.x; i < n; i += reduce_threads) acc += v ? u[i] * v[i] : u[i];
  const double s = block_sum(acc);
  if (threadIdx.x == 0) *out += s;
}

__global__ void spin_kernel(unsigned ns) { busy_wait(ns); }

__global__ void iota_kernel(double* p, std::size_t n, double base) {
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    p[i] = base + static_cast<double>(i);
}

unsigned blocks_for(std::size_t n) {
  const std::size_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 1024 ? 1024 : b));
}

}  // namespace

void affine(const double* x, double* y, double a, double b, std::size_t n, unsigned spin_ns, cudaStream_t s) {
  affine_kernel<<<blocks_for(n), 256, 0, s>>>(x, y, a, b, n, spin_ns);
}
void scale(const double* in, double* out, double a, std::size_t n, unsigned spin_ns, cudaStream_t s) {
  scale_kernel<<<blocks_for(n), 256, 0, s>>>(in, out, a, n, spin_ns);
}
void mse(const double* y, const double* t, double* dy, double* loss, std::size_t n, double scale, cudaStream_t s) {
  mse_kernel<<<1, reduce_threads, 0, s>>>(y, t, dy, loss, n, scale);
}
void dot_add(const double* u, const double* v, double* acc, std::size_t n, cudaStream_t s) {
  dot_add_kernel<<<1, reduce_threads, 0, s>>>(u, v, acc, n);
}
void spin(unsigned ns, cudaStream_t s) { spin_kernel<<<1, 1, 0, s>>>(ns); }
void iota(double* p, std::size_t n, double base, cudaStream_t s) {
  iota_kernel<<<blocks_for(n), 256, 0, s>>>(p, n, base);
}

}  // namespace gputest
