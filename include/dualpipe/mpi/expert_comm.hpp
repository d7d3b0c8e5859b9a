// dualpipe/mpi/expert_comm.hpp: the ExpertComm over MPI: a non-blocking all-to-all (MPI_Ialltoallv) on the
// expert group's communicator (an MpiGrid's ep communicator), one rank per process.
//
//   MpiGrid grid(ProcessGrid(world, {.pp = P, .ep = E}, "ep,pp"));
//   MpiExpertComm experts(grid.native(GridDim::ep));       // its own duplicate (collective over the group)
//   auto h = experts.start_all_to_all(tag, buffers);      // MPI_Ialltoallv; returns at once
//   ...                                                    // compute meanwhile
//   h.wait(timeout);                                       // polls MPI_Test: TimeoutError after `timeout`
//
// MPI_Ialltoallv is an ordered collective: every rank of the group must start the exchanges in the same
// order (the executor's phase interleaving is deterministic and the same on every rank of a group, so
// it is), and the counts must agree (my send_counts[q] = q's recv_counts[me]; MPI reports a disagreement
// as an error, which is thrown). Byte counts and displacements must fit an int (below 2 GiB).
// abort(origin) prints where the failure started on stderr and ends the whole job (MPI_Abort), as
// MpiCommunicator::abort does: every process exits non-zero. A handle dropped unwaited (a failed step) leaves
// its request to MPI: a collective cannot be cancelled; the job ends anyway.
#pragma once

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/comm/expert_comm.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/mpi/communicator.hpp"
#include "dualpipe/mpi/session.hpp"

namespace dualpipe {

/// Models ExpertComm over MPI (see the file comment). Used by one thread at a time.
class MpiExpertComm {
public:
  /// What start_all_to_all returns.
  class Handle {
  public:
    /// Polls until the exchange is done (recv filled, send reusable); TimeoutError after `timeout`.
    void wait(std::chrono::milliseconds timeout) {
      if (!_state) throw Error("expert all-to-all " + describe(_tag) + ": waited on twice");
      const auto start = std::chrono::steady_clock::now();
      const auto deadline = deadline_after(timeout);
      for (;;) {
        int done = 0;
        detail::mpi_check(MPI_Test(&_state->request, &done, MPI_STATUS_IGNORE), "MPI_Test");
        if (done) break;
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline)
          throw TimeoutError("expert all-to-all " + describe(_tag) + ": rank " + std::to_string(_state->rank) +
                             " of the expert group timed out after " + std::to_string(timeout.count()) +
                             " ms (a rank of the group never started it)");
        if (now - start < _state->spin) std::this_thread::yield();
        else std::this_thread::sleep_for(_state->sleep);
      }
      _state.reset();
    }

  private:
    friend class MpiExpertComm;
    struct State {
      MPI_Request request = MPI_REQUEST_NULL;
      std::vector<int> counts;  // send counts, send displacements, recv counts, recv displacements
      int rank = 0;
      std::chrono::microseconds spin{}, sleep{};
    };
    Handle(std::unique_ptr<State> state, ExpertTag tag) : _state(std::move(state)), _tag(tag) {}
    std::unique_ptr<State> _state;  // on the heap: MPI holds the count arrays' addresses until done
    ExpertTag _tag;
  };

  /// Duplicates `group` (collective over it). Throws ConfigError when MPI is not initialized.
  explicit MpiExpertComm(MPI_Comm group, MpiOptions options = {}) : _options(options) {
    int initialized = 0;
    detail::mpi_check(MPI_Initialized(&initialized), "MPI_Initialized");
    if (!initialized) throw ConfigError("MpiExpertComm needs MPI to be initialized: create an MpiSession first");
    detail::mpi_check(MPI_Comm_dup(group, &_comm), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(_comm, MPI_ERRORS_RETURN);
    detail::mpi_check(MPI_Comm_rank(_comm, &_rank), "MPI_Comm_rank");
    detail::mpi_check(MPI_Comm_size(_comm, &_size), "MPI_Comm_size");
  }
  ~MpiExpertComm() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && _comm != MPI_COMM_NULL) MPI_Comm_free(&_comm);
  }
  MpiExpertComm(const MpiExpertComm&) = delete;
  MpiExpertComm& operator=(const MpiExpertComm&) = delete;

  [[nodiscard]] int rank() const noexcept { return _rank; }
  [[nodiscard]] int size() const noexcept { return _size; }
  [[nodiscard]] MPI_Comm native() const noexcept { return _comm; }

  /// Starts MPI_Ialltoallv. Throws Error when the counts do not fit the buffers or an int, or MPI fails.
  [[nodiscard]] Handle start_all_to_all(const ExpertTag& tag, const AllToAllBuffers& b) {
    const auto n = static_cast<std::size_t>(_size);
    if (b.send_counts.size() != n || b.recv_counts.size() != n)
      throw Error("expert all-to-all " + describe(tag) + ": the counts need " + std::to_string(n) + " entries");
    auto state = std::make_unique<Handle::State>();
    state->rank = _rank;
    state->spin = _options.spin;
    state->sleep = _options.sleep;
    state->counts.resize(4 * n);
    int* sc = state->counts.data();
    int* sd = sc + n;
    int* rc = sd + n;
    int* rd = rc + n;
    std::size_t so = 0, ro = 0;
    for (std::size_t p = 0; p < n; ++p) {
      if (b.send_counts[p] > INT_MAX || b.recv_counts[p] > INT_MAX || so > INT_MAX || ro > INT_MAX)
        throw Error("expert all-to-all " + describe(tag) + ": a count or displacement does not fit an int (2 GiB)");
      sc[p] = static_cast<int>(b.send_counts[p]);
      sd[p] = static_cast<int>(so);
      rc[p] = static_cast<int>(b.recv_counts[p]);
      rd[p] = static_cast<int>(ro);
      so += b.send_counts[p];
      ro += b.recv_counts[p];
    }
    if (so != b.send.size() || ro != b.recv.size())
      throw Error("expert all-to-all " + describe(tag) + ": the counts add up to " + std::to_string(so) + " send and " +
                  std::to_string(ro) + " recv bytes but the buffers hold " + std::to_string(b.send.size()) + " and " +
                  std::to_string(b.recv.size()));
    // MPI wants non-const pointers (MPI-2 signatures); it only reads the send buffer.
    void* send = const_cast<std::byte*>(b.send.data());
    detail::mpi_check(MPI_Ialltoallv(send, sc, sd, MPI_BYTE, b.recv.data(), rc, rd, MPI_BYTE, _comm, &state->request),
                      "MPI_Ialltoallv");
    return Handle(std::move(state), tag);
  }

  /// Prints where the failure started and ends the whole MPI job (MPI_Abort). Does not return.
  [[noreturn]] void abort(const FailureOrigin& origin) {
    int world = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world);
    std::fprintf(stderr, "dualpipe: expert rank %d (world rank %d) aborts the MPI job: failure on %s\n", _rank, world,
                 origin.describe().c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::abort();
  }

private:
  MPI_Comm _comm = MPI_COMM_NULL;
  int _rank = 0, _size = 1;
  MpiOptions _options;
};

static_assert(check_expert_comm<MpiExpertComm>());

}  // namespace dualpipe
