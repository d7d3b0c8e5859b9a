// The consumer of the torch component (dualpipe::torch): a TorchStage over a libtorch module, checked
// against the Stage contract at compile time.
#include <torch/nn/modules/linear.h>
#include <dualpipe/torch.hpp>

#include <cstdio>

int main() {
  static_assert(dualpipe::check_stage<dualpipe::TorchStage>());
  dualpipe::TorchStageOptions options;
  options.activation_shape = {2, 3};
  const dualpipe::TorchStage stage(torch::nn::Linear(3, 3), options);
  std::printf("consumer_torch: a TorchStage over Linear(3, 3)\n");
  return 0;
}
