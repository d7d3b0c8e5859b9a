// Chunks of their own sizes on the GPU (runtime/tensors.hpp, docs/activations.md): a pipeline over the
// CUDA-local and (where built) NCCL communicators with CudaDevice runs steps whose chunks have different
// sizes, and gives the in-process host run's losses and gradients. The size exchange goes through each
// communicator's all_gather (host bytes; NCCL stages them through device memory).
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "dualpipe/dualpipe.hpp"
#ifdef DUALPIPE_TEST_NCCL
#include "dualpipe/nccl.hpp"
#endif
#include "gpu_affine_stage.hpp"
#ifdef DUALPIPE_TEST_NCCL
#include "nccl_ranks.hpp"
#endif
#include "gpu_test_kernels.hpp"

using namespace dualpipe;
using namespace gputest;

namespace {

constexpr std::size_t max_n = 512;  // the most doubles a chunk may have

// Chunk b of step s: n(b, s) doubles, in [max_n / 4, max_n].
std::size_t chunk_n(int b, int s) {
  return max_n / 4 + static_cast<std::size_t>((b * 37 + s * 11) % static_cast<int>(3 * max_n / 4 + 1));
}

/// y = a x + b on chunks of up to max_n doubles (one tensor, rows of one double), on the GPU: the chunk's
/// size is its buffer's.
class GpuRowsStage {
public:
  GpuRowsStage(int stage, int chunks) : _stage(stage), _a(param_a(stage)), _b(param_b(stage)) {
    const std::size_t c = static_cast<std::size_t>(chunks < 1 ? 1 : chunks);
    _n.assign(c, 0);
    DUALPIPE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&_mem), (3 * c * max_n + c + 2) * sizeof(double)));
    DUALPIPE_CUDA_CHECK(cudaMemset(_mem, 0, (3 * c * max_n + c + 2) * sizeof(double)));
    _x = _mem;
    _dy = _x + c * max_n;
    _dy_last = _dy + c * max_n;
    _loss = _dy_last + c * max_n;
    _grad = _loss + c;
  }
  GpuRowsStage(const GpuRowsStage&) = delete;
  GpuRowsStage& operator=(const GpuRowsStage&) = delete;
  ~GpuRowsStage() { ignore_cuda_error(cudaFree(_mem)); }

  [[nodiscard]] std::span<const TensorSpec> input_tensors() const noexcept { return _specs; }
  [[nodiscard]] std::span<const TensorSpec> output_tensors() const noexcept { return _specs; }

  void forward(const StageContext& ctx, ConstBytes in, MutableBytes out) {
    const std::size_t n = in.size() / sizeof(double);
    if (n == 0 || n > max_n || out.size() != in.size()) throw std::runtime_error("GpuRowsStage: bad forward sizes");
    _n.at(static_cast<std::size_t>(ctx.chunk)) = n;
    const cudaStream_t s = cuda_stream(ctx);
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(x(ctx), in.data(), in.size(), cudaMemcpyDeviceToDevice, s));
    affine(x(ctx), reinterpret_cast<double*>(out.data()), _a, _b, n, 0, s);
    DUALPIPE_CUDA_CHECK_LAST();
  }
  double loss(const StageContext& ctx, ConstBytes out, ConstBytes labels) {
    double h = 0;
    loss_to(ctx, out, labels, &h);
    DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(cuda_stream(ctx)));
    return h;
  }
  void loss_to(const StageContext& ctx, ConstBytes out, ConstBytes labels, double* l) {
    if (labels.size() != out.size()) throw std::runtime_error("GpuRowsStage: labels do not match the output");
    const cudaStream_t s = cuda_stream(ctx);
    mse(reinterpret_cast<const double*>(out.data()), reinterpret_cast<const double*>(labels.data()), dy_last(ctx),
        _loss + ctx.chunk, out.size() / sizeof(double), ctx.loss_scale, s);
    DUALPIPE_CUDA_CHECK_LAST();
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(l, _loss + ctx.chunk, sizeof(double), cudaMemcpyDeviceToHost, s));
  }
  void backward_input(const StageContext& ctx, ConstBytes grad, MutableBytes in_grad) {
    const std::size_t n = _n.at(static_cast<std::size_t>(ctx.chunk));
    const cudaStream_t s = cuda_stream(ctx);
    if (!ctx.is_last_stage && grad.size() != n * sizeof(double))
      throw std::runtime_error("GpuRowsStage: bad output gradient size");
    const double* g = ctx.is_last_stage ? dy_last(ctx) : reinterpret_cast<const double*>(grad.data());
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(dy(ctx), g, n * sizeof(double), cudaMemcpyDeviceToDevice, s));
    if (!in_grad.empty()) {
      if (in_grad.size() != n * sizeof(double)) throw std::runtime_error("GpuRowsStage: bad input gradient size");
      scale(g, reinterpret_cast<double*>(in_grad.data()), _a, n, 0, s);
      DUALPIPE_CUDA_CHECK_LAST();
    }
  }
  void backward_weight(const StageContext& ctx) {
    const std::size_t n = _n.at(static_cast<std::size_t>(ctx.chunk));
    const cudaStream_t s = cuda_stream(ctx);
    dot_add(dy(ctx), x(ctx), _grad, n, s);
    dot_add(dy(ctx), nullptr, _grad + 1, n, s);
    DUALPIPE_CUDA_CHECK_LAST();
  }
  [[nodiscard]] std::vector<double> grads() const {
    std::vector<double> g(2);
    DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
    DUALPIPE_CUDA_CHECK(cudaMemcpy(g.data(), _grad, 2 * sizeof(double), cudaMemcpyDeviceToHost));
    return g;
  }
  [[nodiscard]] int stage() const noexcept { return _stage; }

