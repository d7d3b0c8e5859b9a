// torch_mlp/team.hpp: where the example's pipeline ranks run. A team builds the ranks' stages and pipelines,
// runs a step on every rank, and hands the process that checks (checks()) every rank's StepResult and
// module gradients; main.cpp's checks see the same numbers whichever team ran them. InProcessTeam: P rank
// threads in this process (--comm inproc); MpiTeam (mpi_team.hpp): one rank per MPI process (--comm mpi).
#pragma once

#include <memory>
#include <vector>

#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/runtime/run_ranks.hpp"
#include "torch_mlp.hpp"

namespace torch_mlp {

/// One rank's module copies after a step: the model stage each computes, its parameters' gradients (zeros
/// for one without a gradient: adding them changes no bit of a sum) and whether every stage let go of its
/// chunks' graphs.
struct RankGrads {
  std::vector<int> stage_of;
  std::vector<std::vector<torch::Tensor>> grads;  ///< [module][parameter]
  bool released = true;
};

/// The RankGrads of one rank's stages (RankStages or VarRankStages).
template <class RankT>
RankGrads grads_of(const RankT& rank) {
  RankGrads g;
  g.stage_of = rank.stage_of;
  for (const MlpStage& m : rank.module_copies) {
    g.grads.emplace_back();
    for (const torch::Tensor& p : m->parameters())
      g.grads.back().push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
  }
  for (const auto& stage : rank.stages) g.released = g.released && stage->chunks_in_flight() == 0;
  return g;
}

/// Every pipeline rank on a thread of this process (InProcessWorld).
template <class Schedule, class RankT, class Stage>
class InProcessTeam {
public:
  InProcessTeam(const std::vector<MlpStage>& model, const Shape& shape, int ranks, int chunks) : _world(ranks) {
    for (int r = 0; r < ranks; ++r) _ranks.push_back(std::make_unique<RankT>(model, shape, ranks, chunks, r));
    for (int r = 0; r < ranks; ++r)
      _pipes.push_back(std::make_unique<Pipe>(_world.communicator(r), _ranks[r]->pointers()));
  }
  /// Whether this process checks and prints (always: it holds every rank).
  [[nodiscard]] bool checks() const { return true; }
  /// Zeroes the gradients of this process's module copies.
  void zero_grad() {
    for (const auto& rank : _ranks)
      for (MlpStage& m : rank->module_copies) m->zero_grad();
  }
  /// A training step (or, with train false, a forward-only one) on every rank; every rank's result.
  std::vector<dualpipe::StepResult> run(bool train, int chunks, dualpipe::ConstBytes inputs,
                                        dualpipe::ConstBytes labels, const dualpipe::StepOptions& o) {
    std::vector<dualpipe::StepResult> results(_pipes.size());
    dualpipe::run_ranks(static_cast<int>(_pipes.size()), [&](int r) {
      results[r] = train ? _pipes[r]->step(chunks, inputs, labels, o) : _pipes[r]->eval(chunks, inputs, labels, o);
    });
    return results;
  }
  /// Every rank's module gradients, rank order.
  [[nodiscard]] std::vector<RankGrads> grads() const {
    std::vector<RankGrads> g;
    for (const auto& rank : _ranks) g.push_back(grads_of(*rank));
    return g;
  }
  /// Bytes of one chunk's output (fixed-length stages).
  [[nodiscard]] std::size_t output_bytes() const { return _ranks[0]->stages[0]->output_bytes(); }

private:
  using Pipe = dualpipe::Pipeline<Schedule, dualpipe::InProcessCommunicator, Stage>;
  dualpipe::InProcessWorld _world;
  std::vector<std::unique_ptr<RankT>> _ranks;
  std::vector<std::unique_ptr<Pipe>> _pipes;
};

}  // namespace torch_mlp
