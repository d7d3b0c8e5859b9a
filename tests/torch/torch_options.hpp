// tests/torch/torch_options.hpp: the activation shape and the stage options the libtorch tests share.
#pragma once

#include <cstdint>
#include <vector>

#include "dualpipe/torch.hpp"

namespace torch_test {

/// Hidden width of the tests' small modules.
constexpr int H = 8;
/// One chunk's activation: 3 x 5 rows of H.
inline const std::vector<std::int64_t> act_shape{3, 5, H};

/// Double precision, so that pipelines and sequential runs can be compared to 1e-13.
inline dualpipe::TorchStageOptions double_options() {
  dualpipe::TorchStageOptions o;
  o.activation_shape = act_shape;
  o.dtype = torch::kDouble;
  return o;
}

}  // namespace torch_test
