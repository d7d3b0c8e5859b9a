// cpu_demo/mlp_stage.hpp: one stage of the demo model, Linear(h,4h) -> GELU -> Linear(4h,h), no bias, in
// double precision, written as a dualpipe Stage. Reusable by tests.
//
// Shapes (row-major): a chunk is `rows` rows of `hidden` values (at most `rows`: a chunk's size says how many,
// so that chunks of variable lengths run on the same stage; AuxMlpStage below adds a second tensor).
//   X (rows x h) -> Z = X W1^T (rows x 4h) -> A = gelu(Z) -> Y = A W2^T (rows x h)
//   W1 is 4h x h, W2 is h x 4h. The last stage's loss is the MSE mean((Y - T)^2) over rows*h elements.
// GELU is the exact (erf) form, gelu(z) = z * Phi(z), as torch.nn.functional.gelu's default.
//
// Zero-bubble split: backward_input computes dA = dY W2, dZ = dA * gelu'(Z), dX = dZ W1, and keeps dY and dZ;
// backward_weight later accumulates dW2 += dY^T A and dW1 += dZ^T X and frees the chunk's state.
// The weights are initialised from (seed, stage) only, so every copy of a stage (DualPipe holds each twice)
// starts identical.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/runtime/stage.hpp"

namespace dualpipe::cpu_demo {

/// SplitMix64: a tiny, well-mixed deterministic generator (no dependence on the standard library's engines,
/// whose distributions differ between implementations).
class SplitMix64 {
public:
  explicit SplitMix64(std::uint64_t seed) noexcept : _state(seed) {}
  /// Next 64 random bits.
  std::uint64_t next() noexcept {
    std::uint64_t z = (_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform double in [-1, 1) with 53 random bits.
  double uniform_pm1() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-52 - 1.0; }

private:
  std::uint64_t _state;
};

/// A seed derived from a base seed and a few indices (stage, step, ...), well mixed.
[[nodiscard]] inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t a, std::uint64_t b = 0) noexcept {
  SplitMix64 g(seed ^ (a * 0xD1B54A32D192ED03ull) ^ (b * 0x8CB92BA72F3D8DD7ull));
  return g.next();
}

namespace detail {
// The kernels are plain loops in a fixed order: every copy of a computation gives the same bits, so the
// pipelined run and the sequential reference agree exactly chunk by chunk.

/// C (m x n) = A (m x k) * B^T, B is n x k.
inline void matmul_nt(const double* a, const double* b, double* c, int m, int n, int k) noexcept {
  for (int i = 0; i < m; ++i) {
    const double* ai = a + static_cast<std::ptrdiff_t>(i) * k;
    for (int j = 0; j < n; ++j) {
      const double* bj = b + static_cast<std::ptrdiff_t>(j) * k;
      double s = 0;
      for (int t = 0; t < k; ++t) s += ai[t] * bj[t];
      c[static_cast<std::ptrdiff_t>(i) * n + j] = s;
    }
  }
}

/// C (m x n) = A (m x k) * B, B is k x n.
inline void matmul_nn(const double* a, const double* b, double* c, int m, int n, int k) noexcept {
  for (int i = 0; i < m; ++i) {
    double* ci = c + static_cast<std::ptrdiff_t>(i) * n;
    for (int j = 0; j < n; ++j) ci[j] = 0;
    const double* ai = a + static_cast<std::ptrdiff_t>(i) * k;
    for (int t = 0; t < k; ++t) {
      const double at = ai[t];
      const double* bt = b + static_cast<std::ptrdiff_t>(t) * n;
      for (int j = 0; j < n; ++j) ci[j] += at * bt[j];
    }
  }
}

/// C (m x n) += A^T * B, A is k x m, B is k x n (k = rows: a weight gradient).
inline void matmul_tn_acc(const double* a, const double* b, double* c, int m, int n, int k) noexcept {
  for (int t = 0; t < k; ++t) {
    const double* at = a + static_cast<std::ptrdiff_t>(t) * m;
    const double* bt = b + static_cast<std::ptrdiff_t>(t) * n;
    for (int i = 0; i < m; ++i) {
      const double ati = at[i];
      double* ci = c + static_cast<std::ptrdiff_t>(i) * n;
      for (int j = 0; j < n; ++j) ci[j] += ati * bt[j];
    }
  }
}

inline constexpr double inv_sqrt2 = 0.70710678118654752440;
inline constexpr double inv_sqrt_2pi = 0.39894228040143267794;

/// Exact GELU: z * Phi(z).
[[nodiscard]] inline double gelu(double z) noexcept { return 0.5 * z * (1.0 + std::erf(z * inv_sqrt2)); }
/// Its derivative: Phi(z) + z * phi(z).
[[nodiscard]] inline double gelu_grad(double z) noexcept {
  return 0.5 * (1.0 + std::erf(z * inv_sqrt2)) + z * inv_sqrt_2pi * std::exp(-0.5 * z * z);
}
}  // namespace detail

/// One stage of the demo MLP; models dualpipe::Stage, StageWithFusedBackward, StageWithOverlap and
/// StageWithGradsReady.
class MlpStage {
public:
  /// A stage of width `hidden` taking chunks of `rows` rows; its weights come from (seed, stage) alone.
  /// Throws ConfigError unless hidden >= 1 and rows >= 1.
  MlpStage(int hidden, int rows, std::uint64_t seed, int stage);