private:
  double* x(const StageContext& c) const { return _x + static_cast<std::size_t>(c.chunk) * max_n; }
  double* dy(const StageContext& c) const { return _dy + static_cast<std::size_t>(c.chunk) * max_n; }
  double* dy_last(const StageContext& c) const { return _dy_last + static_cast<std::size_t>(c.chunk) * max_n; }

  std::array<TensorSpec, 1> _specs{{{sizeof(double), max_n, true}}};
  int _stage;
  double _a, _b;
  std::vector<std::size_t> _n;  // chunk -> its doubles (this step)
  double* _mem = nullptr;
  double *_x = nullptr, *_dy = nullptr, *_dy_last = nullptr, *_loss = nullptr, *_grad = nullptr;
};

/// The same on the host.
class CpuRowsStage {
public:
  CpuRowsStage(int stage, int chunks)
      : _stage(stage), _a(param_a(stage)), _b(param_b(stage)), _n(static_cast<std::size_t>(chunks < 1 ? 1 : chunks), 0),
        _x(_n.size() * max_n), _dy(_x.size()), _dy_last(_x.size()) {}
  [[nodiscard]] std::span<const TensorSpec> input_tensors() const noexcept { return _specs; }
  [[nodiscard]] std::span<const TensorSpec> output_tensors() const noexcept { return _specs; }
  void forward(const StageContext& ctx, ConstBytes in, MutableBytes out) {
    const std::size_t n = in.size() / sizeof(double);
    _n.at(static_cast<std::size_t>(ctx.chunk)) = n;
    const auto* xi = reinterpret_cast<const double*>(in.data());
    auto* y = reinterpret_cast<double*>(out.data());
    for (std::size_t i = 0; i < n; ++i) {
      x(ctx)[i] = xi[i];
      y[i] = _a * xi[i] + _b;
    }
  }
  double loss(const StageContext& ctx, ConstBytes out, ConstBytes labels) {
    const std::size_t n = out.size() / sizeof(double);
    const auto* y = reinterpret_cast<const double*>(out.data());
    const auto* t = reinterpret_cast<const double*>(labels.data());
    double acc = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const double d = y[i] - t[i];
      acc += d * d;
      dy_last(ctx)[i] = ctx.loss_scale * d / static_cast<double>(n);
    }
    return acc / (2.0 * static_cast<double>(n));
  }
  void backward_input(const StageContext& ctx, ConstBytes grad, MutableBytes in_grad) {
    const std::size_t n = _n.at(static_cast<std::size_t>(ctx.chunk));
    const double* g = ctx.is_last_stage ? dy_last(ctx) : reinterpret_cast<const double*>(grad.data());
    for (std::size_t i = 0; i < n; ++i) dy(ctx)[i] = g[i];
    if (!in_grad.empty())
      for (std::size_t i = 0; i < n; ++i) reinterpret_cast<double*>(in_grad.data())[i] = _a * g[i];
  }
  void backward_weight(const StageContext& ctx) {
    for (std::size_t i = 0; i < _n.at(static_cast<std::size_t>(ctx.chunk)); ++i) {
      _grad[0] += dy(ctx)[i] * x(ctx)[i];
      _grad[1] += dy(ctx)[i];
    }
  }
  [[nodiscard]] std::vector<double> grads() const { return {_grad[0], _grad[1]}; }
  [[nodiscard]] int stage() const noexcept { return _stage; }

