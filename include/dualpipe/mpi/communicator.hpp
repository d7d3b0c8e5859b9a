// dualpipe/mpi/communicator.hpp: the Communicator model for one pipeline rank per MPI process.
//
// Buffers are host memory. A send starts (MPI_Isend) when it is posted; a receive is matched when its group
// is waited on: the wait probes for the message (MPI_Improbe), compares its size with the buffer's, and only
// then receives it in place (MPI_Imrecv). Probing first is what makes a size mismatch a clean Error naming
// both sizes: receiving a larger message straight into the buffer relies on MPI_ERR_TRUNCATE, and Open MPI
// 4.1 writes past the end of the buffer before it reports that. The wait polls (MPI_Testall, yield, short
// sleeps) instead of blocking in MPI_Waitall, so that it can give up with a TimeoutError naming the
// messages still pending. Between the rank's own calls, a progress thread (mpi/progress.hpp; on by default
// where MPI provides MPI_THREAD_MULTIPLE) keeps the rank's sends moving while it computes.
//
// abort(origin) prints where the failure started on stderr and ends the whole job (MPI_Abort): every
// process exits non-zero. Tags keep messages of different modules, chunks and payloads apart:
//   tag = (chunk * max_modules + module) * 2 + payload     (payload: 0 activation, 1 gradient)
// which must stay within the library's MPI_TAG_UB (at least 32767; 2^31-1 with Open MPI); a chunk or
// module beyond the bound is a ConfigError.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/comm/communicator.hpp"
#include "dualpipe/mpi/detail/group_state.hpp"
#include "dualpipe/mpi/progress.hpp"
#include "dualpipe/mpi/session.hpp"

namespace dualpipe {

/// Knobs of an MpiCommunicator.
struct MpiOptions {
  int max_modules = 4;  ///< Modules per rank the tags tell apart (DualPipe uses 2).
  /// A wait polls and yields this long before it starts to sleep. Long enough to catch a neighbour that
  /// finishes its op within a millisecond (a sleep costs a wake-up of 50 to 100 us); a rank spins only
  /// while it has nothing to do but wait.
  std::chrono::microseconds spin{1000};
  std::chrono::microseconds sleep{50};  ///< Sleep between polls after the spin (keeps idle ranks off the CPU).
  MpiProgress progress = MpiProgress::automatic;     ///< Who moves sends between the rank's own MPI calls.
  std::chrono::microseconds progress_interval{100};  ///< The progress thread's poll period while sends are in flight.
};

/// What a commit of an MpiCommunicator returns: the messages posted since the previous commit.
class MpiCommitGroup {
public:
  /// An empty group (nothing to wait for).
  MpiCommitGroup() = default;
  MpiCommitGroup(MpiCommitGroup&& other) noexcept { *this = std::move(other); }
  MpiCommitGroup& operator=(MpiCommitGroup&& other) noexcept;
  MpiCommitGroup(const MpiCommitGroup&) = delete;
  MpiCommitGroup& operator=(const MpiCommitGroup&) = delete;
  /// Leaves what is still in flight to MPI (requests freed) when the group was not waited to the end.
  ~MpiCommitGroup() { release(); }

  /// Blocks until every message of the group is done. Throws TimeoutError after `timeout` naming the peers
  /// and tags still pending; Error when a message's size differs from its receive buffer's (both named) or
  /// an MPI call fails (also when the progress thread found it).
  void wait(std::chrono::milliseconds timeout);

  /// Messages in the group.
  [[nodiscard]] std::size_t size() const;
  /// Blocks until the group's receive of `tag` is done (the other messages may still be in flight; wait()
  /// ends the group). Throws as wait() does (the TimeoutError names that receive), and Error for a tag the
  /// group does not receive.
  void wait_receive(MessageTag tag, std::chrono::milliseconds timeout);

  /// Whether every message of the group is known to be done (by a wait, or by the progress thread).
  [[nodiscard]] bool done() const;
  /// Whether wait() would return (or throw) at once: tests the group's requests once (MPI progress) without
  /// blocking; true when a message failed too.
  [[nodiscard]] bool ready() const;

private:
  friend class MpiCommunicator;

