// A two-tensor stage whose chunks have their own row counts (runtime/tensors.hpp), and its sequential twin.
//
// Tensor 0 is the hidden state X (rows x H doubles), tensor 1 an auxiliary column A (rows doubles) that the
// next stage uses and that needs no gradient (as a mask):
//   Y = w X + A (broadcast over the row),   A' = A / 2 + 1,   loss = sum (Y - T)^2
// backward: dY from the next stage (or 2 (Y - T) loss_scale), dX = w dY, dw += sum dY * X (deferred).
// Per chunk state is sized at the maximum rows once, so a step allocates nothing after the first.
#pragma once

#include <array>
#include <cstddef>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/runtime/stage.hpp"

namespace testmodel {

struct RowStage {
  int stage = 0, H = 3;
  std::size_t max_rows = 5;
  double w = 1.0, dw = 0.0;
  std::array<dualpipe::TensorSpec, 2> specs{};
  struct Chunk {
    std::vector<double> x, dy;
    std::size_t rows = 0;
  };
  std::vector<Chunk> chunks;

  RowStage(int s, int chunk_count, int hidden, std::size_t rows)
      : stage(s), H(hidden), max_rows(rows), w(1.0 + 0.25 * s),
        chunks(static_cast<std::size_t>(chunk_count > 0 ? chunk_count : 1)) {
    specs[0] = {static_cast<std::size_t>(H) * sizeof(double), max_rows, true};
    specs[1] = {sizeof(double), max_rows, false};
    for (Chunk& c : chunks) {
      c.x.resize(max_rows * static_cast<std::size_t>(H));
      c.dy.resize(max_rows * static_cast<std::size_t>(H));
    }
  }
  [[nodiscard]] std::span<const dualpipe::TensorSpec> input_tensors() const noexcept { return specs; }
  [[nodiscard]] std::span<const dualpipe::TensorSpec> output_tensors() const noexcept { return specs; }

  static const double* d(dualpipe::ConstBytes b) { return reinterpret_cast<const double*>(b.data()); }
  static double* d(dualpipe::MutableBytes b) { return reinterpret_cast<double*>(b.data()); }
  Chunk& at(const dualpipe::StageContext& ctx) { return chunks.at(static_cast<std::size_t>(ctx.chunk)); }

  void forward(const dualpipe::StageContext& ctx, const dualpipe::ConstBytesList& in,
               const dualpipe::MutableBytesList& out) {
    if (in.size() != 2 || out.size() != 2) throw std::logic_error("RowStage: expected 2 tensors");
    const std::size_t rows = in[1].size() / sizeof(double);
    if (in[0].size() != rows * H * sizeof(double) || out[0].size() != in[0].size() || out[1].size() != in[1].size())
      throw std::logic_error("RowStage: tensor sizes disagree");
    Chunk& c = at(ctx);
    c.rows = rows;
    std::memcpy(c.x.data(), in[0].data(), in[0].size());
    for (std::size_t r = 0; r < rows; ++r) {
      for (int j = 0; j < H; ++j) d(out[0])[r * H + j] = w * d(in[0])[r * H + j] + d(in[1])[r];
      d(out[1])[r] = d(in[1])[r] / 2 + 1;
    }
  }
  double loss(const dualpipe::StageContext& ctx, const dualpipe::ConstBytesList& out, dualpipe::ConstBytes labels) {
    if (labels.size() != out[0].size()) throw std::logic_error("RowStage: labels do not match the output");
    Chunk& c = at(ctx);
    double sum = 0;
    for (std::size_t i = 0; i < out[0].size() / sizeof(double); ++i) {
      const double e = d(out[0])[i] - d(labels)[i];
      sum += e * e;
      c.dy[i] = 2 * e * ctx.loss_scale;
    }
    return sum;
  }
  void backward_input(const dualpipe::StageContext& ctx, const dualpipe::ConstBytesList& grad,
                      const dualpipe::MutableBytesList& in_grad) {
    Chunk& c = at(ctx);
    const std::size_t n = c.rows * static_cast<std::size_t>(H);
    if (!grad.empty()) {
      if (grad.size() != 2 || grad[0].size() != n * sizeof(double) || !grad[1].empty())
        throw std::logic_error("RowStage: bad output gradient list");
      std::memcpy(c.dy.data(), grad[0].data(), grad[0].size());
    }
    if (!in_grad.empty()) {
      if (in_grad.size() != 2 || in_grad[0].size() != n * sizeof(double) || !in_grad[1].empty())
        throw std::logic_error("RowStage: bad input gradient list");
      for (std::size_t i = 0; i < n; ++i) d(in_grad[0])[i] = w * c.dy[i];
    }
  }
  void backward_weight(const dualpipe::StageContext& ctx) {
    Chunk& c = at(ctx);
    for (std::size_t i = 0; i < c.rows * static_cast<std::size_t>(H); ++i) dw += c.dy[i] * c.x[i];
  }
};

/// One step of the RowStage model on one thread: chunk b has rows[b] rows; inputs are chunk after chunk
/// (X then A), labels rows x H per chunk. Returns the losses and each stage's dw.
struct RowReference {
  std::vector<double> losses, dw;
};
inline RowReference row_reference(int stages, int H, const std::vector<std::size_t>& rows,
                                  const std::vector<double>& inputs, const std::vector<double>& labels,
                                  double loss_scale) {
  RowReference ref;
  ref.dw.assign(static_cast<std::size_t>(stages), 0.0);
  std::size_t in_at = 0, label_at = 0;
  for (std::size_t n : rows) {
    std::vector<std::vector<double>> xs;
    std::vector<double> x(inputs.begin() + static_cast<long>(in_at), inputs.begin() + static_cast<long>(in_at + n * H));
    std::vector<double> a(inputs.begin() + static_cast<long>(in_at + n * H),
                          inputs.begin() + static_cast<long>(in_at + n * H + n));
    in_at += n * H + n;
    for (int s = 0; s < stages; ++s) {
      xs.push_back(x);
      const double w = 1.0 + 0.25 * s;
      for (std::size_t r = 0; r < n; ++r) {
        for (int j = 0; j < H; ++j) x[r * H + j] = w * x[r * H + j] + a[r];
        a[r] = a[r] / 2 + 1;
      }
    }
    double sum = 0;
    std::vector<double> dy(n * H);
    for (std::size_t i = 0; i < n * H; ++i) {
      const double e = x[i] - labels[label_at + i];
      sum += e * e;
      dy[i] = 2 * e * loss_scale;
    }
    label_at += n * H;
    ref.losses.push_back(sum);
    for (int s = stages - 1; s >= 0; --s) {
      const double w = 1.0 + 0.25 * s;
      for (std::size_t i = 0; i < n * H; ++i) ref.dw[static_cast<std::size_t>(s)] += dy[i] * xs[s][i];
      for (double& v : dy) v *= w;
    }
  }
  return ref;
}

}  // namespace testmodel
