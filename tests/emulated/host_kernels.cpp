// The GPU tests' kernels (tests/gpu/gpu_test_kernels.hpp) for the CUDA emulator: the same arithmetic, in
// the same order, run in stream order on the stream's worker thread. Each checks first that its pointers
// are device memory of the stream's device (as a GPU would fault), and `spin_ns` sleeps, so that a
// missing wait between streams lets a reader see stale data.
#include <chrono>
#include <cstddef>
#include <thread>
#include <vector>

#include "cuda_emulator.hpp"
#include "gpu_test_kernels.hpp"

namespace gputest {
namespace {

void nap(unsigned ns) {
  if (ns > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
}

using cuda_emulator::Access;

void issue(cudaStream_t s, std::function<void()> work, const char* name, std::vector<Access> accesses = {}) {
  if (cuda_emulator::launch(s, std::move(work), name, std::move(accesses)) != cudaSuccess) {
    // As a failed kernel launch: the error is left for cudaGetLastError (DUALPIPE_CUDA_CHECK_LAST).
  }
}

// The GPU kernels reduce in one block of 256 threads: thread t adds elements t, t + 256, ..., then a
// fixed tree. The same order here gives the same bits.
constexpr std::size_t threads = 256;
double block_sum(const double* part) {
  double p[threads];
  for (std::size_t t = 0; t < threads; ++t) p[t] = part[t];
  for (std::size_t w = threads / 2; w > 0; w /= 2)
    for (std::size_t t = 0; t < w; ++t) p[t] += p[t + w];
  return p[0];
}

}  // namespace

void affine(const double* x, double* y, double a, double b, std::size_t n, unsigned spin_ns, cudaStream_t s) {
  issue(s,
        [=] {
          nap(spin_ns);
          if (!cuda_emulator::require_device_memory(x, n * 8, "affine x") ||
              !cuda_emulator::require_device_memory(y, n * 8, "affine y"))
            return;
          for (std::size_t i = 0; i < n; ++i) y[i] = a * x[i] + b;
        },
        "kernel affine", {{x, n * 8, false}, {y, n * 8, true}});
}

void scale(const double* in, double* out, double a, std::size_t n, unsigned spin_ns, cudaStream_t s) {
  issue(s,
        [=] {
          nap(spin_ns);
          if (!cuda_emulator::require_device_memory(in, n * 8, "scale in") ||
              !cuda_emulator::require_device_memory(out, n * 8, "scale out"))
            return;
          for (std::size_t i = 0; i < n; ++i) out[i] = a * in[i];
        },
        "kernel scale", {{in, n * 8, false}, {out, n * 8, true}});
}

void mse(const double* y, const double* t, double* dy, double* loss, std::size_t n, double scale, cudaStream_t s) {
  issue(s,
        [=] {
          if (!cuda_emulator::require_device_memory(y, n * 8, "mse y") ||
              !cuda_emulator::require_device_memory(t, n * 8, "mse t") ||
              !cuda_emulator::require_device_memory(dy, n * 8, "mse dy") ||
              !cuda_emulator::require_device_memory(loss, 8, "mse loss"))
            return;
          double part[threads] = {};
          for (std::size_t i = 0; i < n; ++i) {
            const double d = y[i] - t[i];
            part[i % threads] += d * d;
            dy[i] = scale * d / static_cast<double>(n);
          }
          *loss = block_sum(part) / (2.0 * static_cast<double>(n));
        },
        "kernel mse", {{y, n * 8, false}, {t, n * 8, false}, {dy, n * 8, true}, {loss, 8, true}});
}

void dot_add(const double* u, const double* v, double* acc, std::size_t n, cudaStream_t s) {
  issue(s,
        [=] {
          if (!cuda_emulator::require_device_memory(u, n * 8, "dot_add u") ||
              (v && !cuda_emulator::require_device_memory(v, n * 8, "dot_add v")) ||
              !cuda_emulator::require_device_memory(acc, 8, "dot_add acc"))
            return;
          double part[threads] = {};
          for (std::size_t i = 0; i < n; ++i) part[i % threads] += v ? u[i] * v[i] : u[i];
          *acc += block_sum(part);
        },
        "kernel dot_add", {{u, n * 8, false}, {v, v ? n * 8 : 0, false}, {acc, 8, true}});
}

void spin(unsigned ns, cudaStream_t s) {
  issue(
      s, [=] { nap(ns); }, "kernel spin");
}

void iota(double* p, std::size_t n, double base, cudaStream_t s) {
  issue(s,
        [=] {
          if (!cuda_emulator::require_device_memory(p, n * 8, "iota")) return;
          for (std::size_t i = 0; i < n; ++i) p[i] = base + static_cast<double>(i);
        },
        "kernel iota", {{p, n * 8, true}});
}

}  // namespace gputest