  // The progress thread's lock when there is one (nothing to lock otherwise).
  [[nodiscard]] std::unique_lock<std::mutex> lock() const {
    return _progress ? std::unique_lock<std::mutex>(_progress->mutex()) : std::unique_lock<std::mutex>();
  }
  // The state, made at the first post: `comm` and `rank` are the communicator's.
  detail::MpiGroupState& state(MPI_Comm comm, int rank);
  void release() noexcept;
  // Polls (progress under the lock, yield while within the spin, then short sleeps) until `done()` says so
  // under the lock; throws the group's failure, or TimeoutError naming message `*awaited` (else the first
  // pending receive) after `timeout`, the group released.
  template <class Done>
  void poll_until(std::chrono::milliseconds timeout, const std::size_t* awaited, Done&& done);

  MpiOptions _options;
  std::shared_ptr<detail::MpiProgressThread> _progress;  // null: MpiProgress::on_wait
  std::unique_ptr<detail::MpiGroupState> _state;         // null until something is posted
};

/// A Communicator over MPI: pipeline ranks are the ranks of a duplicate of MPI_COMM_WORLD (or of the
/// communicator given), one per process. Create it inside an MpiSession; creation is collective.
class MpiCommunicator {
public:
  /// Duplicates `parent` (collective over it); its errors are returned to the library, which throws them.
  /// Starts the progress thread that `options.progress` asks for. Throws ConfigError when MPI is not
  /// initialized, the options are out of range, or MpiProgress::thread is asked for and MPI does not provide
  /// MPI_THREAD_MULTIPLE.
  explicit MpiCommunicator(MPI_Comm parent = MPI_COMM_WORLD, MpiOptions options = {});
  /// Frees the duplicate.
  ~MpiCommunicator();
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  /// This process's rank in the communicator.
  [[nodiscard]] int rank() const noexcept { return _rank; }
  /// The number of ranks (processes).
  [[nodiscard]] int size() const noexcept { return _size; }
  /// The underlying MPI communicator (the duplicate), for collectives of the program's own.
  [[nodiscard]] MPI_Comm native() const noexcept { return _comm; }
  /// The knobs it was made with.
  [[nodiscard]] const MpiOptions& options() const noexcept { return _options; }
  /// Whether a progress thread moves this rank's sends between its own MPI calls (MpiOptions::progress).
  [[nodiscard]] bool has_progress_thread() const noexcept { return _progress != nullptr; }
  /// CPU seconds the progress thread has used so far (0 without one): what it took from the rank's cores.
  [[nodiscard]] double progress_cpu_seconds() const noexcept { return _progress ? _progress->cpu_seconds() : 0.0; }
  /// Times the progress thread has called MPI so far (0 without one).
  [[nodiscard]] std::uint64_t progress_polls() const noexcept { return _progress ? _progress->polls() : 0; }

  /// The MPI tag of a message tag. Throws ConfigError when the module or chunk does not fit the tag bound.
  [[nodiscard]] int mpi_tag(MessageTag tag) const;
  /// Chunks per module the tags can tell apart: a chunk index must stay below this.
  [[nodiscard]] std::int64_t max_chunks() const noexcept;
  /// Throws ConfigError when a step of `chunks` chunks could produce a tag beyond MPI_TAG_UB. Programs call
  /// it before a step, so that every rank refuses the configuration before any message is sent.
  void check_chunks(std::int64_t chunks) const;

  /// Starts sending `bytes` to `peer` (MPI_Isend); the bytes stay valid and unchanged until the group is done.
  /// Throws ConfigError for a peer out of range, a tag beyond the bound, or a message of 2 GiB or more.
  void post_send(int peer, MessageTag tag, ConstBytes bytes);
  /// Queues a receive of exactly `bytes.size()` bytes from `peer` into `bytes`. Same errors as post_send.
  void post_recv(int peer, MessageTag tag, MutableBytes bytes);
  /// Everything posted since the previous commit, as one group to wait on.
  [[nodiscard]] MpiCommitGroup commit();
  /// Nothing to do: a send starts when it is posted, and a receive is matched by the progress thread or the
  /// group's wait (CommunicatorWithEagerLaunch).
  void launch() noexcept {}
  /// Prints where the failure started (rank, module, chunk, op, what; and the world rank when the
  /// communicator is not the whole world, e.g. a pipeline group of a grid) on stderr and ends the whole MPI
  /// job (MPI_Abort of MPI_COMM_WORLD): every process, of every group, exits non-zero. Does not return.
  [[noreturn]] void abort(const FailureOrigin& origin);
  /// Drops the messages posted and not committed (after a failed step; their requests are freed).
  void reset() noexcept { release_posted(); }

