// dualpipe/mpi/session.hpp: RAII over MPI_Init_thread / MPI_Finalize, and the MPI error check.
//
// One MpiSession lives in main() for the whole program; communicators are made and destroyed inside it.
// A session that is left by an exception aborts the whole job (MPI_Abort) instead of finalizing: the
// other ranks would otherwise wait for a rank that is gone, and MPI_Finalize itself may wait for them.
// Opt-in: include dualpipe/mpi.hpp and link dualpipe::mpi. The umbrella dualpipe/dualpipe.hpp never
// includes this header.
#pragma once

#include <mpi.h>

#include <cstdio>
#include <exception>
#include <string>

#include "dualpipe/core/error.hpp"

namespace dualpipe {

namespace detail {

/// The MPI library's own text for an error code.
[[nodiscard]] inline std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(length));
}

/// Throws Error naming the MPI call and the library's error text when `code` is not MPI_SUCCESS.
inline void mpi_check(int code, const char* call) {
  if (code != MPI_SUCCESS) throw Error(std::string("MPI call ") + call + " failed: " + mpi_error_text(code));
}

}  // namespace detail

/// Initializes MPI for the lifetime of the object, and finalizes it (or aborts the job) at the end.
/// When MPI was already initialized by someone else, the session neither initializes nor finalizes it.
class MpiSession {
public:
  /// Initializes MPI with the command line (MPI may remove its own arguments from argc/argv). It asks for
  /// MPI_THREAD_MULTIPLE, which lets an MpiCommunicator run a progress thread (mpi/progress.hpp), and accepts
  /// any level from `required` up (MPI_THREAD_SERIALIZED by default: any one thread at a time may call MPI).
  /// Throws ConfigError when the library offers less than `required`.
  MpiSession(int& argc, char**& argv, int required = MPI_THREAD_SERIALIZED) { init(&argc, &argv, required); }
  /// Initializes MPI without a command line.
  explicit MpiSession(int required = MPI_THREAD_SERIALIZED) { init(nullptr, nullptr, required); }

  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  /// Finalizes MPI (when this session initialized it); left through an exception, aborts the job instead.
  ~MpiSession() {
    if (!_owns) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (std::uncaught_exceptions() > _uncaught_at_start) {
      int rank = -1;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      std::fprintf(stderr, "dualpipe: rank %d is leaving its MPI session with an exception: aborting the job\n", rank);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Finalize();
  }

  /// The thread level MPI provides (MPI_THREAD_SINGLE ... MPI_THREAD_MULTIPLE).
  [[nodiscard]] int thread_level() const noexcept { return _thread_level; }
  /// Whether this session initialized MPI (and so finalizes it).
  [[nodiscard]] bool owns() const noexcept { return _owns; }
  /// This process's rank in MPI_COMM_WORLD.
  [[nodiscard]] int world_rank() const {
    int rank = 0;
    detail::mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
    return rank;
  }
  /// The number of processes in MPI_COMM_WORLD.
  [[nodiscard]] int world_size() const {
    int size = 0;
    detail::mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
    return size;
  }

private:
  void init(int* argc, char*** argv, int required) {
    int initialized = 0;
    detail::mpi_check(MPI_Initialized(&initialized), "MPI_Initialized");
    if (initialized) {
      detail::mpi_check(MPI_Query_thread(&_thread_level), "MPI_Query_thread");
    } else {
      const int wanted = required > MPI_THREAD_MULTIPLE ? required : MPI_THREAD_MULTIPLE;
      detail::mpi_check(MPI_Init_thread(argc, argv, wanted, &_thread_level), "MPI_Init_thread");
      _owns = true;
    }
    if (_thread_level < required) {
      const int provided = _thread_level;
      if (_owns) MPI_Finalize();
      _owns = false;
      throw ConfigError("MPI provides thread level " + std::to_string(provided) + " but the session needs " +
                        std::to_string(required) + " (MPI_THREAD_SINGLE=0 < FUNNELED < SERIALIZED < MULTIPLE)");
    }
  }

  int _thread_level = MPI_THREAD_SINGLE;
  bool _owns = false;
  int _uncaught_at_start = std::uncaught_exceptions();
};

}  // namespace dualpipe
