// tests/emulated/device_moe_stage.hpp: DeviceMoeStage, a small MoE-like stage with phases (runtime/phases.hpp)
// whose kernels run on the CUDA emulator (tests/emulator): per layer a dense layer, a dispatch all-to-all with
// per-peer counts, a per-expert layer, a combine all-to-all and a residual; the backward mirrors it. Its
// exchanges go through NcclExpertComm. Used by tests/emulated/test_nccl_moe.cpp and the emulated GPU-path
// MoE benchmark (bench/gpu/bench_moe_emulated.cpp), which also gives every compute kernel a duration and
// times each compute phase with CUDA events (DeviceMoeStage::Options).
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_emulator.hpp"
#include "dualpipe/nccl.hpp"

namespace moetest {

using namespace dualpipe;
using namespace std::chrono_literals;

constexpr int kTokens = 5;  // tokens (one double each) per chunk per ep rank: the peers' counts differ

// The routing: token k of ep rank q at layer l of stage s goes to expert rank (k + q + l + s) % E.
inline int destination(int k, int q, int l, int s, int E) { return (k + q + l + s) % E; }
inline double dense_weight(int s, int e, int l) { return 1.0 + 0.1 * (e + 1) + 0.01 * l + 0.05 * s; }
inline double expert_weight(int s, int e, int l) { return 0.9 + 0.07 * (e + 1) - 0.02 * l + 0.03 * s; }
inline double input_value(int e, int c, int k) { return std::sin(1.0 + e + 0.7 * c + 0.3 * k); }
inline double label_value(int e, int c, int k) { return std::cos(2.0 + 0.5 * e + 0.9 * c + 0.2 * k); }

using cuda_emulator::Access;

// An emulated kernel on `s`: `work` runs in stream order; `accesses` are race-checked.
template <class F>
void kernel(cudaStream_t s, const char* name, std::vector<Access> accesses, F work) {
  DUALPIPE_CUDA_CHECK(cuda_emulator::launch(s, std::move(work), name, std::move(accesses)));
}
inline Access rd(const double* p, std::size_t n) { return Access{p, n * sizeof(double), false}; }
inline Access wr(double* p, std::size_t n) { return Access{p, n * sizeof(double), true}; }

inline std::span<std::byte> bytes_of(double* p, std::size_t n) {
  return {reinterpret_cast<std::byte*>(p), n * sizeof(double)};
}

inline std::mutex& device_compute(int device) {
  static std::mutex m[64];
  return m[static_cast<unsigned>(device) % 64];
}

/// What the benchmark adds: a duration for every compute kernel, CUDA-event times of every compute phase.
struct DeviceMoeOptions {
  long compute_us = 0;  ///< Each compute phase takes this long more (a sleep in stream order; one at a time
                        ///< per device, as kernels that fill a GPU).
  bool timing = false;  ///< Record every compute phase's start and end (take_times).
};

// One stage of ep rank `ep`: `layers` MoE-like layers on the device, its state per chunk in device memory.
class DeviceMoeStage {
public:
  /// A compute phase's GPU time, in ms after the epoch given to take_times.
  struct PhaseTime {
    int chunk = 0;
    bool backward = false;
    const char* name = "";
    cudaStream_t stream = nullptr;
    double start = 0, end = 0;
    double busy = 0;  ///< Of which it held the GPU (the compute time, without waiting for the other stream's).
  };