  // ---- the Stage interface (runtime/stage.hpp) ----
  /// Y = gelu(X W1^T) W2^T; keeps X, Z, A for the backward unless ctx.mode is forward.
  void forward(const StageContext& ctx, ConstBytes input, MutableBytes output);
  /// MSE of this chunk against `labels`; keeps Y - T for the backward.
  double loss(const StageContext& ctx, ConstBytes output, ConstBytes labels);
  /// Input gradient; keeps dY and dZ for backward_weight. output_grad is empty at the last stage (then dY =
  /// loss_scale * 2 (Y - T) / (rows*h)); input_grad is empty at the first stage (then dX is not computed).
  void backward_input(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad);
  /// Accumulates chunk ctx.chunk's weight gradients and frees its state.
  void backward_weight(const StageContext& ctx);
  /// Fused backward: backward_input then backward_weight of the same chunk.
  void backward(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad);
  /// The overlapped forward of one chunk and backward of another (the reference's
  /// overlapped_forward_backward). On a CPU there is nothing to overlap: it runs the forward, then the fused
  /// backward, and counts the call so that a program can show the hook was used.
  static void forward_backward(MlpStage& fwd, const StageContext& fctx, ConstBytes input, MutableBytes output,
                               MlpStage& bwd, const StageContext& bctx, ConstBytes output_grad,
                               MutableBytes input_grad);
  /// Told that this stage's gradients of the step are final (after its last weight gradient): counts the
  /// call and runs the function given to when_grads_ready (the demo posts the gradient reduction there).
  void on_grads_ready(const StageContext& ctx) {
    ++_grads_ready_calls;
    if (_grads_ready) _grads_ready(ctx);
  }
  /// What on_grads_ready runs (nothing by default).
  void when_grads_ready(std::function<void(const StageContext&)> fn) { _grads_ready = std::move(fn); }
  /// Bytes of one chunk's input (rows * hidden doubles).
  [[nodiscard]] std::size_t input_bytes() const noexcept { return _chunk_values * sizeof(double); }
  /// Bytes of one chunk's output (rows * hidden doubles).
  [[nodiscard]] std::size_t output_bytes() const noexcept { return _chunk_values * sizeof(double); }

  // ---- parameters ----
  /// All weights, W1 (4h x h, row-major) followed by W2 (h x 4h).
  [[nodiscard]] std::span<const double> parameters() const noexcept { return _params; }
  /// Their accumulated gradients, laid out as parameters().
  [[nodiscard]] std::span<const double> gradients() const noexcept { return _grads; }
  /// The same, writable: a gradient reduction sums into it in place.
  [[nodiscard]] std::span<double> gradient_buffer() noexcept { return _grads; }
  /// Sets the gradients to zero.
  void zero_grad() noexcept;
  /// Plain SGD: parameters -= lr * grad (grad laid out as parameters()). Throws ConfigError on a size mismatch.
  void sgd_step(std::span<const double> grad, double lr);

