// dualpipe/mpi/progress.hpp: a thread that lets MPI move a rank's sends while the rank computes.
//
// Over shared memory without single-copy support, and over TCP, an MPI library moves a large message only
// inside MPI calls of both processes: the sender's MPI_Isend sends a header, the receiver answers when it
// matches the message, and the payload follows the next time the *sender* calls MPI. A rank that computes
// for milliseconds right after posting its send keeps its neighbour waiting that long (the 4% that the
// peer benchmark's MPI rows lost to threads, issue 15). The receiving side is the same: a message is matched
// to its receive buffer only when the receiver asks. MpiProgressThread takes the commit groups that have
// messages in flight and, every `interval`, does for them what their wait would do (match arrived messages
// to their buffers, test the requests), under one lock with the rank's own calls; a group it finishes is
// dropped, and with no group in flight the thread sleeps on a condition variable, so a rank with nothing in
// flight pays nothing. It needs MPI_THREAD_MULTIPLE.
#pragma once

#include <mpi.h>
#include <pthread.h>
#include <time.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "dualpipe/mpi/detail/group_state.hpp"
#include "dualpipe/mpi/session.hpp"

namespace dualpipe {

/// How an MpiCommunicator's messages make progress between the rank's own MPI calls.
enum class MpiProgress {
  /// A progress thread when MPI provides MPI_THREAD_MULTIPLE (MpiSession asks for it), otherwise on_wait.
  automatic,
  /// Only inside the communicator's calls (posts and waits): no extra thread; a send whose receiver answers
  /// while this rank computes waits for this rank's next wait.
  on_wait,
  /// A progress thread (MpiProgressThread); ConfigError when MPI does not provide MPI_THREAD_MULTIPLE.
  thread,
};

namespace detail {

/// The background thread of MpiProgress::thread, shared by an MpiCommunicator and its commit groups.
class MpiProgressThread {
public:
  /// Starts the thread, asleep until a group is watched.
  explicit MpiProgressThread(std::chrono::microseconds interval) : _interval(interval) {
    _thread = std::thread([this] { run(); });
  }
  /// Stops and joins the thread.
  ~MpiProgressThread() {
    {
      std::lock_guard lock(_mutex);
      _stop = true;
    }
    _wake.notify_one();
    _thread.join();
  }
  MpiProgressThread(const MpiProgressThread&) = delete;
  MpiProgressThread& operator=(const MpiProgressThread&) = delete;

  /// The lock under which groups touch their state (the thread holds it while it works on them).
  [[nodiscard]] std::mutex& mutex() noexcept { return _mutex; }
  /// Keeps `group` moving until it is done or forgotten. Call with mutex() held.
  void watch(MpiGroupState* group) {
    if (group->registered) return;
    _groups.push_back(group);
    group->registered = true;
    _wake.notify_one();
  }
  /// Stops watching `group` (before it is released or freed). Call with mutex() held.
  void forget(MpiGroupState* group) noexcept {
    if (!group->registered) return;
    _groups.erase(std::find(_groups.begin(), _groups.end(), group));
    group->registered = false;
  }

  /// Rounds of work the thread has done so far.
  [[nodiscard]] std::uint64_t polls() const noexcept { return _polls.load(std::memory_order_relaxed); }
  /// CPU time the thread used so far, in seconds (its own clock: what it took from the rank's cores).
  [[nodiscard]] double cpu_seconds() const noexcept {
    clockid_t clock{};
    timespec t{};
    if (pthread_getcpuclockid(const_cast<std::thread&>(_thread).native_handle(), &clock) != 0) return 0;
    if (clock_gettime(clock, &t) != 0) return 0;
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
  }

private:
  void run() {
#if defined(__linux__)
    // The thread sleeps `interval` between rounds; Linux's default timer slack (50 us) would add half as much
    // again to a 100 us sleep. This thread's slack only: the rank's own threads keep theirs.
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
    std::unique_lock lock(_mutex);
    while (!_stop) {
      if (_groups.empty()) {
        _wake.wait(lock, [this] { return _stop || !_groups.empty(); });
        continue;
      }
      for (std::size_t i = 0; i < _groups.size();) {
        MpiGroupState* group = _groups[i];
        bool finished = true;
        try {
          finished = group->progress();
        } catch (...) {
          group->failure = std::current_exception();  // the group's wait throws it, on the rank's thread
        }
        if (finished) {
          group->registered = false;
          _groups.erase(_groups.begin() + static_cast<std::ptrdiff_t>(i));
        } else {
          ++i;
        }
      }
      _polls.fetch_add(1, std::memory_order_relaxed);
      lock.unlock();
      std::this_thread::sleep_for(_interval);
      lock.lock();
    }
  }

  std::chrono::microseconds _interval;
  std::mutex _mutex;
  std::condition_variable _wake;
  std::vector<MpiGroupState*> _groups;  // groups with messages in flight, in commit order
  bool _stop = false;
  std::atomic<std::uint64_t> _polls{0};
  std::thread _thread;  // last: starts after every member above exists
};

}  // namespace detail
}  // namespace dualpipe
