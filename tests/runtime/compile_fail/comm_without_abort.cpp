// Compiled by check_diagnostic.cmake, not built: a Pipeline over a communicator that lacks abort() must
// fail with check_communicator's message in plain words. With -DDUALPIPE_GOOD_STAGE the communicator is
// complete and the file must compile (so that the failure is the one intended, not a broken include).
#include <chrono>
#include <cstddef>

#include "dualpipe/runtime/pipeline.hpp"
#include "dualpipe/schedule/dualpipev.hpp"

struct Stage {
  void forward(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::MutableBytes) {}
  double loss(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::ConstBytes) { return 0; }
  void backward_input(const dualpipe::StageContext&, dualpipe::ConstBytes, dualpipe::MutableBytes) {}
  void backward_weight(const dualpipe::StageContext&) {}
  [[nodiscard]] std::size_t input_bytes() const { return 8; }
  [[nodiscard]] std::size_t output_bytes() const { return 8; }
};

struct NoAbortComm {
  struct Group {
    void wait(std::chrono::milliseconds) {}
  };
  [[nodiscard]] int rank() const { return 0; }
  [[nodiscard]] int size() const { return 1; }
  void post_send(int, dualpipe::MessageTag, dualpipe::ConstBytes) {}
  void post_recv(int, dualpipe::MessageTag, dualpipe::MutableBytes) {}
  Group commit() { return {}; }
#ifdef DUALPIPE_GOOD_STAGE
  void abort(const dualpipe::FailureOrigin&) {}
#endif
};

int main() {
  NoAbortComm comm;
  Stage a, b;
  dualpipe::Pipeline<dualpipe::DualPipeV, NoAbortComm, Stage> pipe(comm, {&a, &b});
  return pipe.rank();
}