  // ---- facts for programs and tests ----
  [[nodiscard]] int stage() const noexcept { return _stage; }
  [[nodiscard]] int hidden() const noexcept { return _h; }
  [[nodiscard]] int rows() const noexcept { return _rows; }
  /// Calls of the overlapped forward_backward hook in which this stage ran the backward half.
  [[nodiscard]] long overlapped_calls() const noexcept { return _overlapped_calls; }
  /// Calls of the fused backward (outside forward_backward).
  [[nodiscard]] long fused_backward_calls() const noexcept { return _fused_calls; }
  /// Calls of backward_weight that were deferred (zero-bubble `W`), i.e. not part of a fused backward.
  [[nodiscard]] long deferred_weight_calls() const noexcept { return _deferred_weight_calls; }
  /// Calls of on_grads_ready.
  [[nodiscard]] long grads_ready_calls() const noexcept { return _grads_ready_calls; }
  /// Chunks whose forward ran and whose weight gradient has not (0 after a complete training step).
  [[nodiscard]] int chunks_in_flight() const noexcept;
  /// Forgets every chunk's state (after a failed step, through Pipeline::reset()); keeps weights and gradients.
  void reset() noexcept {
    for (ChunkState& c : _chunks) {
      c.phase = Phase::empty;
      c.has_loss = false;
    }
  }
  /// Makes this stage's forward call number `forward_call` (0-based, counted over its lifetime) throw
  /// std::runtime_error, to show how a failing stage ends a step on every rank. -1 switches it off.
  void inject_failure(long forward_call) noexcept { _fail_at_forward = forward_call; }

private:
  enum class Phase : unsigned char { empty, forwarded, input_done };
  struct ChunkState {
    Phase phase = Phase::empty;
    bool has_loss = false;
    int rows = 0;                 // this chunk's rows (at most the stage's rows)
    std::vector<double> x, z, a;  // saved by forward
    std::vector<double> dy, dz;   // dy: Y - T after loss(), the output gradient after backward_input
  };

  ChunkState& _state(const StageContext& ctx, const char* what);
  int _rows_of(std::size_t bytes, const char* what) const;
  void _check_size(std::size_t got, std::size_t want, const char* what) const;
  [[noreturn]] void _fail(const std::string& what) const;
  void _backward_input_impl(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad);
  void _backward_weight_impl(const StageContext& ctx);

