// moe_demo/moe_model.hpp: the MoE block of dualpipe-moe-demo, in double precision, and the sequential run
// of the whole model on one thread that every pipelined run is checked against.
//
// One layer, for the T tokens of one ep rank's chunk (rows of h):
//   dense:    u = x + tanh(x Wd)                         (a dense layer in place of attention; Wd: h x h)
//   router:   p = softmax(u Wr) over N = E * X experts    (Wr: h x N); top-2 experts by p (lower index on a tie)
//   dispatch: each token's row goes to the ep rank of each of its two experts (expert j on ep rank j / X)
//   experts:  y = tanh(u W1_j) W2_j                       (W1: h x f, W2: f x h)
//   combine:  y comes back
//   output:   out = u + p_a y_a + p_b y_b + tanh(u Ws1) Ws2  (the gated experts, then a shared expert)
// The loss of a chunk is 0.5 |out - label|^2 / T at the last stage. Every ep rank holds the same Wd, Wr and
// shared expert (replicas: the sequential run's gradient of them is the sum over ep ranks) and X of the
// routed experts. (The shared expert also gives the first and last phases of a chunk compute to hide the
// other chunk's exchange behind, as DeepSeek-V3's does.)
// Every kernel here is shared by the stage and the sequential run, row by row in the same order, so the
// forward is bitwise the same both ways; the gradients differ only by the order of their sums.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dualpipe::moe_demo {

/// Sizes of the model.
struct MoeSpec {
  int hidden = 16;           ///< h
  int ffn = 32;              ///< f: each expert's inner size
  int tokens = 16;           ///< T: tokens per chunk per ep rank
  int experts_per_rank = 2;  ///< X
  int ep = 2;                ///< E: ep ranks
  int layers = 2;            ///< layers per stage
  int stages = 2;            ///< S
  int chunks = 8;            ///< C: chunks per pipeline step
  std::uint64_t seed = 233;
  [[nodiscard]] int experts() const noexcept { return ep * experts_per_rank; }
};

/// A deterministic value in [-scale, scale) from a seed and four indices (SplitMix64).
[[nodiscard]] inline double hashed(std::uint64_t seed, std::uint64_t a, std::uint64_t b, std::uint64_t c,
                                   std::uint64_t d, double scale) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (a + 1) + 0xBF58476D1CE4E5B9ull * (b + 7) +
                    0x94D049BB133111EBull * (c + 13) + 0x2545F4914F6CDD1Dull * (d + 29);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (static_cast<double>(z >> 11) * 0x1.0p-53 * 2.0 - 1.0) * scale;
}

/// The parameters of one layer of one stage: Wd and Wr, and the experts `first_expert` .. + count - 1.
struct LayerParams {
  std::vector<double> wd, wr;               // h x h, h x N (row-major)
  std::vector<double> ws1, ws2;             // the shared expert: h x f, f x h
  std::vector<std::vector<double>> w1, w2;  // per held expert: h x f, f x h
};

enum Tensor : std::uint64_t { t_wd, t_wr, t_w1, t_w2, t_input, t_label, t_ws1, t_ws2 };

/// The initial value of layer (stage, layer)'s tensors; `expert` = -1 for Wd and Wr.
[[nodiscard]] inline LayerParams init_layer(const MoeSpec& s, int stage, int layer, int first_expert, int count) {
  const auto h = static_cast<std::size_t>(s.hidden), f = static_cast<std::size_t>(s.ffn),
             n = static_cast<std::size_t>(s.experts());
  const auto L = static_cast<std::uint64_t>(stage * 1000 + layer);
  LayerParams p;
  p.wd.resize(h * h);
  for (std::size_t i = 0; i < p.wd.size(); ++i) p.wd[i] = hashed(s.seed, t_wd, L, 0, i, 0.6 / std::sqrt(double(h)));
  p.wr.resize(h * n);
  for (std::size_t i = 0; i < p.wr.size(); ++i) p.wr[i] = hashed(s.seed, t_wr, L, 0, i, 1.5 / std::sqrt(double(h)));
  p.ws1.resize(h * f);
  p.ws2.resize(f * h);
  for (std::size_t i = 0; i < p.ws1.size(); ++i) p.ws1[i] = hashed(s.seed, t_ws1, L, 0, i, 1.0 / std::sqrt(double(h)));
  for (std::size_t i = 0; i < p.ws2.size(); ++i) p.ws2[i] = hashed(s.seed, t_ws2, L, 0, i, 1.0 / std::sqrt(double(f)));
  for (int e = first_expert; e < first_expert + count; ++e) {
    std::vector<double> w1(h * f), w2(f * h);
    for (std::size_t i = 0; i < w1.size(); ++i)
      w1[i] = hashed(s.seed, t_w1, L, std::uint64_t(e), i, 1.0 / std::sqrt(double(h)));
    for (std::size_t i = 0; i < w2.size(); ++i)
      w2[i] = hashed(s.seed, t_w2, L, std::uint64_t(e), i, 1.0 / std::sqrt(double(f)));
    p.w1.push_back(std::move(w1));
    p.w2.push_back(std::move(w2));
  }
  return p;
}