private:
  double* x(const StageContext& c) { return _x.data() + static_cast<std::size_t>(c.chunk) * max_n; }
  double* dy(const StageContext& c) { return _dy.data() + static_cast<std::size_t>(c.chunk) * max_n; }
  double* dy_last(const StageContext& c) { return _dy_last.data() + static_cast<std::size_t>(c.chunk) * max_n; }

  std::array<TensorSpec, 1> _specs{{{sizeof(double), max_n, true}}};
  int _stage;
  double _a, _b;
  std::vector<std::size_t> _n;
  std::vector<double> _x, _dy, _dy_last;
  double _grad[2] = {0, 0};
};

/// One step's batch: chunk b has chunk_n(b, s) inputs and labels, packed chunk after chunk.
struct RowsBatch {
  std::vector<double> inputs, labels;
  std::vector<std::size_t> table;  // chunk -> rows (doubles)
  RowsBatch(int chunks, int s) {
    for (int b = 0; b < chunks; ++b) {
      const std::size_t n = chunk_n(b, s);
      table.push_back(n);
      for (std::size_t i = 0; i < n; ++i) {
        inputs.push_back(std::sin(0.01 * static_cast<double>(inputs.size()) + s) * 0.5);
        labels.push_back(std::cos(0.007 * static_cast<double>(labels.size()) - s) * 0.25);
      }
    }
  }
};

struct RowsResult {
  std::vector<std::vector<double>> losses;   // [step][batch chunk]
  std::map<int, std::vector<double>> grads;  // stage -> summed over copies, over the steps
  std::vector<std::string> errors;
  void add(int stage, const std::vector<double>& g) {
    auto& mine = grads[stage];
    if (mine.empty()) mine.assign(2, 0.0);
    mine[0] += g[0];
    mine[1] += g[1];
  }
  void record(int s, const StepResult& r) {
    for (std::size_t c = 0; c < r.losses.size(); ++c)
      if (!std::isnan(r.losses[c])) losses[static_cast<std::size_t>(s)][c] = r.losses[c];
  }
};

constexpr int steps = 2;

template <class Schedule>
RowsResult run_cpu_rows(int P, int C) {
  constexpr int M = Schedule::modules_per_rank;
  InProcessWorld world(P);
  RowsResult res;
  res.losses.assign(steps, std::vector<double>(static_cast<std::size_t>(C), NAN));
  res.errors.resize(static_cast<std::size_t>(P));
  std::mutex mu;
  run_ranks(P, [&](int r) {
    std::vector<std::unique_ptr<CpuRowsStage>> stages;
    std::array<CpuRowsStage*, M> ptrs{};
    for (int m = 0; m < M; ++m) {
      const ModulePlacement pl = Schedule::placement(P, C, r, m);
      stages.push_back(std::make_unique<CpuRowsStage>(pl.stage, pl.num_chunks));
      ptrs[static_cast<std::size_t>(m)] = stages.back().get();
    }
    PipelineOptions po;
    po.scale_loss_by_chunks = true;
    Pipeline<Schedule, InProcessCommunicator, CpuRowsStage> pipe(world.communicator(r), ptrs, po);
    for (int s = 0; s < steps; ++s) {
      const RowsBatch b(C, s);
      StepOptions o;
      o.sizes = ChunkSizes{b.table, 1};
      const StepResult sr = pipe.step(C, std::as_bytes(std::span(b.inputs)), std::as_bytes(std::span(b.labels)), o);
      std::lock_guard lk(mu);
      res.record(s, sr);
    }
    std::lock_guard lk(mu);
    for (auto& st : stages) res.add(st->stage(), st->grads());
  });
  return res;
}

