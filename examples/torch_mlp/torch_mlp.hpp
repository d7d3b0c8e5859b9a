// The model of the reference's example, in libtorch: each stage is Linear(h, 4h) -> GELU -> Linear(4h, h)
// without bias, the loss is the mean squared error. Shared by the example (main.cpp) and the benchmark
// (bench/torch): the model, its sequential run, and the TorchStages of one rank.
#pragma once

#include <torch/nn/functional/loss.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "dualpipe/torch.hpp"

namespace torch_mlp {

/// One pipeline stage of the reference's example.
struct MlpStageImpl : torch::nn::Module {
  explicit MlpStageImpl(std::int64_t hidden)
      : linear1(
            register_module("linear1", torch::nn::Linear(torch::nn::LinearOptions(hidden, 4 * hidden).bias(false)))),
        linear2(
            register_module("linear2", torch::nn::Linear(torch::nn::LinearOptions(4 * hidden, hidden).bias(false)))) {}
  torch::Tensor forward(torch::Tensor x) { return linear2(torch::gelu(linear1(x))); }
  torch::nn::Linear linear1, linear2;
};
TORCH_MODULE(MlpStage);

/// The example's loss (the reference's criterion: F.mse_loss).
inline torch::Tensor criterion(const torch::Tensor& output, const torch::Tensor& labels) {
  return torch::mse_loss(output, labels);
}

/// Sizes of one chunk (micro-batch): micro_batch x seq_len x hidden, in float64.
struct Shape {
  std::int64_t micro_batch = 3;
  std::int64_t seq_len = 16;
  std::int64_t hidden = 32;
  [[nodiscard]] std::vector<std::int64_t> chunk() const { return {micro_batch, seq_len, hidden}; }
  [[nodiscard]] std::vector<std::int64_t> batch(int chunks) const { return {chunks * micro_batch, seq_len, hidden}; }
};

/// `stages` freshly initialised stages (libtorch's default init after manual_seed(seed)), in float64.
inline std::vector<MlpStage> make_model(int stages, std::int64_t hidden, std::uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<MlpStage> model;
  for (int s = 0; s < stages; ++s) {
    model.emplace_back(hidden);
    model.back()->to(torch::kFloat64);
  }
  return model;
}

/// A separate module with the same weights (the reference's load_state_dict into a rank's local modules).
inline MlpStage copy_of(const MlpStage& m) {
  MlpStage c(m->linear1->options.in_features());
  c->to(torch::kFloat64);
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < m->parameters().size(); ++i) c->parameters()[i].copy_(m->parameters()[i]);
  return c;
}

/// The bytes of a contiguous tensor.
inline dualpipe::ConstBytes bytes_of(const torch::Tensor& t) {
  return {static_cast<const std::byte*>(t.data_ptr()), t.nbytes()};
}

/// What the sequential run of one step gives: each chunk's loss and the model's output for the whole batch.
struct SequentialStep {
  std::vector<double> losses;
  torch::Tensor outputs;
};

/// The reference's ref_step: chunk after chunk, the whole model forward, the loss, and (when `train`) its
/// backward, accumulating into the model's .grad.
inline SequentialStep sequential_step(std::vector<MlpStage>& model, const torch::Tensor& x, const torch::Tensor& l,
                                      int chunks, bool train) {
  torch::AutoGradMode grad_mode(train);
  SequentialStep out;
  std::vector<torch::Tensor> ys;
  auto xs = x.chunk(chunks), ls = l.chunk(chunks);
  for (int c = 0; c < chunks; ++c) {
    torch::Tensor y = xs[c];
    for (MlpStage& stage : model) y = stage(y);
    torch::Tensor loss = criterion(y, ls[c]);
    if (train) loss.backward();
    out.losses.push_back(loss.item<double>());
    ys.push_back(y.detach());
  }
  out.outputs = torch::cat(ys, 0);
  return out;
}

/// The TorchStages of one rank under `Schedule`: each module computes a copy of its model stage.
template <class Schedule>
struct RankStages {
  static constexpr int modules = Schedule::modules_per_rank;
  std::vector<MlpStage> module_copies;  ///< [module]: this rank's copy of the stage the module computes
  std::vector<int> stage_of;            ///< [module]: that stage's index in the model
  std::vector<std::unique_ptr<dualpipe::TorchStage>> stages;