/// Chunk c's input of ep rank e (T x h) and its label.
[[nodiscard]] inline std::vector<double> chunk_data(const MoeSpec& s, Tensor which, int e, int c) {
  std::vector<double> v(static_cast<std::size_t>(s.tokens * s.hidden));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = hashed(s.seed, which, std::uint64_t(e), std::uint64_t(c), i, 1.0);
  return v;
}

// ---- row kernels: y (n) = x (m) W (m x n), and the transposed product ----
inline void row_times(const double* x, const double* w, int m, int n, double* y) {
  for (int j = 0; j < n; ++j) y[j] = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) y[j] += x[i] * w[i * n + j];
}
inline void row_times_t(const double* g, const double* w, int m, int n, double* x) {  // x (m) = g (n) W^T
  for (int i = 0; i < m; ++i) {
    double a = 0;
    for (int j = 0; j < n; ++j) a += g[j] * w[i * n + j];
    x[i] = a;
  }
}
inline void outer_add(const double* x, const double* g, int m, int n, double* dw) {  // dW += x^T g
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) dw[i * n + j] += x[i] * g[j];
}

/// What the dense layer and router leave for one token.
struct Routed {
  int top[2];
  double gate[2];
};

/// Dense + router for one token: u (h) from x (h); p (N); the top two. `t` (h) gets tanh(x Wd).
inline Routed dense_router(const MoeSpec& s, const LayerParams& p, const double* x, double* u, double* t,
                           double* prob) {
  const int h = s.hidden, n = s.experts();
  row_times(x, p.wd.data(), h, h, t);
  for (int i = 0; i < h; ++i) {
    t[i] = std::tanh(t[i]);
    u[i] = x[i] + t[i];
  }
  row_times(u, p.wr.data(), h, n, prob);
  double mx = prob[0];
  for (int j = 1; j < n; ++j) mx = std::max(mx, prob[j]);
  double sum = 0;
  for (int j = 0; j < n; ++j) sum += (prob[j] = std::exp(prob[j] - mx));
  for (int j = 0; j < n; ++j) prob[j] /= sum;
  Routed r{{0, -1}, {0, 0}};
  for (int j = 1; j < n; ++j)
    if (prob[j] > prob[r.top[0]]) r.top[0] = j;
  for (int j = 0; j < n; ++j)
    if (j != r.top[0] && (r.top[1] < 0 || prob[j] > prob[r.top[1]])) r.top[1] = j;
  r.gate[0] = prob[r.top[0]];
  r.gate[1] = prob[r.top[1]];
  return r;
}

/// One expert on one row: a (f) = tanh(u W1); y (h) = a W2.
inline void expert_forward(const MoeSpec& s, const std::vector<double>& w1, const std::vector<double>& w2,
                           const double* u, double* a, double* y) {
  row_times(u, w1.data(), s.hidden, s.ffn, a);
  for (int i = 0; i < s.ffn; ++i) a[i] = std::tanh(a[i]);
  row_times(a, w2.data(), s.ffn, s.hidden, y);
}

/// The expert's backward on one row, input part: gu (h) from gy (h); ga (f) = the gradient of W1's output.
inline void expert_backward_input(const MoeSpec& s, const std::vector<double>& w1, const std::vector<double>& w2,
                                  const double* a, const double* gy, double* ga, double* gu) {
  row_times_t(gy, w2.data(), s.ffn, s.hidden, ga);
  for (int i = 0; i < s.ffn; ++i) ga[i] *= 1.0 - a[i] * a[i];
  row_times_t(ga, w1.data(), s.hidden, s.ffn, gu);
}

/// Router + dense backward for one token: from gu (h, the gradient of u including the experts' part) and
/// the gates' gradients, the gradient of x (h); glog (N) and gz (h) are kept for the weight gradients.
inline void dense_router_backward(const MoeSpec& s, const LayerParams& p, const Routed& r, const double* prob,
                                  const double* t, const double ggate[2], double* gu, double* glog, double* gz,
                                  double* gx) {
  const int h = s.hidden, n = s.experts();
  double dot = ggate[0] * prob[r.top[0]] + ggate[1] * prob[r.top[1]];
  for (int j = 0; j < n; ++j) {
    const double gp = j == r.top[0] ? ggate[0] : j == r.top[1] ? ggate[1] : 0.0;
    glog[j] = prob[j] * (gp - dot);
  }
  std::vector<double> tmp(static_cast<std::size_t>(h));
  row_times_t(glog, p.wr.data(), h, n, tmp.data());
  for (int i = 0; i < h; ++i) gu[i] += tmp[static_cast<std::size_t>(i)];
  for (int i = 0; i < h; ++i) gz[i] = gu[i] * (1.0 - t[i] * t[i]);
  row_times_t(gz, p.wd.data(), h, h, gx);
  for (int i = 0; i < h; ++i) gx[i] += gu[i];
}

}  // namespace dualpipe::moe_demo
