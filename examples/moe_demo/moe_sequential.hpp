// moe_demo/moe_sequential.hpp: the whole MoE model on one thread, no pipeline and no all-to-all: every ep
// rank's chunks through every stage and layer, every expert at hand. What the pipelined runs are checked
// against (losses and every layer's and expert's gradient).
//
// The gradient layout (layer_offsets): for each stage, each layer: Wd (h x h), Wr (h x N), the shared
// expert's Ws1 (h x f) and Ws2 (f x h), then W1 of experts 0..N-1, then W2 of experts 0..N-1. Wd's and Wr's gradient is the sum over ep ranks (each ep rank
// holds a replica and sees its own tokens), an expert's is its own.
#pragma once

#include <cstddef>
#include <vector>

#include "moe_model.hpp"

namespace dualpipe::moe_demo {

/// Values of one layer's gradients in the canonical layout.
[[nodiscard]] inline std::size_t layer_values(const MoeSpec& s) {
  const auto h = static_cast<std::size_t>(s.hidden), f = static_cast<std::size_t>(s.ffn),
             n = static_cast<std::size_t>(s.experts());
  return h * h + h * n + 2 * h * f + 2 * n * h * f;
}

/// Where each tensor of layer (stage, layer) starts in the canonical layout.
struct LayerOffsets {
  std::size_t wd, wr, ws1, ws2, w1, w2;  // w1 / w2: of expert 0; expert j at + j * h * f
};
[[nodiscard]] inline LayerOffsets layer_offsets(const MoeSpec& s, int stage, int layer) {
  const auto h = static_cast<std::size_t>(s.hidden), f = static_cast<std::size_t>(s.ffn),
             n = static_cast<std::size_t>(s.experts());
  const std::size_t base = static_cast<std::size_t>(stage * s.layers + layer) * layer_values(s);
  const std::size_t w1 = base + h * h + h * n + 2 * h * f;
  return {base, base + h * h, base + h * h + h * n, base + h * h + h * n + h * f, w1, w1 + n * h * f};
}

/// The order in which a token's two expert outputs are added: by the ep rank of the expert, then the slot
/// (the order in which the stage receives them), so that the forward is bitwise the stage's.
[[nodiscard]] inline std::array<int, 2> slot_order(const MoeSpec& s, const Routed& r) {
  return r.top[1] / s.experts_per_rank < r.top[0] / s.experts_per_rank ? std::array<int, 2>{1, 0}
                                                                       : std::array<int, 2>{0, 1};
}

/// The sequential run's results.
struct SequentialResult {
  std::vector<double> losses;  ///< [ep * C + chunk]
  std::vector<double> grads;   ///< canonical layout
};

/// Runs every chunk of every ep rank through the whole model (spec.stages stages) and back.
[[nodiscard]] inline SequentialResult run_sequential(const MoeSpec& s) {
  const int T = s.tokens, h = s.hidden, f = s.ffn, n = s.experts(), E = s.ep, S = s.stages, Ls = s.layers;
  const auto uh = static_cast<std::size_t>(h), uf = static_cast<std::size_t>(f), un = static_cast<std::size_t>(n);
  std::vector<LayerParams> params;  // [stage * layers + layer], every expert
  for (int st = 0; st < S; ++st)
    for (int l = 0; l < Ls; ++l) params.push_back(init_layer(s, st, l, 0, n));
  SequentialResult res;
  res.losses.assign(static_cast<std::size_t>(E * s.chunks), 0.0);
  res.grads.assign(static_cast<std::size_t>(S * Ls) * layer_values(s), 0.0);
  struct Tok {  // one token of one layer
    std::vector<double> x, t, u, prob, a[2], y[2], as, ys;
    Routed r;
  };
  for (int c = 0; c < s.chunks; ++c)
    for (int e = 0; e < E; ++e) {
      std::vector<double> cur = chunk_data(s, t_input, e, c);
      std::vector<std::vector<Tok>> saved(static_cast<std::size_t>(S * Ls),
                                          std::vector<Tok>(static_cast<std::size_t>(T)));
      for (int sl = 0; sl < S * Ls; ++sl) {
        const LayerParams& p = params[static_cast<std::size_t>(sl)];
        for (int t = 0; t < T; ++t) {
          Tok& k = saved[static_cast<std::size_t>(sl)][static_cast<std::size_t>(t)];
          k.x.assign(cur.begin() + t * h, cur.begin() + (t + 1) * h);
          k.t.assign(uh, 0.0);
          k.u.assign(uh, 0.0);
          k.prob.assign(un, 0.0);
          k.r = dense_router(s, p, k.x.data(), k.u.data(), k.t.data(), k.prob.data());
          for (int q = 0; q < 2; ++q) {
            k.a[q].assign(uf, 0.0);
            k.y[q].assign(uh, 0.0);
            const auto j = static_cast<std::size_t>(k.r.top[q]);
            expert_forward(s, p.w1[j], p.w2[j], k.u.data(), k.a[q].data(), k.y[q].data());
          }
          for (int i = 0; i < h; ++i) cur[static_cast<std::size_t>(t * h + i)] = k.u[static_cast<std::size_t>(i)];
          for (int q : slot_order(s, k.r))
            for (int i = 0; i < h; ++i)
              cur[static_cast<std::size_t>(t * h + i)] += k.r.gate[q] * k.y[q][static_cast<std::size_t>(i)];
          k.as.assign(uf, 0.0);
          k.ys.assign(uh, 0.0);
          expert_forward(s, p.ws1, p.ws2, k.u.data(), k.as.data(), k.ys.data());
          for (int i = 0; i < h; ++i) cur[static_cast<std::size_t>(t * h + i)] += k.ys[static_cast<std::size_t>(i)];
        }
      }
      const std::vector<double> label = chunk_data(s, t_label, e, c);
      double loss = 0;
      std::vector<double> g(cur.size());
      for (std::size_t i = 0; i < cur.size(); ++i) {
        loss += 0.5 * (cur[i] - label[i]) * (cur[i] - label[i]);
        g[i] = (cur[i] - label[i]) / T;
      }
      res.losses[static_cast<std::size_t>(e * s.chunks + c)] = loss / T;
      for (int sl = S * Ls - 1; sl >= 0; --sl) {
        const LayerParams& p = params[static_cast<std::size_t>(sl)];
        const LayerOffsets o = layer_offsets(s, sl / Ls, sl % Ls);
        std::vector<double> ga(uf), gu_row(uh), gu(uh), glog(un), gz(uh), gx(uh), gy(uh);
        for (int t = 0; t < T; ++t) {
          Tok& k = saved[static_cast<std::size_t>(sl)][static_cast<std::size_t>(t)];
          const double* go = &g[static_cast<std::size_t>(t * h)];
          double ggate[2];
          for (int i = 0; i < h; ++i) gu[static_cast<std::size_t>(i)] = go[i];
          expert_backward_input(s, p.ws1, p.ws2, k.as.data(), go, ga.data(), gu_row.data());
          outer_add(k.u.data(), ga.data(), h, f, &res.grads[o.ws1]);
          outer_add(k.as.data(), go, f, h, &res.grads[o.ws2]);
          for (int i = 0; i < h; ++i) gu[static_cast<std::size_t>(i)] += gu_row[static_cast<std::size_t>(i)];
          for (int q = 0; q < 2; ++q) {
            const auto j = static_cast<std::size_t>(k.r.top[q]);
            double dot = 0;
            for (int i = 0; i < h; ++i) {
              dot += go[i] * k.y[q][static_cast<std::size_t>(i)];
              gy[static_cast<std::size_t>(i)] = k.r.gate[q] * go[i];
            }
            ggate[q] = dot;
            expert_backward_input(s, p.w1[j], p.w2[j], k.a[q].data(), gy.data(), ga.data(), gu_row.data());
            outer_add(k.u.data(), ga.data(), h, f, &res.grads[o.w1 + j * uh * uf]);
            outer_add(k.a[q].data(), gy.data(), f, h, &res.grads[o.w2 + j * uh * uf]);
            for (int i = 0; i < h; ++i) gu[static_cast<std::size_t>(i)] += gu_row[static_cast<std::size_t>(i)];
          }
          dense_router_backward(s, p, k.r, k.prob.data(), k.t.data(), ggate, gu.data(), glog.data(), gz.data(),
                                gx.data());
          outer_add(k.x.data(), gz.data(), h, h, &res.grads[o.wd]);
          outer_add(k.u.data(), glog.data(), h, n, &res.grads[o.wr]);
          for (int i = 0; i < h; ++i) g[static_cast<std::size_t>(t * h + i)] = gx[static_cast<std::size_t>(i)];
        }
      }
    }
  return res;
}

}  // namespace dualpipe::moe_demo
