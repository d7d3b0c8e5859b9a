// mpi_failure_probe: a ring of ranks exchanging messages, one of which fails on purpose, to show that the
// whole MPI job ends (non-zero) instead of hanging. Run by tests/mpi/expect_failure.cmake under mpirun.
//
//   mpi_failure_probe --throw R     rank R's "stage" throws at round 10: it aborts the job with the origin
//   mpi_failure_probe --kill R      rank R raises SIGKILL at round 10: the others time out (or mpirun tears
//                                   the job down first)
//   mpi_failure_probe --escape R    rank R's exception leaves the MpiSession: the session aborts the job
//   mpi_failure_probe --silent R    rank R stops sending at round 10 and waits forever on a barrier-free
//                                   sleep: the others time out and abort
//   mpi_failure_probe --pipeline-throw R | --pipeline-kill R | --pipeline-silent R
//                                   the same three failures inside a stage of a DualPipe Pipeline over MPI:
//                                   the runtime's own failure handling (abort on a stage error, on a timeout)
//   [--timeout-ms T]                bound on every wait (default 3000)
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/dualpipe.hpp"
#include "dualpipe/mpi.hpp"

using namespace dualpipe;

namespace {

void ring(MpiCommunicator& comm, const std::string& mode, int victim, std::chrono::milliseconds timeout) {
  const int me = comm.rank();
  const int next = (me + 1) % comm.size();
  const int prev = (me + comm.size() - 1) % comm.size();
  std::vector<std::byte> out(64), in(64);
  for (int round = 0; round < 40; ++round) {
    const MessageTag tag{0, round, Payload::activation};
    if (round == 10 && me == victim) {
      if (mode == "kill") std::raise(SIGKILL);
      if (mode == "silent") std::this_thread::sleep_for(std::chrono::hours(1));
      if (mode == "escape") throw std::runtime_error("injected failure that leaves the session");
      if (mode == "throw") {
        try {
          throw std::runtime_error("injected stage failure");
        } catch (const std::exception& e) {
          comm.abort(FailureOrigin{me, 0, round, "F0." + std::to_string(round), e.what()});
        }
      }
    }
    comm.post_recv(prev, tag, in);
    comm.post_send(next, tag, out);
    try {
      comm.commit().wait(timeout);
    } catch (const TimeoutError& e) {
      // What a pipeline does with a wait that never finishes: end the job, naming where it was stuck.
      comm.abort(FailureOrigin{me, 0, round, "|", e.what()});
    }
  }
}

/// A stage that does nothing, except fail (throw, die or hang) in the forward of one chunk on one rank.
struct FailingStage {
  std::string mode;  // "throw", "kill", "silent" or "" (never fails)
  void forward(const StageContext& ctx, ConstBytes, MutableBytes) {
    if (mode.empty() || ctx.chunk != 1) return;
    if (mode == "kill") std::raise(SIGKILL);
    if (mode == "silent") std::this_thread::sleep_for(std::chrono::hours(1));
    throw std::runtime_error("injected stage failure");
  }
  double loss(const StageContext&, ConstBytes, ConstBytes) { return 0; }
  void backward_input(const StageContext&, ConstBytes, MutableBytes) {}
  void backward_weight(const StageContext&) {}
  [[nodiscard]] std::size_t input_bytes() const { return 16; }
  [[nodiscard]] std::size_t output_bytes() const { return 16; }
};

void pipeline(MpiCommunicator& comm, const std::string& mode, int victim, std::chrono::milliseconds timeout) {
  const int chunks = 2 * comm.size();
  FailingStage s0, s1;
  if (comm.rank() == victim) s0.mode = mode;
  PipelineOptions options;
  options.timeout = timeout;
  Pipeline<DualPipe, MpiCommunicator, FailingStage> pipe(comm, {&s0, &s1}, options);
  const std::vector<std::byte> in(static_cast<std::size_t>(chunks) * 16), labels(static_cast<std::size_t>(chunks));
  for (int step = 0; step < 3; ++step) (void)pipe.step(chunks, in, labels);
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode;
  int victim = -1;
  std::chrono::milliseconds timeout{3000};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--timeout-ms") {
      timeout = std::chrono::milliseconds(std::atoi(argv[i + 1]));
    } else {
      mode = flag.substr(2);
      victim = std::atoi(argv[i + 1]);
    }
  }
  const bool in_pipeline = mode.starts_with("pipeline-");
  if (in_pipeline) mode = mode.substr(9);
  if (mode != "throw" && mode != "kill" && mode != "escape" && mode != "silent") {
    std::fprintf(stderr,
                 "usage: mpi_failure_probe --[pipeline-]throw|kill|silent RANK | --escape RANK "
                 "[--timeout-ms T]\n");
    return 2;
  }
  try {
    MpiSession session(argc, argv);
    MpiCommunicator comm;
    if (in_pipeline) {
      pipeline(comm, mode, victim, timeout);
    } else {
      ring(comm, mode, victim, timeout);
    }
    comm.barrier();
  } catch (const std::exception& e) {
    // Only reached after the session has aborted the job; kept so that the exception is not unhandled.
    std::fprintf(stderr, "mpi_failure_probe: %s\n", e.what());
    return 1;
  }
  return 0;
}