  DeviceMoeStage(int stage, int ep, int E, int layers, int chunks, NcclExpertComm& comm, DeviceMoeOptions options = {})
      : _stage(stage), _ep(ep), _E(E), _layers(layers), _chunks(chunks), _comm(&comm), _options(options) {
    const auto ue = static_cast<std::size_t>(E);
    for (int l = 0; l < layers; ++l) {
      Route r;
      r.to.assign(ue, 0);
      r.from.assign(ue, 0);
      for (int d = 0; d < E; ++d)
        for (int k = 0; k < kTokens; ++k)
          if (destination(k, ep, l, stage, E) == d) {
            r.perm.push_back(k);
            r.to[static_cast<std::size_t>(d)] += sizeof(double);
          }
      for (int q = 0; q < E; ++q)
        for (int k = 0; k < kTokens; ++k)
          if (destination(k, q, l, stage, E) == ep) r.from[static_cast<std::size_t>(q)] += sizeof(double);
      for (std::size_t b : r.from) r.received += b / sizeof(double);
      _routes.push_back(std::move(r));
      _phases.push_back({PhaseKind::compute, l, "dense"});
      _phases.push_back({PhaseKind::exchange, l, "dispatch"});
      _phases.push_back({PhaseKind::compute, l, "expert"});
      _phases.push_back({PhaseKind::exchange, l, "combine"});
      _phases.push_back({PhaseKind::compute, l, "residual"});
      _back.push_back({PhaseKind::compute, l, "pack grad"});
      _back.push_back({PhaseKind::exchange, l, "combine back"});
      _back.push_back({PhaseKind::compute, l, "expert back"});
      _back.push_back({PhaseKind::exchange, l, "dispatch back"});
      _back.push_back({PhaseKind::compute, l, "residual back"});
    }
    const std::size_t total = per_chunk() * static_cast<std::size_t>(chunks) + 2 * static_cast<std::size_t>(layers);
    DUALPIPE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&_mem), total * sizeof(double)));
    DUALPIPE_CUDA_CHECK(cudaMemset(_mem, 0, total * sizeof(double)));
    _grads = _mem + per_chunk() * static_cast<std::size_t>(chunks);
  }
  DeviceMoeStage(const DeviceMoeStage&) = delete;
  DeviceMoeStage& operator=(const DeviceMoeStage&) = delete;
  ~DeviceMoeStage() { ignore_cuda_error(cudaFree(_mem)); }

  [[nodiscard]] std::size_t input_bytes() const { return kTokens * sizeof(double); }
  [[nodiscard]] std::size_t output_bytes() const { return kTokens * sizeof(double); }
  [[nodiscard]] std::size_t label_bytes() const { return kTokens * sizeof(double); }
  NcclExpertComm& expert_comm() { return *_comm; }
  [[nodiscard]] int stage() const noexcept { return _stage; }

  std::span<const Phase> phases(const StageContext&, Pass pass) const {
    return pass == Pass::forward ? std::span<const Phase>(_phases) : std::span<const Phase>(_back);
  }

  void compute_phase(const StageContext& ctx, Pass pass, int i, PhaseIo io) {
    const cudaStream_t s = cuda_stream(ctx);
    Timed* t = nullptr;
    if (_options.timing) {
      _timed.push_back(Timed{ctx.chunk, pass == Pass::backward,
                             (pass == Pass::forward ? _phases : _back)[static_cast<std::size_t>(i)].name, s,
                             std::make_unique<Event>(Event::timing), std::make_unique<Event>(Event::timing),
                             std::make_shared<double>(0.0)});
      t = &_timed.back();
      t->start->record(StreamRef(s));
    }
    if (_options.compute_us > 0) {
      // One compute kernel at a time per device (each fills the GPU); NCCL's run beside them.
      const long us = _options.compute_us;
      std::mutex* gpu = &device_compute(cuda_emulator::stream_device(s));
      std::shared_ptr<double> busy = t ? t->busy_ms : nullptr;
      kernel(s, "compute time", {}, [us, gpu, busy] {
        const std::lock_guard lk(*gpu);
        const auto t0 = std::chrono::steady_clock::now();
        std::this_thread::sleep_for(std::chrono::microseconds(us));
        if (busy) *busy = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      });
    }
    run_compute(ctx, pass, i, io, s);
    if (t) t->end->record(StreamRef(s));
  }

  /// The compute phases' times since the last call (ms after `epoch`, a timing event recorded before them
  /// on this device); the device must be done with them.
  std::vector<PhaseTime> take_times(const Event& epoch) {
    std::vector<PhaseTime> out;
    for (const Timed& t : _timed)
      out.push_back(PhaseTime{t.chunk, t.backward, t.name, t.stream, t.start->elapsed_ms_since(epoch),
                              t.end->elapsed_ms_since(epoch), *t.busy_ms});
    _timed.clear();
    return out;
  }

