// A stage that computes nothing: only its sizes matter (size checks, benchmarks, allocation counts).
#pragma once

#include <cstddef>

#include "dualpipe/runtime/stage.hpp"

namespace testmodel {

struct ByteStage {
  std::size_t in = 64, out = 64;
  void forward(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::MutableBytes) noexcept {}
  double loss(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::ConstBytes) noexcept { return 1.0; }
  void backward_input(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::MutableBytes) noexcept {}
  void backward_weight(const dualpipe::StageContext&) noexcept {}
  [[nodiscard]] std::size_t input_bytes() const noexcept { return in; }
  [[nodiscard]] std::size_t output_bytes() const noexcept { return out; }
};

/// ByteStage that also says its label size (the pipeline then checks labels exactly).
struct LabelledByteStage : ByteStage {
  std::size_t labels = 16;
  [[nodiscard]] std::size_t label_bytes() const noexcept { return labels; }
};

}  // namespace testmodel