  int _h;
  int _rows;
  int _stage;
  std::size_t _chunk_values;        // rows * h
  std::vector<double> _params;      // W1 then W2
  std::vector<double> _grads;       // same layout
  std::vector<ChunkState> _chunks;  // indexed by ctx.chunk; reused across steps (no steady-state allocation)
  std::vector<double> _scratch_x, _scratch_z, _scratch_a, _scratch_y, _scratch_t, _scratch_da;
  long _forward_calls = 0;
  long _fail_at_forward = -1;
  long _overlapped_calls = 0;
  long _fused_calls = 0;
  long _deferred_weight_calls = 0;
  long _grads_ready_calls = 0;
  std::function<void(const StageContext&)> _grads_ready;
};

// ---------------------------------------------------------------------------------------------------------

inline MlpStage::MlpStage(int hidden, int rows, std::uint64_t seed, int stage)
    : _h(hidden), _rows(rows), _stage(stage) {
  if (hidden < 1 || rows < 1)
    throw ConfigError("MlpStage: hidden and rows must be at least 1 (got hidden=" + std::to_string(hidden) +
                      ", rows=" + std::to_string(rows) + ")");
  _chunk_values = static_cast<std::size_t>(rows) * static_cast<std::size_t>(hidden);
  const std::size_t w = 4 * static_cast<std::size_t>(hidden) * static_cast<std::size_t>(hidden);
  _params.resize(2 * w);
  _grads.assign(2 * w, 0.0);
  // As torch.nn.Linear: uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)).
  SplitMix64 g(derive_seed(seed, 0x5747u, static_cast<std::uint64_t>(stage)));
  const double b1 = 1.0 / std::sqrt(static_cast<double>(hidden));
  const double b2 = 1.0 / std::sqrt(4.0 * static_cast<double>(hidden));
  for (std::size_t i = 0; i < w; ++i) _params[i] = b1 * g.uniform_pm1();
  for (std::size_t i = 0; i < w; ++i) _params[w + i] = b2 * g.uniform_pm1();
}

inline void MlpStage::_fail(const std::string& what) const {
  throw std::logic_error("MlpStage (stage " + std::to_string(_stage) + "): " + what);
}

inline void MlpStage::_check_size(std::size_t got, std::size_t want, const char* what) const {
  if (got != want)
    _fail(std::string(what) + " has " + std::to_string(got) + " bytes, expected " + std::to_string(want));
}

// A chunk may have fewer rows than the stage's maximum (variable lengths): its size says how many.
inline int MlpStage::_rows_of(std::size_t bytes, const char* what) const {
  const std::size_t row = static_cast<std::size_t>(_h) * sizeof(double);
  if (bytes == 0 || bytes % row != 0 || bytes / row > static_cast<std::size_t>(_rows))
    _fail(std::string(what) + " has " + std::to_string(bytes) + " bytes, expected 1 to " + std::to_string(_rows) +
          " rows of " + std::to_string(row) + " bytes");
  return static_cast<int>(bytes / row);
}

inline MlpStage::ChunkState& MlpStage::_state(const StageContext& ctx, const char* what) {
  if (ctx.chunk < 0) _fail(std::string(what) + " with chunk " + std::to_string(ctx.chunk));
  const auto c = static_cast<std::size_t>(ctx.chunk);
  if (c >= _chunks.size()) _chunks.resize(c + 1);
  return _chunks[c];
}

inline void MlpStage::forward(const StageContext& ctx, ConstBytes input, MutableBytes output) {
  if (_forward_calls++ == _fail_at_forward)
    throw std::runtime_error("injected failure in MlpStage stage " + std::to_string(_stage) + " (forward call " +
                             std::to_string(_fail_at_forward) + ")");
  const int rows = _rows_of(input.size(), "forward input");
  const std::size_t values = static_cast<std::size_t>(rows) * static_cast<std::size_t>(_h);
  _check_size(output.size(), values * sizeof(double), "forward output");
  const std::size_t wide = 4 * values;
  const bool keep = ctx.mode == Mode::train;
  ChunkState* st = nullptr;
  if (keep) {
    st = &_state(ctx, "forward");
    if (st->phase != Phase::empty)
      _fail("forward of chunk " + std::to_string(ctx.chunk) + " while its previous use is unfinished");
  }
  std::vector<double>& x = keep ? st->x : _scratch_x;
  std::vector<double>& z = keep ? st->z : _scratch_z;
  std::vector<double>& a = keep ? st->a : _scratch_a;
  x.resize(values);
  std::memcpy(x.data(), input.data(), input.size());
  z.resize(wide);
  a.resize(wide);
  const double* w1 = _params.data();
  const double* w2 = _params.data() + 4 * static_cast<std::size_t>(_h) * static_cast<std::size_t>(_h);
  detail::matmul_nt(x.data(), w1, z.data(), rows, 4 * _h, _h);
  for (std::size_t i = 0; i < wide; ++i) a[i] = detail::gelu(z[i]);
  _scratch_y.resize(values);
  detail::matmul_nt(a.data(), w2, _scratch_y.data(), rows, _h, 4 * _h);
  std::memcpy(output.data(), _scratch_y.data(), output.size());
  if (keep) {
    st->phase = Phase::forwarded;
    st->has_loss = false;
    st->rows = rows;
  }
}

inline double MlpStage::loss(const StageContext& ctx, ConstBytes output, ConstBytes labels) {
  const int rows = _rows_of(output.size(), "loss output");
  const std::size_t values = static_cast<std::size_t>(rows) * static_cast<std::size_t>(_h);
  _check_size(labels.size(), output.size(), "loss labels");
  std::vector<double>& y = _scratch_y;
  y.resize(values);
  std::memcpy(y.data(), output.data(), output.size());
  std::vector<double>& t = _scratch_t;
  t.resize(values);
  std::memcpy(t.data(), labels.data(), labels.size());
  double sum = 0;
  for (std::size_t i = 0; i < values; ++i) {
    const double d = y[i] - t[i];
    sum += d * d;
    y[i] = d;
  }
  if (ctx.mode == Mode::train) {
    ChunkState& st = _state(ctx, "loss");
    if (st.phase != Phase::forwarded) _fail("loss of chunk " + std::to_string(ctx.chunk) + " before its forward");
    st.dy.swap(y);  // Y - T; scaled into dY by backward_input
    st.has_loss = true;
  }
  return sum / static_cast<double>(values);
}

inline void MlpStage::_backward_input_impl(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad) {
  ChunkState& st = _state(ctx, "backward_input");
  if (st.phase != Phase::forwarded)
    _fail("backward_input of chunk " + std::to_string(ctx.chunk) + " without its forward");
  const int rows = st.rows;
  const std::size_t values = static_cast<std::size_t>(rows) * static_cast<std::size_t>(_h);
  if (output_grad.empty()) {
    if (!st.has_loss) _fail("backward of chunk " + std::to_string(ctx.chunk) + " at the last stage without its loss");
    const double f = ctx.loss_scale * 2.0 / static_cast<double>(values);  // d mean((Y-T)^2) / dY
    for (double& v : st.dy) v *= f;
  } else {
    _check_size(output_grad.size(), values * sizeof(double), "backward output_grad");
    st.dy.resize(values);
    std::memcpy(st.dy.data(), output_grad.data(), output_grad.size());
  }
  const std::size_t wide = 4 * values;
  const double* w1 = _params.data();
  const double* w2 = _params.data() + 4 * static_cast<std::size_t>(_h) * static_cast<std::size_t>(_h);
  _scratch_da.resize(wide);
  detail::matmul_nn(st.dy.data(), w2, _scratch_da.data(), rows, 4 * _h, _h);  // dA = dY W2
  st.dz.resize(wide);
  for (std::size_t i = 0; i < wide; ++i) st.dz[i] = _scratch_da[i] * detail::gelu_grad(st.z[i]);
  if (!input_grad.empty()) {
    _check_size(input_grad.size(), values * sizeof(double), "backward input_grad");
    _scratch_y.resize(values);
    detail::matmul_nn(st.dz.data(), w1, _scratch_y.data(), rows, _h, 4 * _h);  // dX = dZ W1
    std::memcpy(input_grad.data(), _scratch_y.data(), input_grad.size());
  }
  st.phase = Phase::input_done;
}

inline void MlpStage::_backward_weight_impl(const StageContext& ctx) {
  ChunkState& st = _state(ctx, "backward_weight");
  if (st.phase != Phase::input_done)
    _fail("backward_weight of chunk " + std::to_string(ctx.chunk) + " before its backward_input");
  double* g1 = _grads.data();
  double* g2 = _grads.data() + 4 * static_cast<std::size_t>(_h) * static_cast<std::size_t>(_h);
  detail::matmul_tn_acc(st.dz.data(), st.x.data(), g1, 4 * _h, _h, st.rows);  // dW1 += dZ^T X
  detail::matmul_tn_acc(st.dy.data(), st.a.data(), g2, _h, 4 * _h, st.rows);  // dW2 += dY^T A
  st.phase = Phase::empty;
  st.has_loss = false;
}

inline void MlpStage::backward_input(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad) {
  _backward_input_impl(ctx, output_grad, input_grad);
}

inline void MlpStage::backward_weight(const StageContext& ctx) {
  _backward_weight_impl(ctx);
  ++_deferred_weight_calls;
}

inline void MlpStage::backward(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad) {
  _backward_input_impl(ctx, output_grad, input_grad);
  _backward_weight_impl(ctx);
  ++_fused_calls;
}

inline void MlpStage::forward_backward(MlpStage& fwd, const StageContext& fctx, ConstBytes input, MutableBytes output,
                                       MlpStage& bwd, const StageContext& bctx, ConstBytes output_grad,
                                       MutableBytes input_grad) {
  fwd.forward(fctx, input, output);
  bwd._backward_input_impl(bctx, output_grad, input_grad);
  bwd._backward_weight_impl(bctx);
  ++bwd._overlapped_calls;
}

inline void MlpStage::zero_grad() noexcept {
  for (double& g : _grads) g = 0;
}

inline void MlpStage::sgd_step(std::span<const double> grad, double lr) {
  if (grad.size() != _params.size())
    throw ConfigError("MlpStage::sgd_step: gradient has " + std::to_string(grad.size()) + " values, expected " +
                      std::to_string(_params.size()));
  for (std::size_t i = 0; i < _params.size(); ++i) _params[i] -= lr * grad[i];
}

inline int MlpStage::chunks_in_flight() const noexcept {
  int n = 0;
  for (const ChunkState& c : _chunks) n += c.phase != Phase::empty ? 1 : 0;
  return n;
}

static_assert(check_stage<MlpStage>());
static_assert(StageWithFusedBackward<MlpStage>);
static_assert(StageWithOverlap<MlpStage>);

/// The demo stage of --variable-lengths: two tensors per chunk, both `rows(b)` rows long, b's own count. Tensor 0
/// is the hidden state X (rows x h), tensor 1 an auxiliary column A (rows doubles, no gradient: like a mask or
/// positions) that each stage adds to its input row by row and hands on changed:
///   forward: MlpStage on X + A (A broadcast over the row), A' = A / 2 + 1/4.
/// The backward is MlpStage's (the gradient of X + A with respect to X is the identity). Models
/// StageWithTensorLists; everything else (gradients, counters, on_grads_ready) is MlpStage's.
class AuxMlpStage : public MlpStage {
public:
  /// As MlpStage; `rows` is the most rows a chunk may have.
  AuxMlpStage(int hidden, int rows, std::uint64_t seed, int stage)
      : MlpStage(hidden, rows, seed, stage), _specs{TensorSpec{static_cast<std::size_t>(hidden) * sizeof(double),
                                                               static_cast<std::size_t>(rows), true},
                                                    TensorSpec{sizeof(double), static_cast<std::size_t>(rows), false}},
        _shifted(static_cast<std::size_t>(rows) * static_cast<std::size_t>(hidden)) {}