  /// Rank `root` gets every rank's bytes, in rank order (collective; other ranks get an empty vector).
  [[nodiscard]] std::vector<std::vector<std::byte>> gather(ConstBytes local, int root = 0) const;
  /// Waits until every rank has arrived (collective).
  void barrier() const;

private:
  void check_post(int peer, std::size_t bytes, const char* what) const;
  void add_posted(const detail::MpiGroupState::Message& m, MPI_Request request);
  void release_posted() noexcept;

  MPI_Comm _comm = MPI_COMM_NULL;
  int _rank = 0;
  int _size = 1;
  std::int64_t _tag_ub = 32767;
  MpiOptions _options;
  std::shared_ptr<detail::MpiProgressThread> _progress;  // shared with the commit groups that count on it
  MpiCommitGroup _posted;                                // messages posted since the previous commit
};

static_assert(check_communicator<MpiCommunicator>());

// ---- Definitions --------------------------------------------------------------------------------------

inline MpiCommitGroup& MpiCommitGroup::operator=(MpiCommitGroup&& other) noexcept {
  if (this != &other) {
    release();
    _options = other._options;
    _progress = other._progress;
    _state = std::move(other._state);  // the state keeps its address: the progress thread may hold it
  }
  return *this;
}

inline detail::MpiGroupState& MpiCommitGroup::state(MPI_Comm comm, int rank) {
  if (!_state) {
    _state = std::make_unique<detail::MpiGroupState>();
    _state->comm = comm;
    _state->rank = rank;
  }
  return *_state;
}

inline std::size_t MpiCommitGroup::size() const {
  const auto guard = lock();
  return _state ? _state->messages.size() : 0;
}

inline bool MpiCommitGroup::done() const {
  const auto guard = lock();
  return !_state || _state->pending == 0;
}

inline bool MpiCommitGroup::ready() const {
  if (!_state) return true;
  const auto guard = lock();
  if (_state->failure || _state->pending == 0) return true;
  try {
    return _state->progress();
  } catch (...) {
    _state->failure = std::current_exception();  // wait() throws it
    return true;
  }
}

inline void MpiCommitGroup::wait(std::chrono::milliseconds timeout) {
  if (!_state) return;
  poll_until(timeout, nullptr, [this] {
    if (_state->pending != 0 && !_state->progress()) return false;
    if (_progress) _progress->forget(_state.get());
    return true;
  });
}

inline void MpiCommitGroup::wait_receive(MessageTag tag, std::chrono::milliseconds timeout) {
  if (!_state) return;
  std::size_t index = 0;
  {
    const auto guard = lock();
    const auto& messages = _state->messages;
    while (index < messages.size() && (messages[index].send || !(messages[index].tag == tag))) ++index;
    if (index == messages.size())
      throw Error("MPI: rank " + std::to_string(_state->rank) + " waits for a receive of " + detail::describe_tag(tag) +
                  " that its group does not have");
  }
  poll_until(timeout, &index,
             [this, index] { return _state->pending == 0 || _state->progress() || _state->receive_done(index); });
}

template <class Done>
void MpiCommitGroup::poll_until(std::chrono::milliseconds timeout, const std::size_t* awaited, Done&& done) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto deadline = deadline_after(timeout);
  for (;;) {
    {
      const auto guard = lock();
      if (_state->failure) std::rethrow_exception(_state->failure);
      if (done()) return;
    }
    const auto now = clock::now();
    if (now >= deadline) {
      MessageTag missing{-1, -1, Payload::activation};
      int peer = -1;
      std::string message;
      {
        const auto guard = lock();
        message = _state->describe_pending(timeout, missing, peer);
        if (awaited) {  // the receive this wait was for
          missing = _state->messages[*awaited].tag;
          peer = _state->messages[*awaited].peer;
        }
      }
      release();
      throw TimeoutError(message, missing, peer);
    }
    if (now - start < _options.spin) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(_options.sleep);
    }
  }
}

