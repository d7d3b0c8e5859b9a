// Compiled by check_diagnostic.cmake, not built: a Pipeline over a Stage that lacks backward_weight must
// fail with check_stage's message in plain words. With -DDUALPIPE_GOOD_STAGE the stage is complete and the
// file must compile (so that the failure is the one intended, not a broken include).
#include <cstddef>

#include "dualpipe/comm/null.hpp"
#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

struct NoWeightStage {
  void forward(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::MutableBytes) {}
  double loss(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::ConstBytes) { return 0; }
  void backward_input(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::MutableBytes) {}
#ifdef DUALPIPE_GOOD_STAGE
  void backward_weight(const dualpipe::StageContext&) {}
#endif
  [[nodiscard]] std::size_t input_bytes() const { return 8; }
  [[nodiscard]] std::size_t output_bytes() const { return 8; }
};

int main() {
  dualpipe::NullCommunicator comm(0, 2);
  NoWeightStage a, b;
  dualpipe::Pipeline<dualpipe::DualPipe, dualpipe::NullCommunicator, NoWeightStage> pipe(comm, {&a, &b});
  return pipe.rank();
}
