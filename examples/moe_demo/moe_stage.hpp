// moe_demo/moe_stage.hpp: one module of one rank of dualpipe-moe-demo, as phases (runtime/phases.hpp).
//
// Per layer, forward: compute "router" (dense layer, router, top-2; packs the dispatch), exchange "dispatch"
// (each peer gets a fixed 2T rows of [local expert, u], real rows first, the rest marked -1: the counts are
// known in advance, so no count exchange is needed), compute "experts", exchange "combine" (the expert
// outputs go back, exactly the rows that came), compute "output" (out = u + gated sum + shared expert).
// Backward, per layer from the last: compute "combine-bwd" (the shared expert's backward, the gates'
// gradient; the experts' output
// gradient packed per peer), exchange "combine-grad", compute "experts-bwd" (the experts' input gradient),
// exchange "dispatch-grad", compute "router-bwd" (router and dense layer: the layer input's gradient).
// backward_weight adds every layer's weight gradients from what the backward kept.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstring>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/comm/expert_comm.hpp"
#include "dualpipe/core/bytes.hpp"
#include "dualpipe/runtime/phases.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "moe_model.hpp"

namespace dualpipe::moe_demo {

template <class EC>
class MoeStage {
public:
  /// Stage `stage` of the model on ep rank `ep`; `ec` is the rank's expert communicator (not owned).
  MoeStage(const MoeSpec& spec, int stage, int ep, EC& ec) : _s(spec), _stage(stage), _ep(ep), _ec(&ec) {
    for (int l = 0; l < _s.layers; ++l) {
      _params.push_back(init_layer(_s, stage, l, ep * _s.experts_per_rank, _s.experts_per_rank));
      LayerParams g = _params.back();
      zero(g);
      _grads.push_back(std::move(g));
      for (int k = 0; k < 5; ++k)
        _fwd.push_back({k % 2 ? PhaseKind::exchange : PhaseKind::compute, l, phase_name(Pass::forward, k)});
    }
    for (int l = _s.layers - 1; l >= 0; --l) {
      for (int k = 0; k < 5; ++k)
        _bwd.push_back({k % 2 ? PhaseKind::exchange : PhaseKind::compute, l, phase_name(Pass::backward, k)});
    }
  }

  // ---- Stage ----
  [[nodiscard]] std::size_t input_bytes() const { return row_bytes() * static_cast<std::size_t>(_s.tokens); }
  [[nodiscard]] std::size_t output_bytes() const { return input_bytes(); }
  [[nodiscard]] std::size_t label_bytes() const { return input_bytes(); }
  void forward(const StageContext& ctx, ConstBytes in, MutableBytes out) {
    run_phases(*this, ctx, Pass::forward, {in, out}, timeout);
  }
  void backward_input(const StageContext& ctx, ConstBytes grad, MutableBytes in_grad) {
    run_phases(*this, ctx, Pass::backward, {grad, in_grad}, timeout);
  }
  double loss(const StageContext& ctx, ConstBytes out, ConstBytes labels) {
    Chunk& c = _chunks.at(ctx.chunk);
    c.label.assign(static_cast<std::size_t>(_s.tokens * _s.hidden), 0.0);
    std::memcpy(c.label.data(), labels.data(), labels.size());
    std::vector<double> o(c.label.size());
    std::memcpy(o.data(), out.data(), out.size());
    double l = 0;
    for (std::size_t i = 0; i < o.size(); ++i) l += 0.5 * (o[i] - c.label[i]) * (o[i] - c.label[i]);
    return l / _s.tokens;
  }
  void backward_weight(const StageContext& ctx);
  void reset() { _chunks.clear(); }

  // ---- phases ----
  [[nodiscard]] std::span<const Phase> phases(const StageContext&, Pass pass) const {
    return pass == Pass::forward ? std::span<const Phase>(_fwd) : std::span<const Phase>(_bwd);
  }
  void compute_phase(const StageContext& ctx, Pass pass, int i, PhaseIo io);
  AllToAllBuffers exchange_phase(const StageContext& ctx, Pass pass, int i, PhaseIo io);
  EC& expert_comm() noexcept { return *_ec; }