private:
  void run_compute(const StageContext& ctx, Pass pass, int i, PhaseIo io, cudaStream_t s) {
    const int l = pass == Pass::forward ? i / 5 : _layers - 1 - i / 5;
    const int j = i % 5;
    Layer m = layer(ctx.chunk, l);
    const Route& r = _routes[static_cast<std::size_t>(l)];
    const std::size_t n = kTokens, rn = r.received;
    const auto perm = r.perm;
    if (pass == Pass::forward && j == 0) {
      if (l == 0) DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(m.x, io.in.data(), n * 8, cudaMemcpyDeviceToDevice, s));
      const double a = dense_weight(_stage, _ep, l);
      kernel(s, "dense", {rd(m.x, n), wr(m.h, n), wr(m.send, n)}, [=] {
        for (std::size_t k = 0; k < n; ++k) m.h[k] = a * m.x[k];
        for (std::size_t p = 0; p < n; ++p) m.send[p] = m.h[perm[p]];
      });
    } else if (pass == Pass::forward && j == 2) {
      const double u = expert_weight(_stage, _ep, l);
      kernel(s, "expert", {rd(m.recv, rn), wr(m.y, rn)}, [=] {
        for (std::size_t p = 0; p < rn; ++p) m.y[p] = u * m.recv[p];
      });
    } else if (pass == Pass::forward) {
      double* z = l + 1 < _layers ? layer(ctx.chunk, l + 1).x : reinterpret_cast<double*>(io.out.data());
      kernel(s, "residual", {rd(m.comb, n), rd(m.h, n), wr(z, n)}, [=] {
        for (std::size_t p = 0; p < n; ++p) z[perm[p]] = m.comb[p] + m.h[perm[p]];
      });
    } else if (j == 0) {
      if (l == _layers - 1) {
        const double* g = ctx.is_last_stage ? dy_last(ctx.chunk) : reinterpret_cast<const double*>(io.in.data());
        DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(m.gz, g, n * 8, cudaMemcpyDeviceToDevice, s));
      }
      kernel(s, "pack grad", {rd(m.gz, n), wr(m.gsend, n)}, [=] {
        for (std::size_t p = 0; p < n; ++p) m.gsend[p] = m.gz[perm[p]];
      });
    } else if (j == 2) {
      const double u = expert_weight(_stage, _ep, l);
      kernel(s, "expert back", {rd(m.grecv, rn), wr(m.gback_send, rn)}, [=] {
        for (std::size_t p = 0; p < rn; ++p) m.gback_send[p] = u * m.grecv[p];
      });
    } else {
      double* gx =
          l > 0 ? layer(ctx.chunk, l - 1).gz : (io.out.empty() ? nullptr : reinterpret_cast<double*>(io.out.data()));
      const double a = dense_weight(_stage, _ep, l);
      std::vector<Access> acc{rd(m.gback, n), rd(m.gz, n), wr(m.gh, n)};
      if (gx) acc.push_back(wr(gx, n));
      kernel(s, "residual back", std::move(acc), [=] {
        for (std::size_t p = 0; p < n; ++p) m.gh[perm[p]] = m.gback[p] + m.gz[perm[p]];
        if (gx)
          for (std::size_t k = 0; k < n; ++k) gx[k] = a * m.gh[k];
      });
    }
  }

public:
  AllToAllBuffers exchange_phase(const StageContext& ctx, Pass pass, int i, PhaseIo) {
    const int l = pass == Pass::forward ? i / 5 : _layers - 1 - i / 5;
    const int j = i % 5;
    const Layer m = layer(ctx.chunk, l);
    const Route& r = _routes[static_cast<std::size_t>(l)];
    const std::size_t n = kTokens, rn = r.received;
    if (ctx.chunk == fail_chunk && pass == Pass::forward) throw std::runtime_error("injected exchange failure");
    // Out: the tokens to their experts (counts `to`), back: the experts' results (counts `from`).
    if (pass == Pass::forward && j == 1) return {bytes_of(m.send, n), r.to, bytes_of(m.recv, rn), r.from};
    if (pass == Pass::forward) return {bytes_of(m.y, rn), r.from, bytes_of(m.comb, n), r.to};
    if (j == 1) return {bytes_of(m.gsend, n), r.to, bytes_of(m.grecv, rn), r.from};
    return {bytes_of(m.gback_send, rn), r.from, bytes_of(m.gback, n), r.to};
  }

  void backward_weight(const StageContext& ctx) {
    const cudaStream_t s = cuda_stream(ctx);
    for (int l = 0; l < _layers; ++l) {
      const Layer m = layer(ctx.chunk, l);
      const std::size_t n = kTokens, rn = _routes[static_cast<std::size_t>(l)].received;
      double* g = _grads + 2 * l;
      kernel(s, "weight", {rd(m.x, n), rd(m.gh, n), rd(m.recv, rn), rd(m.grecv, rn), wr(g, 2)}, [=] {
        for (std::size_t k = 0; k < n; ++k) g[0] += m.x[k] * m.gh[k];
        for (std::size_t p = 0; p < rn; ++p) g[1] += m.recv[p] * m.grecv[p];
      });
    }
  }

  void loss_to(const StageContext& ctx, ConstBytes out, ConstBytes labels, double* loss) {
    const cudaStream_t s = cuda_stream(ctx);
    const auto* z = reinterpret_cast<const double*>(out.data());
    const auto* t = reinterpret_cast<const double*>(labels.data());
    double* dy = dy_last(ctx.chunk);
    double* dl = dy + kTokens;
    const double scale = ctx.loss_scale;
    kernel(s, "loss", {rd(z, kTokens), rd(t, kTokens), wr(dy, kTokens + 1)}, [=] {
      double acc = 0;
      for (int k = 0; k < kTokens; ++k) {
        const double d = z[k] - t[k];
        acc += 0.5 * d * d;
        dy[k] = d * scale;
      }
      *dl = acc;
    });
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(loss, dl, sizeof(double), cudaMemcpyDeviceToHost, s));
  }
  double loss(const StageContext& ctx, ConstBytes out, ConstBytes labels) {
    double h = 0;
    loss_to(ctx, out, labels, &h);
    DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(cuda_stream(ctx)));
    return h;
  }
  // The Stage members, never called by the executor for a stage with phases.
  void forward(const StageContext& ctx, ConstBytes in, MutableBytes out) {
    run_phases(*this, ctx, Pass::forward, {in, out}, 60s);
  }
  void backward_input(const StageContext& ctx, ConstBytes g, MutableBytes ig) {
    run_phases(*this, ctx, Pass::backward, {g, ig}, 60s);
  }

  /// (d/d dense, d/d expert) of every layer (waits for the device).
  [[nodiscard]] std::vector<double> grads() const {
    std::vector<double> g(2 * static_cast<std::size_t>(_layers));
    DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
    DUALPIPE_CUDA_CHECK(cudaMemcpy(g.data(), _grads, g.size() * sizeof(double), cudaMemcpyDeviceToHost));
    return g;
  }
  void zero_grad() {
    DUALPIPE_CUDA_CHECK(cudaDeviceSynchronize());
    DUALPIPE_CUDA_CHECK(cudaMemset(_grads, 0, 2 * static_cast<std::size_t>(_layers) * sizeof(double)));
  }

  int fail_chunk = -1;  ///< This chunk's forward exchange throws.