  /// X (rows x h doubles, with a gradient) and A (rows doubles, without).
  [[nodiscard]] std::span<const TensorSpec> input_tensors() const noexcept { return _specs; }
  [[nodiscard]] std::span<const TensorSpec> output_tensors() const noexcept { return _specs; }

  void forward(const StageContext& ctx, const ConstBytesList& in, const MutableBytesList& out) {
    MlpStage::forward(ctx, shift(in, out), out[0]);
  }
  double loss(const StageContext& ctx, const ConstBytesList& out, ConstBytes labels) {
    return MlpStage::loss(ctx, out[0], labels);
  }
  void backward_input(const StageContext& ctx, const ConstBytesList& grad, const MutableBytesList& in_grad) {
    MlpStage::backward_input(ctx, first(grad), first(in_grad));
  }
  void backward(const StageContext& ctx, const ConstBytesList& grad, const MutableBytesList& in_grad) {
    MlpStage::backward(ctx, first(grad), first(in_grad));
  }
  static void forward_backward(AuxMlpStage& fwd, const StageContext& fctx, const ConstBytesList& in,
                               const MutableBytesList& out, AuxMlpStage& bwd, const StageContext& bctx,
                               const ConstBytesList& grad, const MutableBytesList& in_grad) {
    MlpStage::forward_backward(fwd, fctx, fwd.shift(in, out), out[0], bwd, bctx, first(grad), first(in_grad));
  }

