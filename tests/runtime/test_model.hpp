// A small deterministic model for the runtime tests: stage s is y = tanh(W_s x + b_s) on `rows` rows of
// dims[s] features, the loss is 0.5 * sum((y - t)^2). Double precision throughout, so a pipelined run and
// a sequential run of the same model agree to rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/runtime/stage.hpp"

namespace testmodel {

using dualpipe::ConstBytes;
using dualpipe::MutableBytes;
using dualpipe::StageContext;

/// Features entering stage s (s = 0..S; dims(S) is the model's output width).
inline int dims(int s) { return 2 + (s * 5) % 3; }
inline constexpr int rows = 2;

inline std::span<const double> as_doubles(ConstBytes b) {
  return {reinterpret_cast<const double*>(b.data()), b.size() / sizeof(double)};
}
inline std::span<double> as_doubles(MutableBytes b) {
  return {reinterpret_cast<double*>(b.data()), b.size() / sizeof(double)};
}

/// Where a stage is told to throw (tests of failure handling).
struct FailPoint {
  enum class Where { none, forward, backward_input, backward_weight, loss };
  Where where = Where::none;
  int chunk = -1;
};

/// One layer (one model stage), with the state a chunk keeps between its forward and its backward.
class Layer {
public:
  Layer(int stage, int chunks) : _in(dims(stage)), _out(dims(stage + 1)) {
    _w.resize(static_cast<std::size_t>(_in * _out));
    _b.resize(static_cast<std::size_t>(_out));
    for (int i = 0; i < _out; ++i) {
      for (int j = 0; j < _in; ++j) _w[idx(i, j)] = 0.6 * std::sin(1.3 * stage + 0.7 * i + 0.37 * j + 0.1);
      _b[static_cast<std::size_t>(i)] = 0.1 * std::cos(0.9 * stage + 0.5 * i);
    }
    _gw.assign(_w.size(), 0.0);
    _gb.assign(_b.size(), 0.0);
    _x.assign(static_cast<std::size_t>(chunks), std::vector<double>(static_cast<std::size_t>(rows * _in)));
    _y.assign(static_cast<std::size_t>(chunks), std::vector<double>(static_cast<std::size_t>(rows * _out)));
    _t.assign(static_cast<std::size_t>(chunks), std::vector<double>(static_cast<std::size_t>(rows * _out)));
    _dz.assign(static_cast<std::size_t>(chunks), std::vector<double>(static_cast<std::size_t>(rows * _out)));
  }

  void forward(const StageContext& ctx, ConstBytes input, MutableBytes output) {
    maybe_fail(FailPoint::Where::forward, ctx);
    const auto x = as_doubles(input);
    const auto y = as_doubles(output);
    check(x.size() == _x[0].size() && y.size() == _y[0].size(), "forward: wrong buffer sizes");
    auto& sx = _x[slot(ctx)];
    auto& sy = _y[slot(ctx)];
    std::copy(x.begin(), x.end(), sx.begin());
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < _out; ++i) {
        double z = _b[static_cast<std::size_t>(i)];
        for (int j = 0; j < _in; ++j) z += _w[idx(i, j)] * x[static_cast<std::size_t>(r * _in + j)];
        sy[static_cast<std::size_t>(r * _out + i)] = y[static_cast<std::size_t>(r * _out + i)] = std::tanh(z);
      }
  }

  double loss(const StageContext& ctx, ConstBytes output, ConstBytes labels) {
    maybe_fail(FailPoint::Where::loss, ctx);
    const auto y = as_doubles(output);
    const auto t = as_doubles(labels);
    check(t.size() == y.size(), "loss: labels of the wrong size");
    std::copy(t.begin(), t.end(), _t[slot(ctx)].begin());
    double l = 0;
    for (std::size_t k = 0; k < y.size(); ++k) l += 0.5 * (y[k] - t[k]) * (y[k] - t[k]);
    return l;
  }

