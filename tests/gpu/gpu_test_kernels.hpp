// Kernels of the GPU tests (gpu_test_kernels.cu), behind plain host functions so that the tests
// themselves are ordinary C++ compiled by the host compiler. All launch on `s` and return at once.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace gputest {

/// y = a x + b, element-wise; every thread first busy-waits `spin_ns` (so that a missing wait shows).
void affine(const double* x, double* y, double a, double b, std::size_t n, unsigned spin_ns, cudaStream_t s);
/// out = a in, element-wise, after busy-waiting `spin_ns`.
void scale(const double* in, double* out, double a, std::size_t n, unsigned spin_ns, cudaStream_t s);
/// *loss = sum((y - t)^2) / (2n); dy = scale (y - t) / n. One block, fixed order: deterministic.
void mse(const double* y, const double* t, double* dy, double* loss, std::size_t n, double scale, cudaStream_t s);
/// *acc += sum(u v) (v null: sum(u)). One block, fixed order.
void dot_add(const double* u, const double* v, double* acc, std::size_t n, cudaStream_t s);
/// Busy-waits `ns` nanoseconds on the device.
void spin(unsigned ns, cudaStream_t s);
/// p[i] = base + i.
void iota(double* p, std::size_t n, double base, cudaStream_t s);

}  // namespace gputest