private:
  struct Route {
    std::vector<int> perm;          // send position -> token
    std::vector<std::size_t> to;    // bytes to each expert rank
    std::vector<std::size_t> from;  // bytes from each rank
    std::size_t received = 0;       // tokens this expert gets
  };
  // One layer's device buffers of one chunk.
  struct Layer {
    double *x, *h, *send, *recv, *y, *comb, *gz, *gsend, *grecv, *gback_send, *gback, *gh;
  };
  [[nodiscard]] std::size_t wide() const { return static_cast<std::size_t>(kTokens * _E); }
  [[nodiscard]] std::size_t per_layer() const { return 8 * kTokens + 4 * wide(); }
  [[nodiscard]] std::size_t per_chunk() const {
    return per_layer() * static_cast<std::size_t>(_layers) + kTokens + 1;  // + dy_last and the loss
  }
  [[nodiscard]] Layer layer(int chunk, int l) const {
    if (chunk < 0 || chunk >= _chunks) throw std::runtime_error("DeviceMoeStage: chunk out of range");
    double* p = _mem + per_chunk() * static_cast<std::size_t>(chunk) + per_layer() * static_cast<std::size_t>(l);
    Layer m{};
    const std::size_t n = kTokens, w = wide();
    for (double** f : {&m.x, &m.h, &m.send, &m.comb, &m.gz, &m.gsend, &m.gback}) {
      *f = p;
      p += n;
    }
    for (double** f : {&m.recv, &m.y, &m.grecv, &m.gback_send}) {
      *f = p;
      p += w;
    }
    m.gh = p;
    return m;
  }
  [[nodiscard]] double* dy_last(int chunk) const {
    return _mem + per_chunk() * static_cast<std::size_t>(chunk) + per_layer() * static_cast<std::size_t>(_layers);
  }

  struct Timed {
    int chunk;
    bool backward;
    const char* name;
    cudaStream_t stream;
    std::unique_ptr<Event> start, end;
    std::shared_ptr<double> busy_ms;  // written by the compute-time kernel, read after the device is done
  };

  int _stage, _ep, _E, _layers, _chunks;
  NcclExpertComm* _comm;
  DeviceMoeOptions _options;
  std::vector<Timed> _timed;
  std::vector<Route> _routes;
  std::vector<Phase> _phases, _back;
  double* _mem = nullptr;
  double* _grads = nullptr;
};

static_assert(check_phased_stage<DeviceMoeStage>());
static_assert(StageWithAsyncLoss<DeviceMoeStage>);

}  // namespace moetest
