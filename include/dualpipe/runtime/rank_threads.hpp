// dualpipe/runtime/rank_threads.hpp: the in-process world's rank threads, started once and kept for every
// step, as a training loop keeps its ranks.
//
// run_ranks (run_ranks.hpp) starts a thread per rank and joins them: right for one call, but a loop that calls
// it every step pays a thread start per rank and step, and more: on the peer benchmark's DualPipe row
// (bench/peers, two libtorch ranks) a step on threads started for it took 3% longer than the same step on
// threads kept from the step before (efficiency 0.93 against 0.96, measured in turns). RankThreads keeps
// them: run(fn) hands each rank thread fn and returns once all have finished, with the same error rule as
// run_ranks (every rank finishes, then the lowest rank's exception is rethrown).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/core/error.hpp"

namespace dualpipe {

/// One thread per rank, alive from construction to destruction; run() executes one function on all of them.
/// run() is called from one thread at a time, never from a rank thread itself.
class RankThreads {
public:
  /// Starts `ranks` threads, which wait for work. Throws ConfigError for ranks < 1 (no thread is started).
  explicit RankThreads(int ranks) : _errors(checked(ranks)) {
    _threads.reserve(_errors.size());
    try {
      for (int r = 0; r < ranks; ++r) _threads.emplace_back([this, r] { serve(r); });
    } catch (...) {
      stop();  // a thread could not be started: the ones that did end before the error leaves
      throw;
    }
  }
  /// Stops and joins the threads.
  ~RankThreads() { stop(); }
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  /// Runs fn(rank) on every rank's thread, waits for all, then rethrows the lowest rank's exception, if any.
  /// The same threads serve every call (a rank's thread-local state lives from one step to the next).
  void run(const std::function<void(int)>& fn) {
    {
      std::lock_guard lock(_mutex);
      _job = &fn;
      _busy = static_cast<int>(_threads.size());
      ++_generation;
    }
    _wake.notify_all();
    std::unique_lock lock(_mutex);
    _finished.wait(lock, [this] { return _busy == 0; });
    _job = nullptr;
    std::exception_ptr first;
    for (std::exception_ptr& e : _errors)
      if (e && !first) first = std::exchange(e, nullptr);
      else e = nullptr;
    lock.unlock();
    if (first) std::rethrow_exception(first);
  }

  /// Number of rank threads.
  [[nodiscard]] int ranks() const noexcept { return static_cast<int>(_errors.size()); }

private:
  static std::size_t checked(int ranks) {
    if (ranks < 1) throw ConfigError("RankThreads: ranks must be at least 1 (got ranks=" + std::to_string(ranks) + ")");
    return static_cast<std::size_t>(ranks);
  }

  void serve(int rank) {
    std::uint64_t done = 0;  // the last generation this thread ran
    for (;;) {
      const std::function<void(int)>* job = nullptr;
      {
        std::unique_lock lock(_mutex);
        _wake.wait(lock, [&] { return _stopping || _generation != done; });
        if (_stopping) return;
        done = _generation;
        job = _job;
      }
      std::exception_ptr error;
      try {
        (*job)(rank);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard lock(_mutex);
      _errors[static_cast<std::size_t>(rank)] = std::move(error);
      if (--_busy == 0) _finished.notify_one();
    }
  }

  void stop() noexcept {
    {
      std::lock_guard lock(_mutex);
      _stopping = true;
    }
    _wake.notify_all();
    for (std::thread& t : _threads)
      if (t.joinable()) t.join();
  }

  std::mutex _mutex;
  std::condition_variable _wake;      // rank threads: a new generation, or stop
  std::condition_variable _finished;  // run(): the last rank thread is done
  const std::function<void(int)>* _job = nullptr;
  std::uint64_t _generation = 0;
  int _busy = 0;
  bool _stopping = false;
  std::vector<std::exception_ptr> _errors;  // per rank, for the run in progress
  std::vector<std::thread> _threads;
};

}  // namespace dualpipe