  void backward_input(const StageContext& ctx, ConstBytes output_grad, MutableBytes input_grad) {
    maybe_fail(FailPoint::Where::backward_input, ctx);
    const auto& y = _y[slot(ctx)];
    auto& dz = _dz[slot(ctx)];
    if (ctx.is_last_stage) {
      check(output_grad.empty(), "backward_input: the last stage gets no output gradient");
      const auto& t = _t[slot(ctx)];
      for (std::size_t k = 0; k < y.size(); ++k) dz[k] = (y[k] - t[k]) * ctx.loss_scale * (1 - y[k] * y[k]);
    } else {
      const auto g = as_doubles(output_grad);
      check(g.size() == y.size(), "backward_input: output gradient of the wrong size");
      for (std::size_t k = 0; k < y.size(); ++k) dz[k] = g[k] * (1 - y[k] * y[k]);
    }
    if (ctx.is_first_stage) {
      check(input_grad.empty(), "backward_input: the first stage gets no input gradient buffer");
      return;
    }
    const auto dx = as_doubles(input_grad);
    check(dx.size() == _x[0].size(), "backward_input: input gradient of the wrong size");
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < _in; ++j) {
        double s = 0;
        for (int i = 0; i < _out; ++i) s += _w[idx(i, j)] * dz[static_cast<std::size_t>(r * _out + i)];
        dx[static_cast<std::size_t>(r * _in + j)] = s;
      }
  }

  void backward_weight(const StageContext& ctx) {
    maybe_fail(FailPoint::Where::backward_weight, ctx);
    const auto& x = _x[slot(ctx)];
    const auto& dz = _dz[slot(ctx)];
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < _out; ++i) {
        const double d = dz[static_cast<std::size_t>(r * _out + i)];
        _gb[static_cast<std::size_t>(i)] += d;
        for (int j = 0; j < _in; ++j) _gw[idx(i, j)] += d * x[static_cast<std::size_t>(r * _in + j)];
      }
    ++weight_calls;
  }

  [[nodiscard]] std::size_t input_bytes() const { return static_cast<std::size_t>(rows * _in) * sizeof(double); }
  [[nodiscard]] std::size_t output_bytes() const { return static_cast<std::size_t>(rows * _out) * sizeof(double); }

  void zero_grad() {
    _gw.assign(_gw.size(), 0.0);
    _gb.assign(_gb.size(), 0.0);
  }
  [[nodiscard]] const std::vector<double>& grad_w() const { return _gw; }
  [[nodiscard]] const std::vector<double>& grad_b() const { return _gb; }

  FailPoint fail;        ///< Where to throw (tests only).
  int weight_calls = 0;  ///< backward_weight calls so far.

private:
  [[nodiscard]] std::size_t idx(int i, int j) const { return static_cast<std::size_t>(i * _in + j); }
  [[nodiscard]] std::size_t slot(const StageContext& ctx) const {
    check(ctx.chunk >= 0 && static_cast<std::size_t>(ctx.chunk) < _x.size(), "chunk index out of range");
    return static_cast<std::size_t>(ctx.chunk);
  }
  static void check(bool ok, const char* what) {
    if (!ok) throw std::logic_error(std::string("test layer: ") + what);
  }
  void maybe_fail(FailPoint::Where w, const StageContext& ctx) const {
    if (fail.where == w && fail.chunk == ctx.chunk)
      throw std::runtime_error("injected failure in stage " + std::to_string(ctx.stage) + " chunk " +
                               std::to_string(ctx.chunk));
  }

  int _in, _out;
  std::vector<double> _w, _b, _gw, _gb;
  std::vector<std::vector<double>> _x, _y, _t, _dz;
};

/// The plain Stage: forward, loss, backward_input, backward_weight.
struct PlainStage : Layer {
  using Layer::Layer;
};

/// A stage with a fused backward (used for B ops).
struct FusedStage : Layer {
  using Layer::Layer;
  void backward(const StageContext& ctx, ConstBytes g, MutableBytes ig) {
    backward_input(ctx, g, ig);
    backward_weight(ctx);
    ++fused_calls;
  }
  int fused_calls = 0;
};

/// A stage type with an overlapped forward+backward (used for FB ops) and a fused backward.
struct OverlapStage : Layer {
  using Layer::Layer;
  void backward(const StageContext& ctx, ConstBytes g, MutableBytes ig) {
    backward_input(ctx, g, ig);
    backward_weight(ctx);
  }
  static void forward_backward(OverlapStage& f, const StageContext& fctx, ConstBytes in, MutableBytes out,
                               OverlapStage& b, const StageContext& bctx, ConstBytes g, MutableBytes ig) {
    f.forward(fctx, in, out);
    b.backward(bctx, g, ig);
    ++f.overlap_calls;
  }
  int overlap_calls = 0;
};