template <class Schedule, class Ranks>
RowsResult run_gpu_rows(int P, int C) {
  constexpr int M = Schedule::modules_per_rank;
  Ranks ranks(P);
  RowsResult res;
  res.losses.assign(steps, std::vector<double>(static_cast<std::size_t>(C), NAN));
  res.errors.resize(static_cast<std::size_t>(P));
  std::mutex mu;
  run_ranks(P, [&](int r) {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(Ranks::device(r)));
    std::vector<RowsBatch> batches;
    std::vector<DeviceBuffer<SyncAllocator>> d_in, d_lab;
    for (int s = 0; s < steps; ++s) {
      batches.emplace_back(C, s);
      const RowsBatch& b = batches.back();
      d_in.emplace_back(b.inputs.size() * sizeof(double), StreamRef());
      d_lab.emplace_back(b.labels.size() * sizeof(double), StreamRef());
      DUALPIPE_CUDA_CHECK(cudaMemcpy(d_in.back().data(), b.inputs.data(), d_in.back().size(), cudaMemcpyHostToDevice));
      DUALPIPE_CUDA_CHECK(
          cudaMemcpy(d_lab.back().data(), b.labels.data(), d_lab.back().size(), cudaMemcpyHostToDevice));
    }
    std::vector<std::unique_ptr<GpuRowsStage>> stages;
    std::array<GpuRowsStage*, M> ptrs{};
    for (int m = 0; m < M; ++m) {
      const ModulePlacement pl = Schedule::placement(P, C, r, m);
      stages.push_back(std::make_unique<GpuRowsStage>(pl.stage, pl.num_chunks));
      ptrs[static_cast<std::size_t>(m)] = stages.back().get();
    }
    PipelineOptions po;
    po.timeout = std::chrono::milliseconds(30'000);
    po.scale_loss_by_chunks = true;
    CudaDeviceOptions dopt;
    dopt.device = Ranks::device(r);
    ranks.run(r, [&](typename Ranks::Comm& comm) {
      Pipeline<Schedule, typename Ranks::Comm, GpuRowsStage, CudaDevice> pipe(comm, ptrs, po, CudaDevice(dopt));
      for (int s = 0; s < steps; ++s) {
        const auto si = static_cast<std::size_t>(s);
        const ConstBytes in(static_cast<const std::byte*>(d_in[si].data()), d_in[si].size());
        const ConstBytes lab(static_cast<const std::byte*>(d_lab[si].data()), d_lab[si].size());
        StepOptions o;
        o.sizes = ChunkSizes{batches[si].table, 1};
        try {
          const StepResult sr = pipe.step(C, in, lab, o);
          std::lock_guard lk(mu);
          res.record(s, sr);
        } catch (const std::exception& e) {
          res.errors[static_cast<std::size_t>(r)] = e.what();
          return;
        }
      }
      std::lock_guard lk(mu);
      for (auto& st : stages) res.add(st->stage(), st->grads());
    });
  });
  return res;
}

double rows_rel_err(const std::vector<double>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return INFINITY;
  double d = 0, s = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    d = std::max(d, std::abs(got[i] - want[i]));
    s = std::max(s, std::abs(want[i]));
  }
  return d / std::max(s, 1e-300);
}

void check_same_rows(const RowsResult& gpu, const RowsResult& cpu) {
  for (const std::string& e : gpu.errors) CHECK_MESSAGE(e.empty(), e);
  for (int s = 0; s < steps; ++s)
    CHECK(rows_rel_err(gpu.losses[static_cast<std::size_t>(s)], cpu.losses[static_cast<std::size_t>(s)]) <= 1e-12);
  REQUIRE(gpu.grads.size() == cpu.grads.size());
  for (const auto& [stage, g] : cpu.grads) {
    CAPTURE(stage);
    CHECK(rows_rel_err(gpu.grads.at(stage), g) <= 1e-12);
  }
}

/// The CUDA-local ranks: all on device 0.
struct LocalRowsRanks {
  using Comm = CudaLocalCommunicator;
  explicit LocalRowsRanks(int P) : world(P) {}
  [[nodiscard]] static int device(int) { return 0; }
  template <class F>
  void run(int rank, F&& f) {
    f(world.communicator(rank));
  }
  CudaLocalWorld world;
};

}  // namespace

TEST_CASE("Gpu.Sizes.CudaLocalEqualsInProcess" * doctest::timeout(600)) {
  check_same_rows(run_gpu_rows<DualPipe, LocalRowsRanks>(2, 4), run_cpu_rows<DualPipe>(2, 4));
  check_same_rows(run_gpu_rows<OneFOneB, LocalRowsRanks>(4, 8), run_cpu_rows<OneFOneB>(4, 8));
  check_same_rows(run_gpu_rows<DualPipeV, LocalRowsRanks>(2, 5), run_cpu_rows<DualPipeV>(2, 5));
}

#ifdef DUALPIPE_TEST_NCCL
TEST_CASE("Gpu.Sizes.NcclEqualsInProcess" * doctest::timeout(600)) {
  // PP=2 (the previous and the next rank are one peer) and PP=4; NCCL needs a GPU per rank.
  for (int P : {2, 4}) {
    CAPTURE(P);
    if (cuda_device_count() < P) {
      MESSAGE("skipped: " << P << " NCCL ranks need " << P << " GPUs, this machine has " << cuda_device_count());
      continue;
    }
    check_same_rows(run_gpu_rows<DualPipe, NcclRanks>(P, 2 * P), run_cpu_rows<DualPipe>(P, 2 * P));
    check_same_rows(run_gpu_rows<ZB1P, NcclRanks>(P, 2 * P + 1), run_cpu_rows<ZB1P>(P, 2 * P + 1));
  }
}
#endif