  /// X + A into the stage's scratch (returned as bytes), and A' into out[1].
  ConstBytes shift(const ConstBytesList& in, const MutableBytesList& out) {
    if (in.size() != 2 || out.size() != 2)
      throw std::logic_error("AuxMlpStage (stage " + std::to_string(stage()) + "): expected 2 tensors, got " +
                             std::to_string(in.size()) + " and " + std::to_string(out.size()));
    const std::size_t rows = in[1].size() / sizeof(double);
    const auto h = static_cast<std::size_t>(hidden());
    if (in[0].size() != rows * h * sizeof(double) || out[1].size() != in[1].size())
      throw std::logic_error("AuxMlpStage (stage " + std::to_string(stage()) + "): tensor sizes disagree (" +
                             std::to_string(in[0].size()) + " hidden bytes for " + std::to_string(rows) + " rows)");
    const auto* x = reinterpret_cast<const double*>(in[0].data());
    const auto* a = reinterpret_cast<const double*>(in[1].data());
    auto* a_out = reinterpret_cast<double*>(out[1].data());
    for (std::size_t r = 0; r < rows; ++r) {
      for (std::size_t j = 0; j < h; ++j) _shifted[r * h + j] = x[r * h + j] + a[r];
      a_out[r] = a[r] / 2 + 0.25;
    }
    return std::as_bytes(std::span<const double>(_shifted).first(rows * h));
  }

private:
  template <class Bytes>
  static Bytes first(const BytesList<Bytes>& l) noexcept {
    return l.empty() ? Bytes{} : l[0];
  }
  std::array<TensorSpec, 2> _specs;
  std::vector<double> _shifted;  // X + A of the chunk being computed (MlpStage keeps its own copy)
};

static_assert(check_stage<AuxMlpStage>());
static_assert(StageWithTensorLists<AuxMlpStage>);
static_assert(StageWithOverlap<AuxMlpStage>);
static_assert(StageWithFusedBackward<AuxMlpStage>);

}  // namespace dualpipe::cpu_demo
