// TorchStage inside a Pipeline: a module that breaks its contract fails the step on every rank with the
// adapter's message, and Pipeline::reset() (which calls TorchStage::reset()) lets the next step succeed.
// (The example's checks against a sequential libtorch run are the tests torch_mlp_*.)
#include <torch/nn/modules/container/functional.h>
#include <torch/nn/modules/linear.h>

#include <array>
#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "dualpipe/comm/inprocess.hpp"
#include "dualpipe/dualpipe.hpp"
#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/runtime/run_ranks.hpp"
#include "dualpipe/torch.hpp"

// Last: glog (through libtorch) defines its own CHECK, which would otherwise replace doctest's.
#include <doctest/doctest.h>

using namespace dualpipe;

static_assert(StageWithFusedBackward<TorchStage>);
static_assert(StageWithReset<TorchStage>, "Pipeline::reset() must reach TorchStage::reset()");
static_assert(StageWithLabelBytes<TorchStage>, "the pipeline checks the labels' size against label_bytes()");

TEST_CASE("Torch.Pipeline.BrokenModuleFailsEveryRankThenResetRecovers" * doctest::timeout(120)) {
  constexpr int P = 2, C = 4, H = 8;
  const std::vector<std::int64_t> chunk{2, 3, H};
  TorchStageOptions options;
  options.activation_shape = chunk;
  options.dtype = torch::kDouble;
  auto mse = [](const torch::Tensor& y, const torch::Tensor& l) { return torch::mse_loss(y, l); };

  // DualPipeV: 4 stages; stage 1 (rank 1, module 0) flattens its output while `broken` is set.
  auto broken = std::make_shared<std::atomic<bool>>(true);
  torch::manual_seed(5);
  std::vector<std::vector<std::unique_ptr<TorchStage>>> stages(P);
  for (int r = 0; r < P; ++r)
    for (int m = 0; m < 2; ++m) {
      const int s = DualPipeV::placement(P, C, r, m).stage;
      if (s == 1) {
        stages[r].push_back(std::make_unique<TorchStage>(torch::nn::Functional([broken](torch::Tensor x) {
                                                           return *broken ? x.reshape({6, H}) : x * 0.5;
                                                         }),
                                                         options, mse));
      } else {
        torch::nn::Linear lin(torch::nn::LinearOptions(H, H).bias(false));
        lin->to(torch::kDouble);
        stages[r].push_back(std::make_unique<TorchStage>(lin, options, mse));
      }
    }
  torch::Tensor x = torch::randn({C * 2, 3, H}, torch::kDouble), l = torch::randn({C * 2, 3, H}, torch::kDouble);
  ConstBytes xb(static_cast<const std::byte*>(x.data_ptr()), x.nbytes());
  ConstBytes lb(static_cast<const std::byte*>(l.data_ptr()), l.nbytes());

  InProcessWorld world(P);
  using Pipe = Pipeline<DualPipeV, InProcessCommunicator, TorchStage>;
  std::vector<std::unique_ptr<Pipe>> pipes;
  for (int r = 0; r < P; ++r)
    pipes.push_back(std::make_unique<Pipe>(world.communicator(r),
                                           std::array<TorchStage*, 2>{stages[r][0].get(), stages[r][1].get()}));
  std::vector<std::string> failures(P);
  std::vector<std::size_t> kept_after_failure(P), kept_after_reset(P);
  auto kept = [&](int r) { return stages[r][0]->chunks_in_flight() + stages[r][1]->chunks_in_flight(); };
  run_ranks(P, [&](int r) {
    try {
      (void)pipes[r]->step(C, xb, lb);
    } catch (const StepError& e) {
      failures[r] = e.what();
    }
    kept_after_failure[r] = kept(r);
    pipes[r]->reset();  // collective: every rank; calls the stages' reset()
    kept_after_reset[r] = kept(r);
  });
  CHECK(kept_after_failure[0] > 0);  // stage 0 forwarded chunk 0 before stage 1 failed
  CHECK(kept_after_reset[0] == 0);
  CHECK(kept_after_reset[1] == 0);
  *broken = false;
  std::vector<StepResult> results(P);
  run_ranks(P, [&](int r) { results[r] = pipes[r]->step(C, xb, lb); });

  for (int r = 0; r < P; ++r) {
    INFO("rank " << r << ": " << failures[r]);
    CHECK(failures[r].find("rank 1, module 0") != std::string::npos);
    CHECK(failures[r].find("shape [6, 8]") != std::string::npos);
    CHECK(failures[r].find("expected shape [2, 3, 8]") != std::string::npos);
  }
  // After reset: a full step, every chunk's loss once, and no graph left behind.
  int losses = 0;
  for (const StepResult& res : results)
    for (double v : res.losses) losses += std::isnan(v) ? 0 : 1;
  CHECK(losses == C);
  for (const auto& rank : stages)
    for (const auto& s : rank) CHECK(s->chunks_in_flight() == 0);
}