/// The batch: chunks x rows x dims(0) inputs and chunks x rows x dims(stages) labels, deterministic.
struct Batch {
  std::vector<double> inputs, labels;
  Batch(int chunks, int stages) {
    inputs.resize(static_cast<std::size_t>(chunks * rows * dims(0)));
    labels.resize(static_cast<std::size_t>(chunks * rows * dims(stages)));
    for (std::size_t k = 0; k < inputs.size(); ++k) inputs[k] = std::cos(0.37 * static_cast<double>(k) + 0.2);
    for (std::size_t k = 0; k < labels.size(); ++k) labels[k] = 0.8 * std::sin(0.53 * static_cast<double>(k));
  }
  [[nodiscard]] ConstBytes input_bytes() const { return std::as_bytes(std::span(inputs)); }
  [[nodiscard]] ConstBytes label_bytes() const { return std::as_bytes(std::span(labels)); }
};

/// The same model run chunk by chunk, stage by stage: losses, last-stage outputs and summed weight grads.
struct Sequential {
  std::vector<double> losses;
  std::vector<double> outputs;  // chunk after chunk
  std::vector<Layer> layers;

  Sequential(int stages, int chunks, const Batch& batch, double loss_scale = 1.0, bool train = true) {
    for (int s = 0; s < stages; ++s) layers.emplace_back(s, 1);
    const auto in = batch.input_bytes();
    const auto lab = batch.label_bytes();
    const std::size_t in_n = in.size() / static_cast<std::size_t>(chunks);
    const std::size_t lab_n = lab.size() / static_cast<std::size_t>(chunks);
    for (int c = 0; c < chunks; ++c) {
      std::vector<std::vector<std::byte>> acts(static_cast<std::size_t>(stages + 1));
      acts[0].assign(in.begin() + static_cast<std::ptrdiff_t>(c * in_n),
                     in.begin() + static_cast<std::ptrdiff_t>((c + 1) * in_n));
      for (int s = 0; s < stages; ++s) {
        auto& L = layers[static_cast<std::size_t>(s)];
        acts[static_cast<std::size_t>(s + 1)].resize(L.output_bytes());
        L.forward(ctx(s, stages, loss_scale), acts[static_cast<std::size_t>(s)], acts[static_cast<std::size_t>(s + 1)]);
      }
      const auto y = as_doubles(std::span<const std::byte>(acts.back()));
      outputs.insert(outputs.end(), y.begin(), y.end());
      losses.push_back(layers.back().loss(ctx(stages - 1, stages, loss_scale), acts.back(),
                                          lab.subspan(static_cast<std::size_t>(c) * lab_n, lab_n)));
      if (!train) continue;
      std::vector<std::byte> grad;  // gradient of the current stage's output
      for (int s = stages - 1; s >= 0; --s) {
        auto& L = layers[static_cast<std::size_t>(s)];
        std::vector<std::byte> in_grad(s == 0 ? 0 : L.input_bytes());
        L.backward_input(ctx(s, stages, loss_scale), grad, in_grad);
        L.backward_weight(ctx(s, stages, loss_scale));
        grad = std::move(in_grad);
      }
    }
  }

  /// Stage s's weight gradient then its bias gradient (the layout of Harness::grad(s)).
  [[nodiscard]] std::vector<double> grad(int s) const {
    const Layer& layer = layers[static_cast<std::size_t>(s)];
    std::vector<double> g = layer.grad_w();
    g.insert(g.end(), layer.grad_b().begin(), layer.grad_b().end());
    return g;
  }

  static StageContext ctx(int s, int stages, double loss_scale) {
    StageContext c;
    c.stage = s;
    c.num_stages = stages;
    c.chunk = 0;
    c.is_first_stage = s == 0;
    c.is_last_stage = s == stages - 1;
    c.loss_scale = loss_scale;
    return c;
  }
};

/// max |a - b| / max |b| (normwise relative error; 0 when both are zero). +infinity when the sizes differ
/// or any value is not finite (NaN, inf): a NaN gradient or a missing output chunk (left NaN) never passes,
/// since comparisons with NaN are false and std::max would silently skip it.
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  constexpr double bad = std::numeric_limits<double>::infinity();
  if (a.size() != b.size()) return bad;
  double diff = 0, scale = 0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    if (!std::isfinite(a[k]) || !std::isfinite(b[k])) return bad;
    diff = std::max(diff, std::abs(a[k] - b[k]));
    scale = std::max(scale, std::abs(b[k]));
  }
  return scale > 0 ? diff / scale : diff;
}

}  // namespace testmodel