  /// The name of phase i of a pass (every layer has the same five); "weight" for the FB's weight gradient (-1).
  [[nodiscard]] static const char* phase_name(Pass pass, int i) noexcept {
    static constexpr const char* forward[] = {"router", "dispatch", "experts", "combine", "output"};
    static constexpr const char* backward[] = {"combine-bwd", "combine-grad", "experts-bwd", "dispatch-grad",
                                               "router-bwd"};
    if (i < 0) return "weight";
    return pass == Pass::forward ? forward[i % 5] : backward[i % 5];
  }

  // ---- for the demo ----
  [[nodiscard]] int stage() const noexcept { return _stage; }
  [[nodiscard]] const std::vector<LayerParams>& grads() const noexcept { return _grads; }
  void zero_grad() {
    for (LayerParams& g : _grads) zero(g);
  }
  /// Chunks whose state is still held (0 after a complete step).
  [[nodiscard]] std::size_t held() const noexcept { return _chunks.size(); }
  /// Throws inside the forward dispatch of (chunk, layer), once: a failure inside an all-to-all phase.
  void inject_failure(int chunk, int layer) { _fail_chunk = chunk, _fail_layer = layer; }
  std::chrono::milliseconds timeout{60'000};  ///< For forward()/backward_input() called outside a pipeline.

private:
  struct Layer {                                        // what one layer of one chunk keeps
    std::vector<double> x, t, u, prob;                  // T x h, T x h, T x h, T x N
    std::vector<Routed> routed;                         // T
    std::vector<std::vector<int>> sent;                 // per peer: token * 2 + slot of each real row sent
    std::vector<double> dsend, drecv;                   // dispatch: E x 2T rows of (h + 1)
    std::vector<std::size_t> dcount;                    // E entries: the fixed dispatch bytes per peer
    std::vector<int> rows_from;                         // real rows received from each peer
    std::vector<double> a, ysend, yrecv;                // R x f, R x h (expert outputs, peer order), sent rows x h
    std::vector<std::size_t> ysend_count, yrecv_count;  // combine bytes per peer (R rows back; sent rows in)
    std::vector<double> ggate;                          // T x 2
    std::vector<double> gysend, gyrecv, gusend, gurecv, ga, glog, gz;
    std::vector<double> as, gout, gas, gus;  // shared expert: T x f activations, T x h output gradient,
                                             // T x f inner gradient, T x h gradient of u
  };
  struct Chunk {
    std::vector<Layer> layers;
    std::vector<double> cur, label, out;  // the running activation (or gradient), T x h
    bool weight_owed = false;
  };

  [[nodiscard]] std::size_t row_bytes() const { return static_cast<std::size_t>(_s.hidden) * sizeof(double); }
  [[nodiscard]] int layer_of(Pass pass, int i) const { return pass == Pass::forward ? i / 5 : _s.layers - 1 - i / 5; }
  static void zero(LayerParams& g) {
    std::fill(g.wd.begin(), g.wd.end(), 0.0);
    std::fill(g.wr.begin(), g.wr.end(), 0.0);
    std::fill(g.ws1.begin(), g.ws1.end(), 0.0);
    std::fill(g.ws2.begin(), g.ws2.end(), 0.0);
    for (auto& w : g.w1) std::fill(w.begin(), w.end(), 0.0);
    for (auto& w : g.w2) std::fill(w.begin(), w.end(), 0.0);
  }
  static AllToAllBuffers buffers(const std::vector<double>& send, const std::vector<std::size_t>& sc,
                                 std::vector<double>& recv, const std::vector<std::size_t>& rc) {
    return {std::as_bytes(std::span(send)), sc, std::as_writable_bytes(std::span(recv)), rc};
  }

  void forward_router(Chunk& c, Layer& L, int l, ConstBytes in);
  void forward_experts(Layer& L, int l);
  void forward_output(Chunk& c, Layer& L, int l, MutableBytes out);
  void backward_combine(const StageContext& ctx, Chunk& c, Layer& L, int l, ConstBytes grad);
  void backward_experts(Layer& L, int l);
  void backward_router(Chunk& c, Layer& L, int l, MutableBytes in_grad);

  MoeSpec _s;
  int _stage, _ep;
  EC* _ec;
  std::vector<LayerParams> _params, _grads;
  std::vector<Phase> _fwd, _bwd;
  std::map<int, Chunk> _chunks;
  int _fail_chunk = -1, _fail_layer = -1;
};

template <class EC>
void MoeStage<EC>::compute_phase(const StageContext& ctx, Pass pass, int i, PhaseIo io) {
  const int l = layer_of(pass, i);
  if (pass == Pass::forward) {
    if (l == 0 && i == 0) {
      Chunk& c = _chunks[ctx.chunk];
      c.layers.assign(static_cast<std::size_t>(_s.layers), Layer{});
      c.weight_owed = false;
    }
    Chunk& c = _chunks.at(ctx.chunk);
    Layer& L = c.layers[static_cast<std::size_t>(l)];
    switch (i % 5) {
      case 0: forward_router(c, L, l, io.in); break;
      case 2: forward_experts(L, l); break;
      case 4: forward_output(c, L, l, io.out); break;
      default: throw Error("MoeStage: phase " + std::to_string(i) + " is not a compute phase");
    }
  } else {
    Chunk& c = _chunks.at(ctx.chunk);
    Layer& L = c.layers[static_cast<std::size_t>(l)];
    switch (i % 5) {
      case 0: backward_combine(ctx, c, L, l, io.in); break;
      case 2: backward_experts(L, l); break;
      case 4: backward_router(c, L, l, io.out); break;
      default: throw Error("MoeStage: phase " + std::to_string(i) + " is not a compute phase");
    }
  }
}

template <class EC>
AllToAllBuffers MoeStage<EC>::exchange_phase(const StageContext& ctx, Pass pass, int i, PhaseIo) {
  const int l = layer_of(pass, i);
  Layer& L = _chunks.at(ctx.chunk).layers[static_cast<std::size_t>(l)];
  if (pass == Pass::forward && i % 5 == 1) {
    if (ctx.chunk == _fail_chunk && l == _fail_layer) {
      _fail_chunk = -1;
      throw std::runtime_error("injected failure in the all-to-all (ep rank " + std::to_string(_ep) + ")");
    }
    return buffers(L.dsend, L.dcount, L.drecv, L.dcount);
  }
  if (pass == Pass::forward) return buffers(L.ysend, L.ysend_count, L.yrecv, L.yrecv_count);
  // The backward exchanges run the forward's the other way: combine-grad as dispatch's real rows,
  // dispatch-grad as combine.
  if (i % 5 == 1) return buffers(L.gysend, L.yrecv_count, L.gyrecv, L.ysend_count);
  return buffers(L.gusend, L.ysend_count, L.gurecv, L.yrecv_count);
}

template <class EC>
void MoeStage<EC>::forward_router(Chunk& c, Layer& L, int l, ConstBytes in) {
  const int T = _s.tokens, h = _s.hidden, n = _s.experts(), E = _s.ep, X = _s.experts_per_rank;
  const auto th = static_cast<std::size_t>(T * h);
  if (l == 0) {
    c.cur.assign(th, 0.0);
    std::memcpy(c.cur.data(), in.data(), in.size());
  }
  const LayerParams& p = _params[static_cast<std::size_t>(l)];
  L.x = c.cur;
  L.t.assign(th, 0.0);
  L.u.assign(th, 0.0);
  L.prob.assign(static_cast<std::size_t>(T * n), 0.0);
  L.routed.resize(static_cast<std::size_t>(T));
  L.sent.assign(static_cast<std::size_t>(E), {});
  for (int t = 0; t < T; ++t) {
    const auto o = static_cast<std::size_t>(t * h);
    L.routed[static_cast<std::size_t>(t)] =
        dense_router(_s, p, &L.x[o], &L.u[o], &L.t[o], &L.prob[static_cast<std::size_t>(t * n)]);
    for (int k = 0; k < 2; ++k)
      L.sent[static_cast<std::size_t>(L.routed[static_cast<std::size_t>(t)].top[k] / X)].push_back(t * 2 + k);
  }
  // Dispatch: 2T rows of (h + 1) per peer; real rows first, then rows marked -1.
  const std::size_t cap = 2 * static_cast<std::size_t>(T), w = static_cast<std::size_t>(h + 1);
  L.dsend.assign(static_cast<std::size_t>(E) * cap * w, -1.0);
  L.drecv.assign(L.dsend.size(), 0.0);
  L.dcount.assign(static_cast<std::size_t>(E), cap * w * sizeof(double));
  for (int q = 0; q < E; ++q) {
    std::size_t row = static_cast<std::size_t>(q) * cap;
    for (int ts : L.sent[static_cast<std::size_t>(q)]) {
      const Routed& r = L.routed[static_cast<std::size_t>(ts / 2)];
      double* d = &L.dsend[row++ * w];
      d[0] = r.top[ts % 2] % X;
      std::memcpy(d + 1, &L.u[static_cast<std::size_t>(ts / 2 * h)], row_bytes());
    }
  }
}

template <class EC>
void MoeStage<EC>::forward_experts(Layer& L, int l) {
  const int T = _s.tokens, h = _s.hidden, f = _s.ffn, E = _s.ep;
  const std::size_t cap = 2 * static_cast<std::size_t>(T), w = static_cast<std::size_t>(h + 1);
  const LayerParams& p = _params[static_cast<std::size_t>(l)];
  L.rows_from.assign(static_cast<std::size_t>(E), 0);
  std::size_t R = 0;
  for (int q = 0; q < E; ++q) {
    int n = 0;
    while (static_cast<std::size_t>(n) < cap && L.drecv[(static_cast<std::size_t>(q) * cap + n) * w] >= 0) ++n;
    L.rows_from[static_cast<std::size_t>(q)] = n;
    R += static_cast<std::size_t>(n);
  }
  L.a.assign(R * static_cast<std::size_t>(f), 0.0);
  L.ysend.assign(R * static_cast<std::size_t>(h), 0.0);
  L.ysend_count.assign(static_cast<std::size_t>(E), 0);
  L.yrecv_count.assign(static_cast<std::size_t>(E), 0);
  std::size_t r = 0;
  for (int q = 0; q < E; ++q) {
    for (int k = 0; k < L.rows_from[static_cast<std::size_t>(q)]; ++k, ++r) {
      const double* row = &L.drecv[(static_cast<std::size_t>(q) * cap + static_cast<std::size_t>(k)) * w];
      const auto j = static_cast<std::size_t>(row[0]);
      expert_forward(_s, p.w1[j], p.w2[j], row + 1, &L.a[r * static_cast<std::size_t>(f)],
                     &L.ysend[r * static_cast<std::size_t>(h)]);
    }
    L.ysend_count[static_cast<std::size_t>(q)] =
        static_cast<std::size_t>(L.rows_from[static_cast<std::size_t>(q)]) * row_bytes();
    L.yrecv_count[static_cast<std::size_t>(q)] = L.sent[static_cast<std::size_t>(q)].size() * row_bytes();
  }
  std::size_t back = 0;
  for (std::size_t c : L.yrecv_count) back += c / sizeof(double);
  L.yrecv.assign(back, 0.0);
}

template <class EC>
void MoeStage<EC>::forward_output(Chunk& c, Layer& L, int l, MutableBytes out) {
  const int T = _s.tokens, h = _s.hidden, f = _s.ffn, E = _s.ep;
  const LayerParams& p = _params[static_cast<std::size_t>(l)];
  c.cur = L.u;
  // y rows come back per peer, in the order they were sent.
  std::size_t r = 0;
  for (int q = 0; q < E; ++q)
    for (int ts : L.sent[static_cast<std::size_t>(q)]) {
      const double g = L.routed[static_cast<std::size_t>(ts / 2)].gate[ts % 2];
      for (int i = 0; i < h; ++i) c.cur[static_cast<std::size_t>(ts / 2 * h + i)] += g * L.yrecv[r * h + i];
      ++r;
    }
  // The shared expert, added last (the sequential run adds in the same order).
  L.as.assign(static_cast<std::size_t>(T * f), 0.0);
  std::vector<double> ys(static_cast<std::size_t>(h));
  for (int t = 0; t < T; ++t) {
    expert_forward(_s, p.ws1, p.ws2, &L.u[static_cast<std::size_t>(t * h)], &L.as[static_cast<std::size_t>(t * f)],
                   ys.data());
    for (int i = 0; i < h; ++i) c.cur[static_cast<std::size_t>(t * h + i)] += ys[static_cast<std::size_t>(i)];
  }
  if (l == _s.layers - 1) {
    std::memcpy(out.data(), c.cur.data(), out.size());
    c.out = c.cur;
  }
}

template <class EC>
void MoeStage<EC>::backward_combine(const StageContext& ctx, Chunk& c, Layer& L, int l, ConstBytes grad) {
  const int T = _s.tokens, h = _s.hidden, E = _s.ep;
  const auto th = static_cast<std::size_t>(T * h);
  if (l == _s.layers - 1) {
    c.cur.assign(th, 0.0);
    if (ctx.is_last_stage) {
      for (std::size_t i = 0; i < th; ++i) c.cur[i] = (c.out[i] - c.label[i]) / T * ctx.loss_scale;
    } else {
      std::memcpy(c.cur.data(), grad.data(), grad.size());
    }
  }
  // c.cur is the gradient of this layer's output: u's gradient (residual), the shared expert's, the gates'
  // and y's.
  const int f = _s.ffn;
  const LayerParams& p = _params[static_cast<std::size_t>(l)];
  L.gout = c.cur;
  L.gas.assign(static_cast<std::size_t>(T * f), 0.0);
  L.gus.assign(th, 0.0);
  for (int t = 0; t < T; ++t) {
    const auto o = static_cast<std::size_t>(t * h), of = static_cast<std::size_t>(t * f);
    expert_backward_input(_s, p.ws1, p.ws2, &L.as[of], &L.gout[o], &L.gas[of], &L.gus[o]);
  }
  L.ggate.assign(static_cast<std::size_t>(2 * T), 0.0);
  L.gysend.assign(L.yrecv.size(), 0.0);
  L.gyrecv.assign(L.ysend.size(), 0.0);
  std::size_t r = 0;
  for (int q = 0; q < E; ++q)
    for (int ts : L.sent[static_cast<std::size_t>(q)]) {
      const double g = L.routed[static_cast<std::size_t>(ts / 2)].gate[ts % 2];
      double dot = 0;
      for (int i = 0; i < h; ++i) {
        const double go = c.cur[static_cast<std::size_t>(ts / 2 * h + i)];
        dot += go * L.yrecv[r * h + i];
        L.gysend[r * h + i] = g * go;
      }
      L.ggate[static_cast<std::size_t>(ts)] = dot;
      ++r;
    }
}

template <class EC>
void MoeStage<EC>::backward_experts(Layer& L, int l) {
  const int h = _s.hidden, f = _s.ffn, E = _s.ep, T = _s.tokens;
  const std::size_t cap = 2 * static_cast<std::size_t>(T), w = static_cast<std::size_t>(h + 1);
  const LayerParams& p = _params[static_cast<std::size_t>(l)];
  const std::size_t R = L.gyrecv.size() / static_cast<std::size_t>(h);
  L.ga.assign(R * static_cast<std::size_t>(f), 0.0);
  L.gusend.assign(R * static_cast<std::size_t>(h), 0.0);
  L.gurecv.assign(L.yrecv.size(), 0.0);
  std::size_t r = 0;
  for (int q = 0; q < E; ++q)
    for (int k = 0; k < L.rows_from[static_cast<std::size_t>(q)]; ++k, ++r) {
      const double* row = &L.drecv[(static_cast<std::size_t>(q) * cap + static_cast<std::size_t>(k)) * w];
      const auto j = static_cast<std::size_t>(row[0]);
      expert_backward_input(_s, p.w1[j], p.w2[j], &L.a[r * f], &L.gyrecv[r * h], &L.ga[r * f], &L.gusend[r * h]);
    }
}

template <class EC>
void MoeStage<EC>::backward_router(Chunk& c, Layer& L, int l, MutableBytes in_grad) {
  const int T = _s.tokens, h = _s.hidden, n = _s.experts(), E = _s.ep;
  const LayerParams& p = _params[static_cast<std::size_t>(l)];
  std::vector<double> gu = c.cur;                                 // the residual's part
  for (std::size_t i = 0; i < gu.size(); ++i) gu[i] += L.gus[i];  // the shared expert's
  std::size_t r = 0;
  for (int q = 0; q < E; ++q)
    for (int ts : L.sent[static_cast<std::size_t>(q)]) {
      for (int i = 0; i < h; ++i) gu[static_cast<std::size_t>(ts / 2 * h + i)] += L.gurecv[r * h + i];
      ++r;
    }
  L.glog.assign(static_cast<std::size_t>(T * n), 0.0);
  L.gz.assign(static_cast<std::size_t>(T * h), 0.0);
  for (int t = 0; t < T; ++t) {
    const auto o = static_cast<std::size_t>(t * h);
    dense_router_backward(_s, p, L.routed[static_cast<std::size_t>(t)], &L.prob[static_cast<std::size_t>(t * n)],
                          &L.t[o], &L.ggate[static_cast<std::size_t>(2 * t)], &gu[o],
                          &L.glog[static_cast<std::size_t>(t * n)], &L.gz[o], &c.cur[o]);
  }
  if (l == 0) {
    if (!in_grad.empty()) std::memcpy(in_grad.data(), c.cur.data(), in_grad.size());
    c.weight_owed = true;
  }
}

template <class EC>
void MoeStage<EC>::backward_weight(const StageContext& ctx) {
  Chunk& c = _chunks.at(ctx.chunk);
  if (!c.weight_owed)
    throw Error("MoeStage: backward_weight of chunk " + std::to_string(ctx.chunk) + " before its backward");
  const int T = _s.tokens, h = _s.hidden, f = _s.ffn, n = _s.experts(), E = _s.ep;
  const std::size_t cap = 2 * static_cast<std::size_t>(T), w = static_cast<std::size_t>(h + 1);
  for (int l = 0; l < _s.layers; ++l) {
    Layer& L = c.layers[static_cast<std::size_t>(l)];
    LayerParams& g = _grads[static_cast<std::size_t>(l)];
    for (int t = 0; t < T; ++t) {
      outer_add(&L.x[static_cast<std::size_t>(t * h)], &L.gz[static_cast<std::size_t>(t * h)], h, h, g.wd.data());
      outer_add(&L.u[static_cast<std::size_t>(t * h)], &L.glog[static_cast<std::size_t>(t * n)], h, n, g.wr.data());
      outer_add(&L.u[static_cast<std::size_t>(t * h)], &L.gas[static_cast<std::size_t>(t * f)], h, f, g.ws1.data());
      outer_add(&L.as[static_cast<std::size_t>(t * f)], &L.gout[static_cast<std::size_t>(t * h)], f, h, g.ws2.data());
    }
    std::size_t r = 0;
    for (int q = 0; q < E; ++q)
      for (int k = 0; k < L.rows_from[static_cast<std::size_t>(q)]; ++k, ++r) {
        const double* row = &L.drecv[(static_cast<std::size_t>(q) * cap + static_cast<std::size_t>(k)) * w];
        const auto j = static_cast<std::size_t>(row[0]);
        outer_add(row + 1, &L.ga[r * f], h, f, g.w1[j].data());
        outer_add(&L.a[r * f], &L.gyrecv[r * h], f, h, g.w2[j].data());
      }
  }
  _chunks.erase(ctx.chunk);
}

}  // namespace dualpipe::moe_demo