inline void MpiCommitGroup::release() noexcept {
  if (!_state) return;
  {
    const auto guard = lock();
    if (_progress) _progress->forget(_state.get());
    _state->release();
  }
  _state.reset();
}

inline MpiCommunicator::MpiCommunicator(MPI_Comm parent, MpiOptions options) : _options(options) {
  int initialized = 0;
  detail::mpi_check(MPI_Initialized(&initialized), "MPI_Initialized");
  if (!initialized) throw ConfigError("MpiCommunicator needs MPI to be initialized: create an MpiSession first");
  if (options.max_modules < 1)
    throw ConfigError("MpiOptions::max_modules must be at least 1, got " + std::to_string(options.max_modules));
  if (options.progress_interval.count() < 1)
    throw ConfigError("MpiOptions::progress_interval must be at least 1 us, got " +
                      std::to_string(options.progress_interval.count()) + " us");
  int thread_level = MPI_THREAD_SINGLE;
  detail::mpi_check(MPI_Query_thread(&thread_level), "MPI_Query_thread");
  if (options.progress == MpiProgress::thread && thread_level < MPI_THREAD_MULTIPLE)
    throw ConfigError("MpiOptions::progress = thread needs MPI_THREAD_MULTIPLE (3), but MPI provides thread level " +
                      std::to_string(thread_level) +
                      ": initialize MPI with MPI_Init_thread(MPI_THREAD_MULTIPLE), or use MpiProgress::on_wait");
  if (options.progress == MpiProgress::thread ||
      (options.progress == MpiProgress::automatic && thread_level >= MPI_THREAD_MULTIPLE))
    _progress = std::make_shared<detail::MpiProgressThread>(options.progress_interval);
  detail::mpi_check(MPI_Comm_dup(parent, &_comm), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(_comm, MPI_ERRORS_RETURN);
  detail::mpi_check(MPI_Comm_rank(_comm, &_rank), "MPI_Comm_rank");
  detail::mpi_check(MPI_Comm_size(_comm, &_size), "MPI_Comm_size");
  void* value = nullptr;
  int flag = 0;
  detail::mpi_check(MPI_Comm_get_attr(_comm, MPI_TAG_UB, &value, &flag), "MPI_Comm_get_attr(MPI_TAG_UB)");
  if (flag && value) _tag_ub = *static_cast<int*>(value);
  _posted._options = _options;
  _posted._progress = _progress;
}

inline MpiCommunicator::~MpiCommunicator() {
  release_posted();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && _comm != MPI_COMM_NULL) MPI_Comm_free(&_comm);
}

inline std::int64_t MpiCommunicator::max_chunks() const noexcept {
  return (_tag_ub + 1) / (2 * static_cast<std::int64_t>(_options.max_modules));
}

inline void MpiCommunicator::check_chunks(std::int64_t chunks) const {
  if (chunks > max_chunks())
    throw ConfigError("MPI tags hold at most " + std::to_string(max_chunks()) + " chunks per module (MPI_TAG_UB " +
                      std::to_string(_tag_ub) + ", " + std::to_string(_options.max_modules) +
                      " modules, 2 payloads), got " + std::to_string(chunks) + " chunks");
}

inline int MpiCommunicator::mpi_tag(MessageTag tag) const {
  if (tag.module < 0 || tag.module >= _options.max_modules)
    throw ConfigError("MPI message tag: module must be in [0, " + std::to_string(_options.max_modules) +
                      ") (MpiOptions::max_modules), got " + std::to_string(tag.module));
  if (tag.chunk < 0 || tag.chunk >= max_chunks())
    throw ConfigError("MPI message tag: chunk must be in [0, " + std::to_string(max_chunks()) + ") to fit MPI_TAG_UB " +
                      std::to_string(_tag_ub) + ", got " + std::to_string(tag.chunk));
  const std::int64_t value = (static_cast<std::int64_t>(tag.chunk) * _options.max_modules + tag.module) * 2 +
                             (tag.payload == Payload::gradient ? 1 : 0);
  return static_cast<int>(value);
}

inline void MpiCommunicator::check_post(int peer, std::size_t bytes, const char* what) const {
  if (peer < 0 || peer >= _size)
    throw ConfigError(std::string("MPI ") + what + ": peer must be in [0, " + std::to_string(_size) + "), got " +
                      std::to_string(peer));
  if (bytes > static_cast<std::size_t>(INT_MAX))
    throw ConfigError(std::string("MPI ") + what + ": a message must be under 2 GiB (" + std::to_string(INT_MAX) +
                      " bytes), got " + std::to_string(bytes));
}