  RankStages(const std::vector<MlpStage>& model, const Shape& shape, int ranks, int chunks, int rank) {
    dualpipe::TorchStageOptions options;
    options.activation_shape = shape.chunk();  // the reference's set_p2p_tensor_shapes
    options.dtype = torch::kFloat64;           // and set_p2p_tensor_dtype
    for (int m = 0; m < modules; ++m) {
      stage_of.push_back(Schedule::placement(ranks, chunks, rank, m).stage);
      module_copies.push_back(copy_of(model[stage_of[m]]));
      stages.push_back(std::make_unique<dualpipe::TorchStage>(module_copies[m], options, criterion));
    }
  }
  /// What Pipeline's constructor takes.
  [[nodiscard]] std::array<dualpipe::TorchStage*, modules> pointers() const {
    std::array<dualpipe::TorchStage*, modules> p{};
    for (int m = 0; m < modules; ++m) p[m] = stages[m].get();
    return p;
  }
};

// ---- --variable-lengths: each chunk its own sequence length, two tensors per boundary ----

/// A stage over (x, a), x of shape micro_batch x seq x hidden and a (no gradient, like a mask or positions)
/// of micro_batch x seq: the MLP of x + a (a broadcast over hidden), and a / 2 + 1/4 handed on.
inline std::vector<torch::Tensor> aux_forward(MlpStageImpl& m, const std::vector<torch::Tensor>& in) {
  return {m.forward(in[0] + in[1].unsqueeze(-1)), in[1] / 2 + 0.25};
}

/// The tensors of a --variable-lengths stage: x and a, their sequence dimension (1) variable up to seq_len.
inline dualpipe::TorchTensorsOptions aux_options(const Shape& shape) {
  dualpipe::TorchTensorsOptions o;
  const dualpipe::TorchTensor x{shape.chunk(), torch::kFloat64, 1, true};
  const dualpipe::TorchTensor a{{shape.micro_batch, shape.seq_len}, torch::kFloat64, 1, false};
  o.inputs = {x, a};
  o.outputs = {x, a};
  o.labels = x;
  return o;
}

/// One chunk of a --variable-lengths batch: its sequence length, inputs x and a, labels.
struct VarChunk {
  std::int64_t seq = 1;
  torch::Tensor x, a, labels;
};

/// The sequential run of a --variable-lengths step: chunk after chunk, every stage on (x, a), the loss and
/// (when `train`) its backward. Returns each chunk's loss and output x.
inline SequentialStep sequential_variable_step(std::vector<MlpStage>& model, const std::vector<VarChunk>& batch,
                                               bool train) {
  torch::AutoGradMode grad_mode(train);
  SequentialStep out;
  std::vector<torch::Tensor> ys;
  for (const VarChunk& c : batch) {
    std::vector<torch::Tensor> xa{c.x, c.a};
    for (MlpStage& stage : model) xa = aux_forward(*stage, xa);
    torch::Tensor loss = criterion(xa[0], c.labels);
    if (train) loss.backward();
    out.losses.push_back(loss.item<double>());
    ys.push_back(xa[0].detach().contiguous());
  }
  out.outputs = torch::cat(ys, 1);  // unused as a whole: chunk outputs differ in their sequence length
  return out;
}

/// The TorchTensorsStages of one rank under `Schedule` (--variable-lengths).
template <class Schedule>
struct VarRankStages {
  static constexpr int modules = Schedule::modules_per_rank;
  std::vector<MlpStage> module_copies;
  std::vector<int> stage_of;
  std::vector<std::unique_ptr<dualpipe::TorchTensorsStage>> stages;

  VarRankStages(const std::vector<MlpStage>& model, const Shape& shape, int ranks, int chunks, int rank) {
    for (int m = 0; m < modules; ++m) {
      stage_of.push_back(Schedule::placement(ranks, chunks, rank, m).stage);
      module_copies.push_back(copy_of(model[stage_of[m]]));
      MlpStageImpl* impl = module_copies[m].get();
      stages.push_back(std::make_unique<dualpipe::TorchTensorsStage>(
          module_copies[m].ptr(), [impl](const std::vector<torch::Tensor>& in) { return aux_forward(*impl, in); },
          aux_options(shape),
          [](const std::vector<torch::Tensor>& out, const torch::Tensor& labels) {
            return criterion(out[0], labels);
          }));
    }
  }
  [[nodiscard]] std::array<dualpipe::TorchTensorsStage*, modules> pointers() const {
    std::array<dualpipe::TorchTensorsStage*, modules> p{};
    for (int m = 0; m < modules; ++m) p[m] = stages[m].get();
    return p;
  }
};

}  // namespace torch_mlp