inline void MpiCommunicator::post_send(int peer, MessageTag tag, ConstBytes bytes) {
  check_post(peer, bytes.size(), "post_send");
  detail::MpiGroupState::Message m;
  m.send = true;
  m.peer = peer;
  m.tag = tag;
  m.mpi_tag = mpi_tag(tag);
  m.bytes = bytes.size();
  m.matched = true;
  MPI_Request request = MPI_REQUEST_NULL;
  detail::mpi_check(MPI_Isend(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, peer, m.mpi_tag, _comm, &request),
                    "MPI_Isend");
  add_posted(m, request);
}

inline void MpiCommunicator::post_recv(int peer, MessageTag tag, MutableBytes bytes) {
  check_post(peer, bytes.size(), "post_recv");
  detail::MpiGroupState::Message m;
  m.peer = peer;
  m.tag = tag;
  m.mpi_tag = mpi_tag(tag);
  m.data = bytes.data();
  m.bytes = bytes.size();
  add_posted(m, MPI_REQUEST_NULL);
}

inline void MpiCommunicator::add_posted(const detail::MpiGroupState::Message& m, MPI_Request request) {
  const auto guard = _posted.lock();
  detail::MpiGroupState& state = _posted.state(_comm, _rank);
  state.messages.push_back(m);
  state.requests.push_back(request);
  ++state.pending;
  if (!m.send) ++state.unmatched;
  if (_progress) _progress->watch(&state);  // from now on the thread moves it, committed or not
}

inline MpiCommitGroup MpiCommunicator::commit() {
  MpiCommitGroup group = std::move(_posted);
  _posted._options = _options;
  _posted._progress = _progress;
  return group;
}

inline void MpiCommunicator::abort(const FailureOrigin& origin) {
  // In a grid (a sub-communicator) the rank alone is ambiguous: the world rank says which process it is.
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  const std::string where =
      world_size != _size ? " (world rank " + std::to_string(world_rank) + " of " + std::to_string(world_size) + ")"
                          : std::string();
  std::fprintf(stderr, "dualpipe: rank %d aborts the MPI job: failure on %s%s\n", _rank, origin.describe().c_str(),
               where.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();  // MPI_Abort does not return; should it, the process must still end
}

inline std::vector<std::vector<std::byte>> MpiCommunicator::gather(ConstBytes local, int root) const {
  if (root < 0 || root >= _size)
    throw ConfigError("MPI gather: root must be in [0, " + std::to_string(_size) + "), got " + std::to_string(root));
  if (local.size() > static_cast<std::size_t>(INT_MAX))
    throw ConfigError("MPI gather: at most " + std::to_string(INT_MAX) + " bytes per rank, got " +
                      std::to_string(local.size()));
  const int count = static_cast<int>(local.size());
  std::vector<int> counts(root == _rank ? static_cast<std::size_t>(_size) : 0);
  detail::mpi_check(MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, root, _comm), "MPI_Gather");
  std::vector<int> offsets(counts.size());
  std::int64_t total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    offsets[r] = static_cast<int>(total);
    total += counts[r];
  }
  if (total > INT_MAX)
    throw Error("MPI gather: " + std::to_string(total) + " bytes in all is more than one gather can carry");
  std::vector<std::byte> all(static_cast<std::size_t>(total));
  detail::mpi_check(
      MPI_Gatherv(local.data(), count, MPI_BYTE, all.data(), counts.data(), offsets.data(), MPI_BYTE, root, _comm),
      "MPI_Gatherv");
  std::vector<std::vector<std::byte>> per_rank(counts.size());
  for (std::size_t r = 0; r < counts.size(); ++r)
    per_rank[r].assign(all.begin() + offsets[r], all.begin() + offsets[r] + counts[r]);
  return per_rank;
}

inline void MpiCommunicator::barrier() const { detail::mpi_check(MPI_Barrier(_comm), "MPI_Barrier"); }

inline void MpiCommunicator::release_posted() noexcept { _posted.release(); }

}  // namespace dualpipe
